"""A run's code on this machine: fetch its bundle by digest, cache it, extract it into the attempt.

    digest --DownloadBlob--> <cache>/<hex>.tar.gz --safe_extract--> <attempt>/work/ --> work/<workdir>

Bundles are content-addressed, so a cached file is reused by every attempt that names the same
digest, and a per-digest flock makes attempts (and agents sharing a cache) that ask at once
download it once. A bundle may come from anyone holding a token: `safe_extract` treats it as
hostile, and the workdir is resolved inside the extracted tree, never through a link out.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import structlog

from gridlab.common import transfer
from gridlab.common.bundle import DEFAULT_MAX_BYTES, DEFAULT_MAX_FILES, DEFAULT_MAX_RATIO, BundleError, safe_extract
from gridlab.common.requirements import normalize_requirements
from gridlab.v1 import artifacts_pb2_grpc

log = structlog.get_logger("gridlab.agent.bundles")

Metadata = Sequence[tuple[str, str]]
REQUIREMENTS_FILE = "requirements.txt"
MAX_REQUIREMENTS_BYTES = 1024 * 1024
_LOCK_POLL = 0.1
# Codes after which asking again cannot help: the bundle is missing, refused, or the agent may not read it.
_PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class PrepareError(Exception):
    """An attempt cannot start with what it was given; the message says what to fix.

    `permanent`: another attempt would fail the same way (a hostile or missing bundle, a bad
    workdir or requirements.txt), so the run should fail without retries. Otherwise (the
    scheduler was unreachable) it is an infrastructure failure worth another attempt.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class BundleFetchError(PrepareError):
    """The run's code bundle could not be fetched, extracted or entered."""


def is_permanent(error: grpc.RpcError) -> bool:
    """Whether a failed call would fail again however often it is retried."""
    code = error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    return code in _PERMANENT_CODES


def rpc_detail(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path`, polled so the event loop keeps running while another holds it.

    Each holder opens its own file, so attempts in this process exclude each other as well as
    other processes; the kernel drops the lock when a holder dies. The file is never deleted
    (deleting it would let two holders in at once).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing the file releases its lock


async def cached_bundle(
    stub: artifacts_pb2_grpc.ArtifactsAsyncStub, metadata: Metadata, digest: str, cache_dir: Path
) -> Path:
    """`<cache_dir>/<hex>.tar.gz`, downloaded and verified unless an earlier attempt left it there."""
    if not transfer.is_digest(digest):
        raise BundleFetchError(
            f"code_digest {digest[:80]!r} is not 'sha256:' followed by 64 lowercase hex digits", permanent=True
        )
    hexdigest = digest.removeprefix("sha256:")
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"{hexdigest}.tar.gz"
    async with file_lock(cache_dir / f"{hexdigest}.lock"):
        if final.is_file():
            with contextlib.suppress(OSError):
                os.utime(final)  # last use, for whoever trims the cache
            log.info("bundle_cached", digest=digest)
            return final
        try:
            # Verified, written to <final>.partial (resumed on a later try) and renamed into place.
            await transfer.download_blob_async(stub, digest, final, metadata=metadata)
        except transfer.TransferError as e:
            # Retrying cannot help, and an infrastructure retry does not spend the user's max_retries.
            raise BundleFetchError(
                f"the scheduler's copy of code bundle {digest} is damaged ({e}); ask an admin to check its store",
                permanent=True,
            ) from e
        except grpc.RpcError as e:
            permanent = is_permanent(e)
            hint = "upload the code again and resubmit" if permanent else "will retry"
            raise BundleFetchError(
                f"could not download code bundle {digest}: {rpc_detail(e)} ({hint})", permanent=permanent
            ) from e
        log.info("bundle_downloaded", digest=digest, bytes=final.stat().st_size)
        return final


def _extract_into(archive: Path, work_dir: Path, max_bytes: int, max_files: int, max_ratio: float) -> None:
    """Extract beside `work_dir`, then take its place: `safe_extract` wants a folder that does not exist."""
    if work_dir.exists():
        if any(work_dir.iterdir()):
            raise ValueError(f"{work_dir} is not empty: a bundle is extracted into a fresh working directory")
        work_dir.rmdir()
    work_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{work_dir.name}.", dir=work_dir.parent))
    target = staging / "bundle"
    try:
        safe_extract(archive, target, max_bytes=max_bytes, max_files=max_files, max_ratio=max_ratio)
        os.rename(target, work_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def start_dir(work_dir: Path, workdir: str) -> Path:
    """`work_dir/workdir`, when it is a folder of the extracted bundle reached without leaving it."""
    root = Path(os.path.realpath(work_dir))
    parts = [p for p in workdir.split("/") if p not in ("", ".")]
    if workdir.startswith("/") or ".." in parts or "\x00" in workdir:
        raise BundleFetchError(f"workdir {workdir!r} must be a relative path inside the bundle", permanent=True)
    target = Path(os.path.realpath(root.joinpath(*parts)))
    if not (target == root or target.is_relative_to(root)):
        raise BundleFetchError(f"workdir {workdir!r} leaves the bundle through a symlink", permanent=True)
    if not target.is_dir():
        raise BundleFetchError(
            f"workdir {workdir!r} is not a folder in the code bundle; check the path, relative to the folder "
            "that was uploaded",
            permanent=True,
        )
    return target


async def fetch_bundle(
    stub: artifacts_pb2_grpc.ArtifactsAsyncStub,
    metadata: Metadata,
    digest: str,
    cache_dir: Path,
    work_dir: Path,
    *,
    workdir: str = "",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_ratio: float = DEFAULT_MAX_RATIO,
) -> Path:
    """Put bundle `digest` into `work_dir` (absent or empty) and return the folder the ranks start in.

    Raises:
        BundleFetchError: `.permanent` for a malformed digest, a bundle the store lacks, a
            refused archive (the message names the member and rule, or the compression ratio of
            a zip bomb) or a bad workdir; not
            permanent when the scheduler could not be reached.
    """
    archive = await cached_bundle(stub, metadata, digest, cache_dir)
    try:
        await asyncio.to_thread(_extract_into, archive, work_dir, max_bytes, max_files, max_ratio)
    except BundleError as e:
        raise BundleFetchError(f"code bundle {digest} refused: {e}", permanent=True) from e
    return start_dir(work_dir, workdir)


def bundle_requirements(work_dir: Path) -> list[str]:
    """The lines of the bundle's top-level requirements.txt, validated like a spec's `requirements`.

    For a run that lists no requirements of its own: the agent builds these into its environment.
    Empty when the bundle has no such file.

    Raises:
        BundleFetchError (permanent): the file is a link, too big, not UTF-8, or has a line pip
            would read as an option, a local path or anything else a spec may not ask for.
    """
    path = work_dir / REQUIREMENTS_FILE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISREG(st.st_mode):
        raise BundleFetchError(f"{REQUIREMENTS_FILE} in the bundle must be a regular file, not a link", permanent=True)
    if st.st_size > MAX_REQUIREMENTS_BYTES:
        raise BundleFetchError(
            f"{REQUIREMENTS_FILE} in the bundle is {st.st_size} bytes; at most {MAX_REQUIREMENTS_BYTES} are read",
            permanent=True,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BundleFetchError(f"{REQUIREMENTS_FILE} in the bundle is not UTF-8 text: {e}", permanent=True) from e
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            normalize_requirements([line])
        except ValueError as e:
            message = str(e).replace("requirements[0]", f"{REQUIREMENTS_FILE} line {number}", 1)
            raise BundleFetchError(message, permanent=True) from e
    try:
        return normalize_requirements(lines)
    except ValueError as e:  # too many lines
        raise BundleFetchError(f"{REQUIREMENTS_FILE} in the bundle: {e}", permanent=True) from e
