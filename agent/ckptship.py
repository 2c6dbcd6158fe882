"""Checkpoints and artifacts to the scheduler's store, and a run's checkpoint back for its next attempt.

    GRIDLAB_CHECKPOINT_DIR --scan--> complete, stable entries --UploadBlob (one file at a time)-->
        RecordCheckpoint(name, step, files)          every poll interval, and once more at the end
    GRIDLAB_ARTIFACT_DIR --UploadBlob--> RecordArtifacts      once, when the ranks have exited
    Assignment.resume_files --DownloadBlob--> <dest_root>/<resume_name> = GRIDLAB_RESUME_FROM

A top-level entry of the checkpoint dir is complete when it is a `*.ckpt` file (not a writer's
temp file) or a folder holding meta.pt, which the trainer writes last (the rule of
`launcher.newest_checkpoint`). Writers rename into place, but an entry can still be replaced
while it is hashed (`last.ckpt` every epoch), so a file is used only when its inode, size and
mtime are the same before and after hashing; otherwise the next scan tries again. An entry is
uploaded again whenever one of its files' (path, mtime_ns, size) changed.

FileRef paths are relative to the checkpoint dir: `last.ckpt` for a file checkpoint, and
`epoch3/meta.pt`, `epoch3/.metadata`, ... for a folder; restoring writes them back the same way.
Shipping never fails an attempt: a failed upload is retried on the next scan.

With a `fence` (`logfence.OutputFence`), an entry is recorded only once the log lines its ranks printed
before it appeared are acknowledged, so a resume from it never skips lines that a dying agent still held.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog

from gridlab.agent.bundles import Metadata, PrepareError, is_permanent, rpc_detail
from gridlab.common import transfer
from gridlab.common.bundle import digest_file
from gridlab.v1 import agent_pb2, artifacts_pb2, artifacts_pb2_grpc, types_pb2

log = structlog.get_logger("gridlab.agent.ckptship")

META_FILE = "meta.pt"  # trainer/checkpoint.py: written last into a sharded checkpoint's folder
FUTURE_SLACK_NS = 60 * 1_000_000_000  # clock skew tolerated before a file counts as from the future
MAX_NAME = 255
MAX_PATH = 1024  # what the scheduler accepts (scheduler/artifacts.py MAX_PATH_CHARS)
MAX_ARTIFACTS = 10_000  # files per attempt and node; keeps RecordArtifacts far under the message cap
RPC_TIMEOUT = 30.0
SETTLE_SECONDS = 2.0  # an entry's files must be this old before it is shipped while the ranks run
# The scheduler refused this version of an entry: retrying the same bytes cannot help.
_REFUSED_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT})
# The attempt is no longer ours to report on: stop shipping.
_GONE_CODES = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})

Note = Callable[[str], None]
FENCE_TIMEOUT = 10.0  # seconds one scan waits for the lines before an entry; the next scan waits again


class Fence(Protocol):
    """What an entry waits on before it is recorded (`logfence.OutputFence`)."""

    def mark(self) -> Any: ...

    async def passed(self, mark: Any, timeout: float) -> bool: ...


class CheckpointRestoreError(PrepareError):
    """The checkpoint to resume from could not be restored (`permanent` as in PrepareError)."""


@dataclass(frozen=True)
class LocalFile:
    """A regular file as it was when scanned; `rel` is its '/'-path under the scanned folder."""

    rel: str
    path: Path
    size: int
    mtime_ns: int
    ino: int
    dev: int

    @classmethod
    def of(cls, rel: str, path: Path, st: os.stat_result) -> LocalFile:
        return cls(rel, path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)

    def unchanged(self) -> bool:
        """Whether the path still holds the very file that was scanned."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return False
        return stat.S_ISREG(st.st_mode) and LocalFile.of(self.rel, self.path, st) == self


@dataclass(frozen=True)
class CheckpointEntry:
    """A complete top-level entry of the checkpoint dir: a file, or a folder's files."""

    name: str
    files: tuple[LocalFile, ...]

    @property
    def key(self) -> tuple[tuple[str, int, int], ...]:
        """Changes whenever the entry was rewritten."""
        return tuple((f.rel, f.mtime_ns, f.size) for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def newest_ns(self) -> int:
        return max((f.mtime_ns for f in self.files), default=0)


@dataclass
class Scan:
    entries: list[CheckpointEntry] = field(default_factory=list)  # oldest first
    skipped: list[str] = field(default_factory=list)  # why something that looked like a checkpoint was not


def safe_component(name: str) -> bool:
    """A file name that is the same on every machine and in a protobuf string."""
    if not name or name in (".", "..") or len(name) > MAX_NAME or "/" in name or "\\" in name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes on disk, kept as surrogates
        return False
    return name.isprintable()


def split_rel(path: str) -> list[str] | None:
    """The components of a relative '/'-path, or None when it is absolute, has '..', '.' or blanks."""
    if not path or len(path) > MAX_PATH:
        return None
    parts = path.split("/")
    return parts if all(safe_component(p) for p in parts) else None


def _human(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def walk_files(root: Path, rel: str, skipped: list[str]) -> list[LocalFile]:
    """Regular files under `root`, sorted; symlinks (never followed) and special files skipped."""
    found: list[LocalFile] = []
    with os.scandir(root) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        child_rel = f"{rel}/{child.name}" if rel else child.name
        if not safe_component(child.name):
            skipped.append(f"{child_rel!r}: the name is not printable UTF-8")
            continue
        st = child.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            skipped.append(f"{child_rel}: a symlink, not followed")
        elif stat.S_ISDIR(st.st_mode):
            found.extend(walk_files(Path(child.path), child_rel, skipped))
        elif stat.S_ISREG(st.st_mode):
            found.append(LocalFile.of(child_rel, Path(child.path), st))
        else:
            skipped.append(f"{child_rel}: not a regular file")
    return found


def _complete_entry(path: Path, now_ns: int, skipped: list[str]) -> CheckpointEntry | None:
    """The entry at `path` when it is a complete checkpoint; None when it is not (yet) one."""
    name = path.name
    if name.startswith(".") or ".partial" in name or ".old-" in name:
        return None  # a writer's temp file, a save in progress, or the old one being swapped out
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        skipped.append(f"{name}: a symlink, not uploaded (it could point anywhere)")
        return None
    if stat.S_ISREG(st.st_mode):
        if not name.endswith(".ckpt"):
            return None
        files = [LocalFile.of(name, path, st)]
    elif stat.S_ISDIR(st.st_mode):
        try:
            meta = os.lstat(path / META_FILE)
        except FileNotFoundError:
            return None  # still being written
        if not stat.S_ISREG(meta.st_mode):
            skipped.append(f"{name}: its {META_FILE} is not a regular file")
            return None
        files = walk_files(path, name, skipped)
    else:
        return None
    if not safe_component(name):
        skipped.append(f"{name!r}: the name is not printable UTF-8; rename the checkpoint")
        return None
    if any(f.mtime_ns > now_ns + FUTURE_SLACK_NS for f in files):
        skipped.append(f"{name}: modified in the future (check this machine's clock)")
        return None
    return CheckpointEntry(name, tuple(files))


def scan_checkpoints(ckpt_dir: Path, *, now: float | None = None) -> Scan:
    """The complete checkpoints in `ckpt_dir`, oldest first (so the newest is recorded last)."""
    scan = Scan()
    now_ns = int((time.time() if now is None else now) * 1e9)
    try:
        paths = sorted(ckpt_dir.iterdir())
    except FileNotFoundError:
        return scan
    for path in paths:
        try:
            entry = _complete_entry(path, now_ns, scan.skipped)
        except OSError:
            continue  # removed or replaced while we looked: the next scan sees what is there
        if entry is not None:
            scan.entries.append(entry)
    scan.entries.sort(key=lambda e: (e.newest_ns, e.name))
    return scan


def hash_stable(files: Sequence[LocalFile]) -> list[types_pb2.FileRef] | None:
    """FileRefs for `files`, or None when any changed while it was read (try again later)."""
    refs = []
    for f in files:
        try:
            digest = digest_file(f.path)
        except OSError:
            return None
        if not f.unchanged():
            return None
        refs.append(types_pb2.FileRef(path=f.rel, digest=digest, size=f.size))
    return refs


class _FenceMiss(Exception):
    """An entry's earlier log lines are not delivered yet: newer entries wait behind it, till the next scan."""


class _Gone(Exception):
    """The scheduler no longer takes reports about this attempt."""


def _classify(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None


async def _upload(
    stub: artifacts_pb2_grpc.ArtifactsAsyncStub,
    metadata: Metadata,
    owner: tuple[str, str],
    files: Sequence[LocalFile],
    refs: list[types_pb2.FileRef],
    purpose: artifacts_pb2.BlobPurpose,
    gate: asyncio.Lock,
) -> None:
    """Each file's bytes, one file at a time across everything that shares `gate`. `owner`: the agent's name
    and the attempt the files belong to."""
    agent_name, attempt_id = owner
    for f, ref in zip(files, refs, strict=True):
        async with gate:
            await transfer.upload_file_async(
                stub,
                f.path,
                purpose=purpose,
                attempt_id=attempt_id,
                agent_name=agent_name,
                metadata=metadata,
                digest=ref.digest,
            )


class CheckpointShipper:
    """Uploads an attempt's complete checkpoints as they appear, and once more when it ends.

    Hashing runs in a thread, so the agent's event loop stays responsive; uploads run one at a
    time (pass one `gate` for the whole agent to keep it so across attempts). While the ranks run,
    an entry is taken only once its files have been still for `settle` seconds, in case a script
    writes `last.ckpt` in place rather than renaming it there; `flush` takes everything.
    """

    def __init__(
        self,
        stub: artifacts_pb2_grpc.ArtifactsAsyncStub,
        metadata: Metadata,
        *,
        agent_name: str,
        attempt_id: str,
        node_rank: int,
        checkpoint_dir: Path,
        step: Callable[[], int],
        poll: float,
        note: Note,
        gate: asyncio.Lock | None = None,
        settle: float = SETTLE_SECONDS,
        fence: Fence | None = None,
    ) -> None:
        self.stub = stub
        self.metadata = metadata
        self.agent_name = agent_name
        self.attempt_id = attempt_id
        self.node_rank = node_rank
        self.checkpoint_dir = Path(checkpoint_dir)
        self.step = step
        self.poll = poll
        self.note = note
        self.gate = gate or asyncio.Lock()
        self.settle_ns = int(settle * 1e9)
        self.fence = fence
        self.shipped: dict[str, tuple[tuple[str, int, int], ...]] = {}  # name -> key recorded
        self.refused: dict[str, tuple[tuple[str, int, int], ...]] = {}  # name -> key the scheduler refused
        self.gone = False  # the scheduler stopped taking reports about this attempt
        # name -> (key, step, fence mark): as when this version of the entry first appeared
        self._seen: dict[str, tuple[tuple[tuple[str, int, int], ...], int, Any]] = {}
        self._noted: set[str] = set()
        self._lock = asyncio.Lock()  # one scan at a time: run() and flush()

    def _note_once(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            self.note(text)

    async def run(self) -> None:
        """Scan and upload every `poll` seconds until cancelled; never raises otherwise."""
        while not self.gone:
            try:
                await self.ship()
            except Exception as e:  # shipping must never take the attempt down
                log.warning("checkpoint_scan_failed", attempt_id=self.attempt_id, error=repr(e))
            await asyncio.sleep(self.poll)

    async def flush(self, timeout: float = 120.0) -> bool:
        """One last scan and upload, retried until `timeout`: call it after the ranks exited, before
        the end is reported, so a preempted run's last checkpoint gets out. True when all shipped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if await self.ship(final=True, deadline=deadline):
                    return True
            except Exception as e:
                log.warning("checkpoint_flush_failed", attempt_id=self.attempt_id, error=repr(e))
            left = deadline - time.monotonic()
            if self.gone or left <= 0:
                self.note("checkpoint: some checkpoints were not uploaded before the attempt ended")
                return False
            await asyncio.sleep(min(1.0, self.poll, left))

    async def ship(self, *, final: bool = False, deadline: float | None = None) -> bool:
        """Upload what is new or rewritten. True when every complete checkpoint is shipped (or refused).

        `final`: the ranks have exited, so nothing is being written: no settling time. `deadline` (monotonic):
        waits for log lines end by then.
        """
        async with self._lock:
            if self.gone:
                return False
            scan = await asyncio.to_thread(scan_checkpoints, self.checkpoint_dir)
            for reason in scan.skipped:
                self._note_once(f"checkpoint: skipped {reason}")
            pending = False
            settled_ns = time.time_ns() - self.settle_ns
            for entry in scan.entries:
                key = entry.key
                if self.shipped.get(entry.name) == key or self.refused.get(entry.name) == key:
                    continue
                seen = self._seen.get(entry.name)
                if seen is None or seen[0] != key:
                    mark = self.fence.mark() if self.fence is not None else None
                    self._seen[entry.name] = seen = (key, max(-1, self.step()), mark)
                if not final and entry.newest_ns > settled_ns:
                    pending = True
                    continue
                wait = FENCE_TIMEOUT if deadline is None else max(0.0, min(FENCE_TIMEOUT, deadline - time.monotonic()))
                try:
                    done = await self._ship_entry(entry, seen[1], seen[2], wait)
                except _FenceMiss:
                    log.info("checkpoint_waits_for_logs", attempt_id=self.attempt_id, name=entry.name)
                    return False  # the next scan waits again; newer entries wait behind this one
                except _Gone:
                    self.gone = True
                    return False
                except grpc.RpcError as e:
                    log.info("checkpoint_upload_failed", attempt_id=self.attempt_id, error=rpc_detail(e))
                    return False  # the scheduler is unreachable: try everything again next scan
                pending = pending or not done
            return not pending

    async def _ship_entry(self, entry: CheckpointEntry, step: int, mark: Any = None, wait: float = 0.0) -> bool:
        """Once the lines before `mark` are delivered (waiting up to `wait` seconds; else _FenceMiss), upload one
        entry's files and record it. False when it changed under us (retried later)."""
        if self.fence is not None and not await self.fence.passed(mark, wait):
            raise _FenceMiss(entry.name)
        refs = await asyncio.to_thread(hash_stable, entry.files)
        if refs is None:
            return False
        try:
            await _upload(
                self.stub,
                self.metadata,
                (self.agent_name, self.attempt_id),
                entry.files,
                refs,
                artifacts_pb2.BLOB_PURPOSE_CHECKPOINT,
                self.gate,
            )
            reply = await self.stub.RecordCheckpoint(
                artifacts_pb2.RecordCheckpointRequest(
                    agent_name=self.agent_name,
                    attempt_id=self.attempt_id,
                    node_rank=self.node_rank,
                    name=entry.name,
                    step=step,
                    files=refs,
                ),
                metadata=self.metadata,
                timeout=RPC_TIMEOUT,
            )
        except OSError:
            return False  # deleted or replaced mid-upload (a trainer keeping its newest k)
        except grpc.RpcError as e:
            code = _classify(e)
            if code in _GONE_CODES:
                self.note(f"checkpoint: the scheduler no longer takes this attempt's checkpoints ({rpc_detail(e)})")
                raise _Gone from e
            if code == grpc.StatusCode.DATA_LOSS:
                return False  # the bytes changed between hashing and sending
            if code in _REFUSED_CODES:
                self.refused[entry.name] = entry.key
                self.note(f"checkpoint {entry.name} ({_human(entry.size)}) was refused: {e.details()}")
                return True
            raise
        self.shipped[entry.name] = entry.key
        where = f"step {step}, " if step >= 0 else ""
        files = f"{len(refs)} file{'s' if len(refs) != 1 else ''}"
        self.note(f"checkpoint {entry.name} ({where}{files}, {_human(entry.size)}) uploaded")
        log.info(
            "checkpoint_uploaded",
            attempt_id=self.attempt_id,
            name=entry.name,
            step=step,
            files=len(refs),
            checkpoint_id=reply.checkpoint_id,
        )
        return True


def scan_artifacts(artifact_dir: Path, skipped: list[str]) -> list[LocalFile]:
    try:
        return walk_files(artifact_dir, "", skipped)
    except FileNotFoundError:
        return []


async def upload_artifacts(
    stub: artifacts_pb2_grpc.ArtifactsAsyncStub,
    metadata: Metadata,
    agent_name: str,
    attempt_id: str,
    node_rank: int,
    artifact_dir: Path,
    note: Note,
    *,
    gate: asyncio.Lock | None = None,
    timeout: float = 120.0,
) -> int:
    """Upload and record every regular file under `artifact_dir` (symlinks skipped); returns how many.

    Call it once the ranks have exited. Transient failures are retried until `timeout`; a
    failure in the end is written to the run's logs and returns 0, never raised.
    """
    gate = gate or asyncio.Lock()
    skipped: list[str] = []
    files = await asyncio.to_thread(scan_artifacts, Path(artifact_dir), skipped)
    for reason in skipped:
        note(f"artifacts: skipped {reason}")
    if len(files) > MAX_ARTIFACTS:
        note(f"artifacts: {len(files)} files; only the first {MAX_ARTIFACTS} by name are uploaded (archive the rest)")
        files = files[:MAX_ARTIFACTS]
    if not files:
        return 0
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        refs = await asyncio.to_thread(hash_stable, files)
        try:
            if refs is None:
                raise OSError("a file changed while it was read")
            await _upload(
                stub, metadata, (agent_name, attempt_id), files, refs, artifacts_pb2.BLOB_PURPOSE_ARTIFACT, gate
            )
            await stub.RecordArtifacts(
                artifacts_pb2.RecordArtifactsRequest(
                    agent_name=agent_name, attempt_id=attempt_id, node_rank=node_rank, files=refs
                ),
                metadata=metadata,
                timeout=RPC_TIMEOUT,
            )
        except (OSError, grpc.RpcError) as e:
            detail = rpc_detail(e) if isinstance(e, grpc.RpcError) else str(e)
            final = isinstance(e, grpc.RpcError) and (is_permanent(e) or _classify(e) in _GONE_CODES)
            if final or time.monotonic() + delay > deadline:
                note(f"artifacts: {len(files)} files not saved: {detail}")
                return 0
            log.info("artifact_upload_retry", attempt_id=attempt_id, error=detail)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        size = sum(f.size for f in files)
        note(f"artifacts: {len(files)} file{'s' if len(files) != 1 else ''} ({_human(size)}) uploaded")
        return len(files)


def _restore_plan(assignment: agent_pb2.Assignment) -> list[tuple[list[str], types_pb2.FileRef]]:
    """Each resume file's path components, refusing any that would land outside its checkpoint."""
    name = assignment.resume_name
    if not safe_component(name):
        raise CheckpointRestoreError(f"refused checkpoint name {name[:80]!r}: not a plain file name", permanent=True)
    refs = list(assignment.resume_files)
    plan: list[tuple[list[str], types_pb2.FileRef]] = []
    seen: set[str] = set()
    for ref in refs:
        parts = split_rel(ref.path)
        single = parts == [name] and len(refs) == 1
        if parts is None or not (single or (len(parts) > 1 and parts[0] == name)):
            raise CheckpointRestoreError(
                f"refused checkpoint file {ref.path[:200]!r}: not {name!r} or a relative path under {name}/",
                permanent=True,
            )
        if ref.path in seen:
            raise CheckpointRestoreError(f"refused checkpoint file {ref.path!r}: listed twice", permanent=True)
        seen.add(ref.path)
        plan.append((parts, ref))
    return plan


async def restore_checkpoint(
    stub: artifacts_pb2_grpc.ArtifactsAsyncStub,
    metadata: Metadata,
    assignment: agent_pb2.Assignment,
    dest_root: Path,
) -> Path | None:
    """Download the checkpoint the assignment resumes from; returns the path for GRIDLAB_RESUME_FROM.

    None when there is nothing to resume. Files are written into a private folder under
    `dest_root` and renamed to `dest_root/<resume_name>` only when all arrived, so nothing is
    written outside `dest_root` and no half-restored checkpoint is left behind.

    Raises:
        CheckpointRestoreError: `.permanent` for hostile names or paths and blobs the store lacks
            or cannot read back; not permanent when the scheduler could not be reached.
    """
    if not assignment.resume_files:
        return None
    plan = _restore_plan(assignment)
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".restore-", dir=dest_root))
    try:
        for parts, ref in plan:
            target = staging.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)  # staging is ours: no links in it
                await transfer.download_blob_async(stub, ref.digest, target, metadata=metadata)
            except grpc.RpcError as e:
                raise CheckpointRestoreError(
                    f"could not download checkpoint file {ref.path} ({ref.digest}): {rpc_detail(e)}",
                    permanent=is_permanent(e),
                ) from e
            except (transfer.TransferError, ValueError) as e:  # damaged in the store, or a malformed digest
                raise CheckpointRestoreError(f"checkpoint file {ref.path}: {e}", permanent=True) from e
            except OSError as e:  # e.g. one path is both a file and a folder
                raise CheckpointRestoreError(f"could not write checkpoint file {ref.path}: {e}", permanent=True) from e
            if target.stat().st_size != ref.size:
                raise CheckpointRestoreError(
                    f"checkpoint file {ref.path} has {target.stat().st_size} bytes, not {ref.size}", permanent=True
                )
        final = dest_root / assignment.resume_name
        if final.is_symlink() or final.is_file():
            final.unlink()
        elif final.is_dir():
            shutil.rmtree(final)
        os.rename(staging / assignment.resume_name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("checkpoint_restored", run_id=assignment.run_id, name=assignment.resume_name, files=len(plan))
    return final
