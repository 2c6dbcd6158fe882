"""The artifact store: blobs named by their SHA-256, and the checkpoints and artifacts of runs.

```
<artifact_dir>/
  partial/<hex>            an upload in progress or interrupted: StatBlob reports its length
  sha256/<hex[:2]>/<hex>   a complete blob, verified, then renamed here; then its `blobs` row
```

A blob is complete when its `blobs` row exists (the file was fsynced and renamed before the
row was written). File work runs in worker threads (`PartialBlob`, `read_chunks`); every
SQLite read and write stays on the event loop's thread, the store's one writer.

A checkpoint is what one node of an attempt recorded under a top-level name. Nodes of a
multi-node attempt each record their own shards of a sharded checkpoint, so the checkpoint a
run resumes from is the union of the records of one attempt with the same name and step, and
it is complete once every node that records checkpoints in that attempt has recorded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import io
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path

import grpc
import structlog

from gridlab.common.config import SchedulerConfig
from gridlab.common.timeutil import ts
from gridlab.common.transfer import is_digest
from gridlab.v1 import artifacts_pb2, types_pb2

from .auth import AGENT, Principal
from .errors import ApiError, aborted, data_loss, denied, exhausted, invalid, not_found, out_of_range, precondition
from .state import AttemptState
from .store import Store

MAX_FILES = 100_000  # FileRefs in one record (a sharded checkpoint of many ranks)
MAX_PATH_CHARS = 1024
MAX_PART_CHARS = 255
MAX_NAME_CHARS = 255
ENDED_GRACE = 3600.0  # seconds after an attempt ended that its node may still upload and record
PARTIAL_MAX_AGE = 7 * 86400.0  # an interrupted upload nobody resumed this long is removed at start
STALL_SECONDS = 30.0  # an upload that sent nothing this long gives way to a new one of the same blob
READ_CHUNK = 1024 * 1024  # bytes per DownloadBlob message (see bench/artifact_throughput.py)

log = structlog.get_logger("gridlab.scheduler.artifacts")

_PURPOSE_WORDS = {
    artifacts_pb2.BLOB_PURPOSE_BUNDLE: "bundle",
    artifacts_pb2.BLOB_PURPOSE_CHECKPOINT: "checkpoint",
    artifacts_pb2.BLOB_PURPOSE_ARTIFACT: "artifact",
}
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _disk_error(exc: OSError, doing: str) -> ApiError:
    if exc.errno in _DISK_FULL:
        return exhausted(f"the scheduler's artifact disk is full while {doing}: free space there and retry")
    return ApiError(grpc.StatusCode.INTERNAL, f"the scheduler could not {doing}: {exc.strerror or exc}")


# --- validation -------------------------------------------------------------------------------


def check_digest(digest: str, what: str = "digest") -> None:
    if not is_digest(digest):
        shown = digest if len(digest) <= 80 else digest[:80] + "..."
        raise invalid(f"{what} {shown!r} must be 'sha256:' followed by 64 lowercase hex digits")


def check_path(path: str, what: str = "path") -> None:
    """A FileRef path: relative, '/'-separated, without '.', '..' or empty parts, printable."""
    if not path:
        raise invalid(f"{what} is empty")
    if len(path) > MAX_PATH_CHARS:
        raise invalid(f"{what} is {len(path)} characters long: at most {MAX_PATH_CHARS}")
    if not path.isprintable():
        raise invalid(f"{what} {path[:80]!r} contains NUL or control characters")
    if path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        raise invalid(f"{what} {path!r} must be relative and '/'-separated")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise invalid(f"{what} {path!r} has an empty, '.' or '..' part: give a plain relative path")
        if len(part) > MAX_PART_CHARS:
            raise invalid(f"{what} {path[:80]!r} has a part longer than {MAX_PART_CHARS} characters")


def check_files(files: Sequence[types_pb2.FileRef], *, under: str | None = None) -> None:
    """FileRefs of one record: valid, distinct paths (under `under`, when given) and digests."""
    if not files:
        raise invalid("files is empty: record at least one uploaded file")
    if len(files) > MAX_FILES:
        raise invalid(f"{len(files)} files: at most {MAX_FILES} per record")
    seen: set[str] = set()
    for i, ref in enumerate(files):
        check_path(ref.path, f"files[{i}].path")
        check_digest(ref.digest, f"files[{i}].digest")
        if ref.size < 0:
            raise invalid(f"files[{i}].size is {ref.size}: sizes are 0 or more")
        if ref.path in seen:
            raise invalid(f"files[{i}].path {ref.path!r} appears twice")
        if under is not None and ref.path != under and not ref.path.startswith(under + "/"):
            raise invalid(f"files[{i}].path {ref.path!r} is neither the checkpoint {under!r} nor inside it")
        seen.add(ref.path)


def check_name(name: str) -> None:
    """A checkpoint's top-level name in GRIDLAB_CHECKPOINT_DIR: one path part."""
    if "/" in name:
        raise invalid(f"checkpoint name {name[:80]!r} must be one name (no '/'): its files go under it")
    if len(name) > MAX_NAME_CHARS:
        raise invalid(f"checkpoint name is {len(name)} characters long: at most {MAX_NAME_CHARS}")
    check_path(name, "checkpoint name")


# --- queries the engine and the servicer share ------------------------------------------------


def has_blob(store: Store, digest: str) -> bool:
    """Whether the store holds the whole blob (verified and in place)."""
    return store.one("SELECT 1 FROM blobs WHERE digest = ?", (digest,)) is not None


def is_bundle(store: Store, digest: str) -> bool:
    """Whether the store holds `digest` as a code bundle. A run may name only such a blob as its code: naming a
    checkpoint's digest would let its submitter read another user's checkpoint through their own run."""
    return (
        store.one(
            "SELECT 1 FROM blobs WHERE digest = ? AND purpose = ?",
            (digest, _PURPOSE_WORDS[artifacts_pb2.BLOB_PURPOSE_BUNDLE]),
        )
        is not None
    )


def blob_size(store: Store, digest: str) -> int | None:
    row = store.one("SELECT size FROM blobs WHERE digest = ?", (digest,))
    return None if row is None else int(row["size"])


def run_refers_to(store: Store, run: sqlite3.Row, digest: str) -> bool:
    """Whether `digest` is the run's code bundle, a file of one of its checkpoints, or an artifact."""
    if types_pb2.RunSpec.FromString(run["spec"]).code_digest == digest:
        return True
    if store.one(
        "SELECT 1 FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id "
        "WHERE c.run_id = ? AND f.digest = ? LIMIT 1",
        (run["id"], digest),
    ):
        return True
    return store.one("SELECT 1 FROM artifacts WHERE run_id = ? AND digest = ? LIMIT 1", (run["id"], digest)) is not None


def merge_checkpoints(
    rows: Iterable[sqlite3.Row], files: dict[int, list[types_pb2.FileRef]], nodes: Mapping[str, int]
) -> list[types_pb2.Checkpoint]:
    """The complete checkpoints among node records (`checkpoints` rows in id order), oldest first.

    Records of one attempt under one name are one checkpoint: each node's latest record of it counts (a
    rewritten `last.ckpt` keeps its newest), and the files are their union (a path two nodes both recorded
    comes from the lower node rank). Its step is node 0's (rank 0 writes the metrics file; other nodes
    report -1), else the highest reported. A single file is complete with one record. A folder (a sharded
    checkpoint: each node holds its ranks' shards) is complete once every one of the attempt's `nodes` has
    recorded it, each after every other node's previous record of that name (so all are of one save).
    """
    groups: dict[tuple[str, str], dict[int, list[sqlite3.Row]]] = {}
    for row in rows:
        groups.setdefault((row["attempt_id"], row["name"]), {}).setdefault(row["node_rank"], []).append(row)
    out = []
    for (attempt_id, name), per_node in groups.items():
        by_node = {node: records[-1] for node, records in per_node.items()}
        folder = any("/" in ref.path for r in by_node.values() for ref in files.get(r["id"], []))
        if folder:
            if len(by_node) < nodes.get(attempt_id, 1):
                continue
            previous = [records[-2]["id"] for records in per_node.values() if len(records) > 1]
            if previous and min(r["id"] for r in by_node.values()) < max(previous):
                continue  # one node's latest shards are of an older save than another's: not one checkpoint yet
        steps = [r["step"] for r in by_node.values()]
        step = by_node[0]["step"] if 0 in by_node and by_node[0]["step"] >= 0 else max(steps)
        merged: dict[str, types_pb2.FileRef] = {}
        for node in sorted(by_node):
            for ref in files.get(by_node[node]["id"], []):
                merged.setdefault(ref.path, ref)
        newest = max(by_node.values(), key=lambda r: (r["time"], r["id"]))
        out.append(
            types_pb2.Checkpoint(
                id=newest["id"],
                run_id=newest["run_id"],
                attempt_id=attempt_id,
                attempt_number=newest["attempt_number"],
                node_rank=min(by_node),
                name=name,
                step=step,
                files=[merged[p] for p in sorted(merged)],
                time=ts(newest["time"]),
            )
        )
    out.sort(key=lambda c: (c.time.ToNanoseconds(), c.id))
    return out


def run_checkpoints(store: Store, run_id: str) -> list[types_pb2.Checkpoint]:
    """The run's complete checkpoints, oldest first (see `merge_checkpoints`)."""
    rows = store.all("SELECT * FROM checkpoints WHERE run_id = ? ORDER BY id", (run_id,))
    nodes = {
        r["attempt_id"]: r["n"]
        for r in store.all(
            "SELECT attempt_id, COUNT(*) AS n FROM attempt_nodes WHERE attempt_id IN "
            "(SELECT DISTINCT attempt_id FROM checkpoints WHERE run_id = ?) GROUP BY attempt_id",
            (run_id,),
        )
    }
    files: dict[int, list[types_pb2.FileRef]] = {}
    for f in store.all(
        "SELECT f.* FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id "
        "WHERE c.run_id = ? ORDER BY f.checkpoint_id, f.path",
        (run_id,),
    ):
        files.setdefault(f["checkpoint_id"], []).append(
            types_pb2.FileRef(path=f["path"], digest=f["digest"], size=f["size"])
        )
    return merge_checkpoints(rows, files, nodes)


def checkpoint_order(checkpoint: types_pb2.Checkpoint) -> tuple[int, int, int]:
    """Newest last: by step (-1, unknown, first), then time, then id."""
    return (checkpoint.step, checkpoint.time.ToNanoseconds(), checkpoint.id)


def newest_checkpoint(store: Store, run_id: str) -> types_pb2.Checkpoint | None:
    """The checkpoint a new attempt of the run resumes from: its newest complete one by step, then time."""
    return max(run_checkpoints(store, run_id), key=checkpoint_order, default=None)


def run_artifacts(store: Store, run_id: str) -> list[types_pb2.Artifact]:
    out = []
    for row in store.all(
        "SELECT * FROM artifacts WHERE run_id = ? ORDER BY time, attempt_number, node_rank, path", (run_id,)
    ):
        out.append(
            types_pb2.Artifact(
                run_id=row["run_id"],
                attempt_id=row["attempt_id"],
                attempt_number=row["attempt_number"],
                node_rank=row["node_rank"],
                file=types_pb2.FileRef(path=row["path"], digest=row["digest"], size=row["size"]),
                time=ts(row["time"]),
            )
        )
    return out


# --- files --------------------------------------------------------------------------------------


def _open_partial(path: Path) -> io.FileIO:
    """Unbuffered, so a failed write fails at once, not at a later flush."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return io.FileIO(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+b")


class PartialBlob:
    """One upload's partial file, opened where the client resumes and hashed as bytes arrive.

    Blocking: call its methods from a worker thread. A lock orders them, so `close` after a
    cancelled call waits for a write still running in its thread instead of racing it.
    """

    def __init__(self, path: Path, digest: str, size: int, offset: int) -> None:
        self.path = path
        self.digest = digest
        self.size = size
        self.hash = hashlib.sha256()
        self._lock = threading.Lock()
        try:
            self.file = _open_partial(path)
        except OSError as exc:
            raise _disk_error(exc, "open the upload's partial file") from None
        have = os.fstat(self.file.fileno()).st_size
        if offset == 0:
            self.file.truncate(0)  # a fresh start drops whatever an earlier try left
        elif offset != have:
            self.file.close()
            raise out_of_range(f"header.offset is {offset} but the store holds {have} bytes: resume from {have}")
        while chunk := self.file.read(READ_CHUNK):
            self.hash.update(chunk)
        self.length = offset

    def write(self, data: bytes) -> None:
        with self._lock:
            if self.length + len(data) > self.size:
                raise invalid(f"more bytes than header.size ({self.size}): send exactly the blob's bytes")
            view = memoryview(data)
            try:
                while view:
                    view = view[self.file.write(view) or 0 :]
            except OSError as exc:
                self._truncate_back()
                raise _disk_error(exc, "write the upload") from None
            self.hash.update(data)
            self.length += len(data)

    def _truncate_back(self) -> None:
        """Back to the bytes known good, so a resume continues from them; else start over."""
        try:
            self.file.truncate(self.length)
            self.file.seek(self.length)
        except OSError:
            self.file.close()
            self.path.unlink(missing_ok=True)

    def finish(self, dest: Path) -> None:
        """Verify the whole blob, then rename it to `dest`, durably. DATA_LOSS drops the partial."""
        with self._lock:
            if self.length != self.size:
                raise precondition(
                    f"the upload ended after {self.length} of {self.size} bytes: "
                    f"send the rest from offset {self.length}"
                )
            got = f"sha256:{self.hash.hexdigest()}"
            if got != self.digest:
                self.file.close()
                self.path.unlink(missing_ok=True)
                raise data_loss(f"the bytes sent hash to {got}, not {self.digest}: nothing was stored; upload again")
            try:
                os.fsync(self.file.fileno())
                self.file.close()
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path, dest)
                _fsync_dir(dest.parent)
            except OSError as exc:
                self.file.close()
                self.path.unlink(missing_ok=True)
                raise _disk_error(exc, "store the blob") from None

    def close(self) -> None:
        with self._lock:
            self.file.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_chunks(path: Path, offset: int) -> Generator[bytes, None, None]:
    """A blob's bytes from `offset`, READ_CHUNK at a time (blocking)."""
    with open(path, "rb") as f:
        f.seek(offset)
        while data := f.read(READ_CHUNK):
            yield data


# --- the store --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Claim:
    """The one upload of a digest that may write its partial file now."""

    progress: float = dataclasses.field(default_factory=time.monotonic)
    superseded: bool = False
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.progress = time.monotonic()


@dataclasses.dataclass(frozen=True)
class UploadPlan:
    """What an accepted BlobHeader will write."""

    digest: str
    size: int
    offset: int
    purpose: str
    partial: Path
    dest: Path


class BlobStore:
    """The files of the store, and the checks and bookkeeping around them."""

    def __init__(self, store: Store, config: SchedulerConfig) -> None:
        self.store = store
        self.config = config
        root = config.artifact_dir or os.path.join(os.path.expanduser(config.state_dir), "artifacts")
        self.root = Path(root).expanduser()
        (self.root / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "partial").mkdir(parents=True, exist_ok=True)
        self._claims: dict[str, _Claim] = {}
        self.sweep_partials()

    def sweep_partials(self, max_age: float = PARTIAL_MAX_AGE) -> int:
        """Remove interrupted uploads nobody resumed for `max_age` seconds (at start: no upload is in flight
        yet). A client that comes back later starts that blob over. Returns how many were removed."""
        removed = 0
        cutoff = time.time() - max_age
        for path in (self.root / "partial").iterdir():
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                continue
        if removed:
            log.info("stale_partial_uploads_removed", count=removed)
        return removed

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    def partial_path(self, digest: str) -> Path:
        return self.root / "partial" / digest.removeprefix("sha256:")

    def stat(self, digest: str) -> tuple[bool, int]:
        """(complete, size): a complete blob's size, else the bytes of a partial upload (0 if none)."""
        check_digest(digest)
        size = blob_size(self.store, digest)
        if size is not None:
            return True, size
        try:
            return False, self.partial_path(digest).stat().st_size
        except FileNotFoundError:
            return False, 0

    def cap(self, purpose: int) -> int:
        return (
            self.config.bundle_max_bytes if purpose == artifacts_pb2.BLOB_PURPOSE_BUNDLE else self.config.blob_max_bytes
        )

    def plan_upload(self, header: artifacts_pb2.BlobHeader) -> UploadPlan:
        """Check a header's own fields, its cap and the free disk, before any byte is written."""
        check_digest(header.digest, "header.digest")
        if header.purpose not in _PURPOSE_WORDS:
            raise invalid(f"header.purpose {header.purpose} is not BUNDLE, CHECKPOINT or ARTIFACT")
        if header.size < 0:
            raise invalid(f"header.size is {header.size}: sizes are 0 or more")
        if not 0 <= header.offset <= header.size:
            raise out_of_range(f"header.offset {header.offset} is outside the blob (0 to {header.size})")
        word = _PURPOSE_WORDS[header.purpose]
        cap = self.cap(header.purpose)
        if header.size > cap:
            raise exhausted(f"the {word} is {header.size} bytes; the scheduler takes at most {cap} bytes per {word}")
        free = shutil.disk_usage(self.root).free
        if header.size - header.offset > free:
            raise exhausted(f"the scheduler's artifact disk has {free} bytes free: not enough for this {word}")
        return UploadPlan(
            header.digest,
            header.size,
            header.offset,
            word,
            self.partial_path(header.digest),
            self.blob_path(header.digest),
        )

    async def claim(self, digest: str) -> _Claim:
        """Wait until no other upload of `digest` is writing (one that stalled gives way)."""
        while (other := self._claims.get(digest)) is not None:
            if time.monotonic() - other.progress > STALL_SECONDS:
                other.superseded = True
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(other.done.wait(), timeout=1.0)
        claim = _Claim()
        self._claims[digest] = claim
        return claim

    def release(self, digest: str, claim: _Claim) -> None:
        if self._claims.get(digest) is claim:
            del self._claims[digest]
        claim.done.set()

    def commit(self, plan: UploadPlan, now: float) -> None:
        """The `blobs` row, written after the file is in place: from here the blob is complete."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO blobs (digest, size, purpose, created_at) VALUES (?, ?, ?, ?)",
                (plan.digest, plan.size, plan.purpose, now),
            )

    def open_download(self, digest: str, offset: int) -> tuple[Path, int]:
        """The file and size of a complete blob, checked for a read from `offset`."""
        check_digest(digest)
        size = blob_size(self.store, digest)
        if size is None:
            raise not_found(f"no blob {digest} in the store: upload it first")
        if not 0 <= offset <= size:
            raise out_of_range(f"offset {offset} is outside the blob (0 to {size})")
        path = self.blob_path(digest)
        if not path.is_file():
            raise ApiError(grpc.StatusCode.DATA_LOSS, f"blob {digest} is recorded but its file is missing")
        return path, size


# --- who may touch what -----------------------------------------------------------------------------


def may_upload(who: Principal, purpose: int) -> None:
    """Users bring code; agents bring checkpoints and artifacts."""
    if purpose not in _PURPOSE_WORDS:
        raise invalid(f"header.purpose {purpose} is not BUNDLE, CHECKPOINT or ARTIFACT")
    if who.role == AGENT:
        if purpose == artifacts_pb2.BLOB_PURPOSE_BUNDLE:
            raise denied("agents upload checkpoints and artifacts, not code bundles")
    elif purpose != artifacts_pb2.BLOB_PURPOSE_BUNDLE:
        raise denied("users upload code bundles only (purpose BUNDLE); checkpoints and artifacts come from agents")


def attempt_for_upload(store: Store, attempt_id: str, agent_name: str, now: float) -> sqlite3.Row:
    """The attempt an agent uploads a blob for: one with a node on that agent, live or ended less than
    ENDED_GRACE ago."""
    if not attempt_id or len(attempt_id) > 128:
        raise invalid("header.attempt_id must name the attempt the file belongs to (1 to 128 characters)")
    row = store.one("SELECT * FROM attempts WHERE id = ?", (attempt_id,))
    if row is None:
        raise aborted(f"attempt {attempt_id!r} is unknown")
    # (+agent_name: by the attempt's primary key, not the agent's index and its whole history)
    if not store.one("SELECT 1 FROM attempt_nodes WHERE attempt_id = ? AND +agent_name = ?", (attempt_id, agent_name)):
        raise aborted(f"attempt {attempt_id} has no node on agent {agent_name!r} (header.agent_name)")
    _check_recent(row, now)
    return row


def _check_recent(attempt: sqlite3.Row, now: float) -> None:
    if AttemptState(attempt["state"]).live:
        return
    ended = attempt["finished_at"] or 0.0
    if now - ended > ENDED_GRACE:
        raise aborted(
            f"attempt {attempt['id']} ended ({attempt['state']}) over {ENDED_GRACE:g}s ago: it takes no files now"
        )


def attempt_node(store: Store, agent_name: str, attempt_id: str, node_rank: int, now: float) -> sqlite3.Row:
    """The attempt of one of `agent_name`'s nodes, for recording its files (ABORTED if not its own)."""
    if not attempt_id or len(attempt_id) > 128:
        raise invalid("attempt_id must be 1 to 128 characters")
    row = store.one(
        "SELECT a.*, n.agent_name FROM attempts a JOIN attempt_nodes n ON n.attempt_id = a.id "
        "WHERE a.id = ? AND n.node_rank = ?",
        (attempt_id, node_rank),
    )
    if row is None:
        raise aborted(f"attempt {attempt_id!r} has no node {node_rank}")
    if row["agent_name"] != agent_name:
        raise aborted(f"node {node_rank} of attempt {attempt_id} is not on agent {agent_name!r}")
    _check_recent(row, now)
    return row


def check_uploaded(store: Store, files: Sequence[types_pb2.FileRef]) -> None:
    """Every file's blob is complete in the store, with the size the record claims."""
    for ref in files:
        size = blob_size(store, ref.digest)
        if size is None:
            raise precondition(f"{ref.path}: blob {ref.digest} is not in the store: upload it first")
        if size != ref.size:
            raise invalid(f"{ref.path}: size {ref.size} but blob {ref.digest} has {size} bytes")


def may_download(store: Store, who: Principal, run: sqlite3.Row | None, digest: str) -> None:
    """Agents read any blob; people only one that `run` (which they may see) refers to."""
    if who.role == AGENT:
        return
    if run is None:
        raise invalid("run_id is empty: name the run whose blob this is")
    if not run_refers_to(store, run, digest):
        raise not_found(f"run {run['id']} has no blob {digest}")


# --- records ------------------------------------------------------------------------------------------


def record_checkpoint(store: Store, request: artifacts_pb2.RecordCheckpointRequest, now: float) -> int:
    """Record a node's complete checkpoint; the same record sent again returns the same id."""
    check_name(request.name)
    if request.step < -1:
        raise invalid(f"step is {request.step}: the run's step, or -1 when unknown")
    check_files(request.files, under=request.name)
    attempt = attempt_node(store, request.agent_name, request.attempt_id, request.node_rank, now)
    check_uploaded(store, request.files)
    wanted = sorted((f.path, f.digest, f.size) for f in request.files)
    last = store.one(
        "SELECT id, step FROM checkpoints WHERE attempt_id = ? AND node_rank = ? AND name = ? ORDER BY id DESC LIMIT 1",
        (request.attempt_id, request.node_rank, request.name),
    )
    if last is not None and last["step"] == request.step:
        have = store.all(
            "SELECT path, digest, size FROM checkpoint_files WHERE checkpoint_id = ? ORDER BY path", (last["id"],)
        )
        if [tuple(r) for r in have] == wanted:
            return int(last["id"])  # a retry of a record whose reply was lost
    with store.transaction() as conn:
        cur = conn.execute(
            "INSERT INTO checkpoints (run_id, attempt_id, attempt_number, node_rank, name, step, time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (attempt["run_id"], attempt["id"], attempt["number"], request.node_rank, request.name, request.step, now),
        )
        checkpoint_id = int(cur.lastrowid or 0)
        conn.executemany(
            "INSERT INTO checkpoint_files (checkpoint_id, path, digest, size) VALUES (?, ?, ?, ?)",
            [(checkpoint_id, path, digest, size) for path, digest, size in wanted],
        )
    return checkpoint_id


def record_artifacts(store: Store, request: artifacts_pb2.RecordArtifactsRequest, now: float) -> None:
    """Record a node's artifact files; a path recorded again for the same node is replaced."""
    check_files(request.files)
    attempt = attempt_node(store, request.agent_name, request.attempt_id, request.node_rank, now)
    check_uploaded(store, request.files)
    with store.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO artifacts "
            "(run_id, attempt_id, attempt_number, node_rank, path, digest, size, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (attempt["run_id"], attempt["id"], attempt["number"], request.node_rank, f.path, f.digest, f.size, now)
                for f in request.files
            ],
        )
