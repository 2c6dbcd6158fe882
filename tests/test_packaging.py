"""The wheel holds every module under the gridlab namespace and imports from a clean venv;
the committed gRPC stubs are exactly what the .proto files generate."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "gridlab": ROOT / "proto" / "gridlab",
    "gridlab.common": ROOT / "common",
    "gridlab.scheduler": ROOT / "scheduler",
    "gridlab.agent": ROOT / "agent",
    "gridlab.client": ROOT / "client",
    "gridlab.trainer": ROOT / "trainer",
}


def expected_modules() -> set[str]:
    """Every .py under the mapped folders, as its import name."""
    out = set()
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            if package == "gridlab" and rel.parts[0] != "v1" and len(rel.parts) > 1:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            out.add(".".join([package, *parts]))
    return out


@pytest.mark.slow
def test_wheel_contains_every_module_and_imports_in_a_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("gridlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = expected_modules()
    assert "gridlab.v1.scheduler_pb2" in modules
    assert "gridlab.scheduler.engine" in modules
    for module in modules:
        as_path = module.replace(".", "/")
        assert f"{as_path}.py" in names or f"{as_path}/__init__.py" in names, module
    assert not any(n.startswith(("trainer/", "client/", "common/", "scheduler/", "agent/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("gridlab-scheduler", "gridlab-agent", "schedctl"):
        assert script in text

    # A fresh venv with the wheel installed and no access to this checkout. Its
    # dependencies come from this venv's site-packages through a .pth file (a path added
    # that way does not run the editable install's own .pth hook).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = (
        "import importlib, sys\n"
        f"mods = {sorted(modules)!r}\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert {str(ROOT)!r} not in (mod.__file__ or ''), (m, mod.__file__)\n"
        "print(len(mods))\n"
    )
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(modules)


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True, capture_output=True
    )
    generated = sorted(p.name for p in (tmp_path / "gridlab" / "v1").iterdir())
    committed = ROOT / "proto" / "gridlab" / "v1"
    assert generated, "nothing was generated"
    for name in generated:
        assert (committed / name).exists(), f"{name} is not committed: run make proto"
        assert filecmp.cmp(tmp_path / "gridlab" / "v1" / name, committed / name, shallow=False), (
            f"proto/gridlab/v1/{name} differs from what the .proto files generate: run make proto"
        )


def test_the_trainer_imports_torch_only() -> None:
    """gridlab.trainer runs under plain python or torchrun: no grpc, no daemon code."""
    code = (
        "import sys, gridlab.trainer as t\n"
        "t.Trainer, t.Module, t.ModelCheckpoint, t.CSVLogger\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'grpc' or m.startswith(('gridlab.scheduler', "
        "'gridlab.agent', 'gridlab.client', 'gridlab.common', 'gridlab.v1'))]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
