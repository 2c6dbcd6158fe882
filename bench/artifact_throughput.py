"""How fast do files move through the scheduler's artifact store, against `cp` of the same file?

On a local scheduler (a real daemon process on loopback, its store on this machine's disk),
a file of random-ish bytes is generated in a temporary folder, then:

  cp:        `cp SRC DST` in the same folder (the baseline, timed in the same run)
  cp+fsync:  the same, then an fsync of the copy: a durable copy, as the store makes of a blob
  digest:    SHA-256 of the file (`digest_file`), which an upload needs first
  upload:    `transfer.upload_file` with the digest known: StatBlob, the chunk stream, the
             scheduler hashing, writing, fsyncing and renaming it into place, and its row
  upload+digest: the two above together: what an upload of a new file costs end to end
  download:  `transfer.download_blob`: the stream into DST.partial, hashed as it lands,
             fsynced and renamed

MB/s is file size / seconds (10^6 bytes). Each transfer's ratio is its MB/s over cp's. Every
figure is the median of --repeat rounds (each round uploads a new blob: its first bytes change).
Goal (issue 5): upload and download each at least half of cp's rate.

    python bench/artifact_throughput.py [--size-mib 1024] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from gridlab.client.localcluster import LocalCluster
from gridlab.common import auth, grpcopts, transfer
from gridlab.common.bundle import digest_file
from gridlab.v1 import artifacts_pb2, artifacts_pb2_grpc

MiB = 1024 * 1024
GOAL_RATIO = 0.5


def make_file(path: Path, size: int) -> None:
    """Random bytes, a fresh 16 MiB block every 16 MiB (os.urandom is slower than the disk)."""
    block = 16 * MiB
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(block, size - written)
            f.write(os.urandom(n))
            written += n
        f.flush()
        os.fsync(f.fileno())


def cp(src: Path, dst: Path, *, durable: bool = False) -> None:
    """`cp`, and for the durable baseline an fsync of the copy (as the store does for a blob)."""
    dst.unlink(missing_ok=True)
    subprocess.run(["cp", str(src), str(dst)], check=True)  # noqa: S603, S607
    if durable:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024: 1 GiB)")
    p.add_argument("--repeat", type=int, default=3, help="rounds; each figure is the median round (default 3)")
    p.add_argument("--keep", type=Path, help="keep the scheduler's state and log in this folder")
    args = p.parse_args()
    size = args.size_mib * MiB
    names = ("cp", "cp+fsync", "digest", "upload", "upload+digest", "download")
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="gridlab-artifact-bench-") as tmp:
        root = args.keep or Path(tmp)
        work = Path(tmp) / "files"
        work.mkdir()
        src, copy, down = work / "src.bin", work / "cp.bin", work / "down.bin"
        make_file(src, size)
        with LocalCluster(root / "cluster") as cluster:
            cluster.start_scheduler()
            channel = grpc.insecure_channel(cluster.address, options=grpcopts.CLIENT_CHANNEL_OPTIONS)
            stub = artifacts_pb2_grpc.ArtifactsStub(channel)
            admin = auth.metadata(cluster.admin_token)
            agent = auth.metadata(auth.read_secret(cluster.agent_token_file))
            for round_ in range(args.repeat):
                # A new first 8 bytes each round: a new blob, so every round uploads all of it.
                with open(src, "r+b") as f:
                    f.write(round_.to_bytes(8, "little"))
                times["cp"].append(timed(lambda: cp(src, copy)))
                times["cp+fsync"].append(timed(lambda: cp(src, copy, durable=True)))
                start = time.perf_counter()
                digest = digest_file(src)
                times["digest"].append(time.perf_counter() - start)
                start = time.perf_counter()
                transfer.upload_file(
                    stub, src, purpose=artifacts_pb2.BLOB_PURPOSE_BUNDLE, metadata=admin, digest=digest
                )
                times["upload"].append(time.perf_counter() - start)
                times["upload+digest"].append(times["digest"][-1] + times["upload"][-1])
                down.unlink(missing_ok=True)
                start = time.perf_counter()
                transfer.download_blob(stub, digest, down, metadata=agent)
                times["download"].append(time.perf_counter() - start)
                if digest_file(down) != digest:
                    raise SystemExit("the downloaded file differs from the uploaded one")
            channel.close()

    def rate(seconds: float) -> float:
        return size / seconds / 1e6

    median = {name: statistics.median(values) for name, values in times.items()}
    cp_rate = rate(median["cp"])
    print(f"file: {args.size_mib} MiB of random bytes; scheduler on loopback, store on this disk; {args.repeat} rounds")
    print(f"{'':16} {'seconds':>8} {'MB/s':>8} {'vs cp':>7}   (median round; best MB/s)")
    for name, seconds in median.items():
        best = rate(min(times[name]))
        print(f"{name:16} {seconds:8.3f} {rate(seconds):8.1f} {rate(seconds) / cp_rate:6.2f}x   best {best:.1f}")
    up_ratio, down_ratio = rate(median["upload"]) / cp_rate, rate(median["download"]) / cp_rate
    verdict = "met" if min(up_ratio, down_ratio) >= GOAL_RATIO else "NOT met"
    print(f"ratio upload/cp: {up_ratio:.2f}x; download/cp: {down_ratio:.2f}x (goal >= {GOAL_RATIO}x: {verdict})")


if __name__ == "__main__":
    main()
