"""Regenerate the committed Python stubs from the .proto files (`make proto`).

`python proto/generate.py [OUT_DIR]` writes `gridlab/v1/*_pb2.py`, `*_pb2_grpc.py`,
`*.pyi` and mypy-protobuf's `*_pb2_grpc.pyi` under OUT_DIR (default: this folder). The
drift test calls it with a temporary OUT_DIR and compares the results byte for byte.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every .proto under gridlab/v1 and return the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "gridlab" / "v1").glob("*.proto"))
    plugin = shutil.which("protoc-gen-mypy_grpc", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise SystemExit("protoc-gen-mypy_grpc not found: install the dev extras (make proto)")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    import os

    cwd = os.getcwd()
    os.chdir(HERE)
    try:
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
    finally:
        os.chdir(cwd)
    return sorted((out_dir / "gridlab" / "v1").glob("*_pb2*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(target):
        print(path)
