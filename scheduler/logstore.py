"""Run logs in files, one per attempt and rank, indexed by one SQLite row per batch of lines.

    PushLogs batches --append()--> <state>/logs/<run>/<attempt>/rank-<r>.log    the lines, each ended by "\\n"
                                   log_batches row: cursors first..last, seq, count, file_offset, length, time
    StreamLogs       <--read()---- the rows after a cursor, their bytes read back, as batches

Cursors number every line the scheduler stores, in arrival order, from where the old one-row-per-line
table stopped (so a cursor a client already holds stays valid). A batch holds the cursors
first_cursor..last_cursor, so a cursor names a batch and a line within it, and a resume in the middle
of a batch gets the rest of it. A rank's lines are stored once each and in seq order: `log_files`
remembers the next seq each file expects, a batch that overlaps stored lines keeps only its new tail,
and one wholly stored is counted as duplicates. Lines of ranks below 0 (the agent's notes, metrics) are
numbered by each node's agent separately, so they are kept per (attempt, rank, agent).

Durability: a batch's bytes are written before the row that points at them is committed, and neither
is fsynced (a kill -9 of the scheduler loses nothing acknowledged; a power loss may lose the last
lines). Bytes past a file's committed size (written, then a crash before the commit) are cut off
before the file is next appended to. Cursors are handed out from blocks reserved durably (the
`meta` row log_cursor_reserved, fsynced about once per CURSOR_BLOCK lines), so a power loss that
undoes index rows never makes the scheduler number new lines with cursors a client already holds.

Damage: rows whose bytes are gone (a deleted or truncated file) are skipped, one warning per file: the
missing byte range of each such file is remembered (a bounded number of them), so their rows cost
neither a system call nor a warning each. A line longer than MAX_LINE_CHARS is cut when stored, and
read() cuts what it returns to about `max_bytes`, so every StreamLogs message stays far below 4 MiB.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import re
import sqlite3
from pathlib import Path

import grpc
import structlog

from gridlab.v1 import types_pb2

from .convert import log_pb
from .errors import ApiError, invalid
from .store import Store

log = structlog.get_logger("gridlab.scheduler.logstore")

MAX_ROW_CHARS = 256 * 1024  # a bigger batch is stored as several rows, so one row never nears 4 MiB
MAX_READ_BYTES = 1024 * 1024  # what read() returns at most (and at least one row): one StreamLogs message
MAX_READ_ROWS = 512
MAX_OPEN_FILES = 64
MAX_CACHED_FILES = 4096
MAX_UNREADABLE_FILES = 1024  # damaged files remembered (least recently seen forgotten first)
MAX_LINE_CHARS = 64 * 1024  # the agent's line limit (agent/logship.py MAX_LINE_BYTES): longer lines are cut
MAX_SEQ = 2**62  # highest seq a line may have: far beyond any run, far below SQLite's 2**63 - 1
CURSOR_BLOCK = 1 << 20  # cursors reserved durably at a time
CURSOR_KEY = "log_cursor_reserved"  # meta row: every cursor handed out is below its value
SPECIAL_RANKS = {-1: "agent", -2: "metrics"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class Batch:
    """Consecutive lines of one rank and stream, as push_logs hands them over."""

    run_id: str
    attempt_id: str
    attempt_number: int
    rank: int
    source: str  # the pushing agent, for a rank below 0 (each node numbers those lines itself); else ""
    stream: int
    first_seq: int
    count: int
    text: str  # the lines joined by "\n"
    time: float


@dataclasses.dataclass
class _File:
    id: int
    path: str  # under the logs folder; "" until first written
    size: int  # bytes committed
    next_seq: int
    trimmed: bool = False  # cut to `size` since this process opened it


def _safe(name: str) -> str:
    """`name` as one path component: itself when plainly safe, else a digest of it."""
    if _SAFE_NAME.match(name) and ".." not in name:
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:24]


def _cut_long_lines(text: str) -> str:
    """`text` (lines joined by "\\n") with each line longer than MAX_LINE_CHARS cut to that, and marked.
    One find per MAX_LINE_CHARS characters when no line is too long (the agent's lines never are)."""
    pos, end, long = 0, len(text), False
    while end - pos > MAX_LINE_CHARS:
        nl = text.find("\n", pos, pos + MAX_LINE_CHARS + 1)
        if nl < 0:
            long = True
            break
        pos = nl + 1
    if not long:
        return text
    return "\n".join(
        line if len(line) <= MAX_LINE_CHARS else f"{line[:MAX_LINE_CHARS]} [... {len(line) - MAX_LINE_CHARS} more cut]"
        for line in text.split("\n")
    )


def _fit(text: str, count: int, budget: int) -> tuple[str, int]:
    """The first of `count` lines (joined by "\\n") that fit in `budget` bytes of UTF-8, and how many:
    at least one line, itself cut to the budget when longer (a line stored before lines were cut)."""
    data = text.encode()
    if len(data) <= budget:
        return text, count
    cut = data.rfind(b"\n", 0, budget + 1)
    if cut >= 0:
        return data[:cut].decode(), data.count(b"\n", 0, cut) + 1
    first = data[: max(0, budget - 64)].decode(errors="ignore")
    return f"{first} [... cut: the line is longer than one message]", 1


def _pieces(text: str, count: int) -> list[tuple[str, int]]:
    """`count` lines joined by "\\n" in pieces of about MAX_ROW_CHARS at most, cut between lines."""
    if len(text) <= MAX_ROW_CHARS or count <= 1:
        return [(text, count)]
    out: list[tuple[str, int]] = []
    start, left = 0, count
    while len(text) - start > MAX_ROW_CHARS and left > 1:
        cut = text.rfind("\n", start, start + MAX_ROW_CHARS)
        if cut < 0:  # one line longer than a piece: cut after it
            cut = text.find("\n", start + MAX_ROW_CHARS)
            if cut < 0:
                break
        n = text.count("\n", start, cut) + 1
        out.append((text[start:cut], n))
        start, left = cut + 1, left - n
    out.append((text[start:], left))
    return out


class LogStore:
    """The log files and their index. Used from the event loop's thread only, like the Store."""

    def __init__(self, store: Store, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self._files: collections.OrderedDict[tuple[str, int, str], _File] = collections.OrderedDict()
        self._fds: collections.OrderedDict[int, int] = collections.OrderedDict()  # file id -> fd, LRU
        # Damaged files, warned about once each: file id -> the byte range [lo, hi) known gone (empty when
        # only some rows did not match what the index says). LRU, at most MAX_UNREADABLE_FILES.
        self._unreadable: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        row = store.one("SELECT COALESCE(MAX(last_cursor), 0) AS last FROM log_batches")
        reserved = store.one("SELECT value FROM meta WHERE key = ?", (CURSOR_KEY,))
        # Every cursor handed out (even in index rows a power loss undid) is below _reserved.
        self._reserved: int = reserved["value"] if reserved is not None else 0
        self._next_cursor: int = max(self._reserved, (row["last"] if row is not None else 0) + 1)

    # -- writing ---------------------------------------------------------------------

    def append(self, batches: list[Batch]) -> tuple[int, int]:
        """Store batches (each rank's lines once, in seq order) in one transaction. Returns (lines
        stored, lines that were stored already). INVALID_ARGUMENT for seqs out of range; UNAVAILABLE
        when the files cannot be written: the agent keeps the lines and retries. Lines longer than
        MAX_LINE_CHARS are cut."""
        for b in batches:
            if not (b.first_seq >= 1 and b.count >= 1 and b.first_seq + b.count - 1 <= MAX_SEQ):
                raise invalid(f"log lines seq {b.first_seq} .. {b.first_seq + b.count - 1}: seqs go from 1 to 2**62")
        accepted = duplicates = 0
        cursor = self._next_cursor
        touched: dict[tuple[str, int, str], _File] = {}
        changed: set[tuple[str, int, str]] = set()
        rows: list[tuple[object, ...]] = []
        try:
            for b in batches:
                key = (b.attempt_id, b.rank, b.source)
                f = touched.get(key)
                if f is None:  # a copy: the cache changes only once the rows are committed
                    f = touched[key] = dataclasses.replace(self._file(key, b.run_id))
                text, seq, count = b.text, b.first_seq, b.count
                skip = f.next_seq - seq
                if skip >= count:
                    duplicates += count
                    continue
                if skip > 0:  # resent after a lost acknowledgement, with newer lines behind: the new tail
                    text = text.split("\n", skip)[skip]
                    seq, count, duplicates = seq + skip, count - skip, duplicates + skip
                text = _cut_long_lines(text)
                fd = self._writable(f, b)
                for piece, n in _pieces(text, count):
                    data = piece.encode() + b"\n"
                    os.pwrite(fd, data, f.size)
                    rows.append(
                        (cursor, cursor + n - 1, b.run_id, b.attempt_id, b.attempt_number, b.rank, b.stream)
                        + (seq, n, f.id, f.size, len(data), b.time)
                    )
                    cursor, seq, f.size = cursor + n, seq + n, f.size + len(data)
                f.next_seq = seq
                accepted += count
                changed.add(key)
        except OSError as exc:
            log.error("log_write_failed", error=str(exc), folder=str(self.folder))
            raise ApiError(grpc.StatusCode.UNAVAILABLE, f"the scheduler cannot write logs now: {exc}") from exc
        if not rows:
            return 0, duplicates
        if cursor > self._reserved:  # before any of these cursors can be seen
            self._reserve(cursor + CURSOR_BLOCK)
        with self.store.transaction(durable=False) as conn:
            conn.executemany(
                "INSERT INTO log_batches (first_cursor, last_cursor, run_id, attempt_id, attempt_number, rank, "
                "stream, first_seq, count, file_id, file_offset, file_length, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.executemany(
                "UPDATE log_files SET path = ?, size = ?, next_seq = ? WHERE id = ?",
                [(f.path, f.size, f.next_seq, f.id) for key, f in touched.items() if key in changed],
            )
        self._next_cursor = cursor
        for key in changed:
            self._remember(key, touched[key])
        return accepted, duplicates

    def _reserve(self, upto: int) -> None:
        """Make cursors below `upto` ours, durably (an fsync, once per CURSOR_BLOCK lines): after a power
        loss the next cursor starts there, past any a client may hold, even if index rows were lost."""
        with self.store.transaction() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (CURSOR_KEY, upto),
            )
        self._reserved = upto

    def _file(self, key: tuple[str, int, str], run_id: str) -> _File:
        """The state of (attempt, rank, source)'s file; its row is made on first use."""
        f = self._files.get(key)
        if f is not None:
            self._files.move_to_end(key)
            return f
        row = self.store.one(
            "SELECT id, path, size, next_seq FROM log_files WHERE attempt_id = ? AND rank = ? AND source = ?", key
        )
        if row is not None:
            f = _File(row["id"], row["path"], row["size"], row["next_seq"])
        else:
            attempt_id, rank, source = key
            next_seq = 1
            if source:  # lines stored before sources were kept (a migrated database): the one agent's
                old = self.store.one(
                    "SELECT f.next_seq, (SELECT COUNT(*) FROM attempt_nodes n WHERE n.attempt_id = f.attempt_id) "
                    "AS nodes FROM log_files f WHERE f.attempt_id = ? AND f.rank = ? AND f.source = ''",
                    (attempt_id, rank),
                )
                # A gang's nodes each numbered their own from 1, and the old table kept one line per seq:
                # another node's highest seq says nothing of this one's, which start from 1 again.
                if old is not None and old["nodes"] <= 1:
                    next_seq = old["next_seq"]
            new = self.store.conn.execute(
                "INSERT INTO log_files (run_id, attempt_id, rank, source, next_seq) VALUES (?, ?, ?, ?, ?)",
                (run_id, attempt_id, rank, source, next_seq),
            )
            f = _File(int(new.lastrowid or 0), "", 0, next_seq)
        self._remember(key, f)
        return f

    def _remember(self, key: tuple[str, int, str], f: _File) -> None:
        self._files[key] = f
        self._files.move_to_end(key)
        while len(self._files) > MAX_CACHED_FILES:
            self._files.popitem(last=False)

    def _writable(self, f: _File, b: Batch) -> int:
        """The file's descriptor, the file made on first use and cut to its committed size."""
        if not f.path:
            if b.rank >= 0:
                name = f"rank-{b.rank}.log"
            else:
                name = f"{SPECIAL_RANKS.get(b.rank, f'rank{b.rank}')}-{_safe(b.source or 'none')}.log"
            f.path = f"{_safe(b.run_id)}/{_safe(b.attempt_id)}/{name}"
        fd = self._fd(f.id, f.path, create=True)
        if not f.trimmed:
            os.ftruncate(fd, f.size)
            f.trimmed = True
        return fd

    def _fd(self, file_id: int, path: str, *, create: bool) -> int:
        fd = self._fds.get(file_id)
        if fd is not None:
            self._fds.move_to_end(file_id)
            return fd
        full = self.folder / path
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            full.parent.mkdir(parents=True, exist_ok=True)
            flags |= os.O_CREAT
        fd = os.open(full, flags, 0o640)
        self._fds[file_id] = fd
        while len(self._fds) > MAX_OPEN_FILES:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    # -- reading ---------------------------------------------------------------------

    def read(
        self,
        run_id: str,
        after: int,
        *,
        attempt_number: int = 0,
        rank: int | None = None,
        max_bytes: int = MAX_READ_BYTES,
    ) -> tuple[list[types_pb2.LogLine], int]:
        """A run's lines after cursor `after`, oldest first, as batches (LogLine.count), at most about
        `max_bytes` of them (a row bigger than that is cut between its lines); and the cursor they reach
        (past rows that could not be read too), to read on from. Filters: an attempt number (0: all)
        and a rank."""
        where = ["b.run_id = ?", "b.last_cursor > ?"]
        params: list[object] = [run_id, after]
        if attempt_number:
            where.append("b.attempt_number = ?")
            params.append(attempt_number)
        if rank is not None:
            where.append("b.rank = ?")
            params.append(rank)
        rows = self.store.all(
            f"SELECT b.*, f.path FROM log_batches b LEFT JOIN log_files f ON f.id = b.file_id "
            f"WHERE {' AND '.join(where)} ORDER BY b.last_cursor LIMIT {MAX_READ_ROWS}",
            params,
        )
        out: list[types_pb2.LogLine] = []
        nbytes = 0
        upto = after
        for row in rows:
            if row["file_id"] is not None and self._gone(row):  # a damaged file's, already warned about
                upto = row["last_cursor"]
                continue
            size = row["file_length"] if row["file_id"] is not None else len((row["text"] or "").encode())
            if out and nbytes + size > max_bytes:
                break
            text = (row["text"] or "") if row["file_id"] is None else self._read_text(row)
            if text is None:
                upto = row["last_cursor"]
                continue
            skip = max(0, after - row["first_cursor"] + 1)  # resuming inside this batch
            if skip:
                text = text.split("\n", skip)[skip]
            text, count = _fit(text, row["count"] - skip, max_bytes - nbytes)
            out.append(log_pb(row, text, skip, count))
            upto = row["first_cursor"] + skip + count - 1
            nbytes += size
            if upto < row["last_cursor"]:  # cut: the rest of the row comes next time
                break
        return out, upto

    def _gone(self, row: sqlite3.Row) -> bool:
        """Whether the row's bytes lie in its file's range known gone."""
        gone = self._unreadable.get(row["file_id"])
        return gone is not None and row["file_offset"] < gone[1] and row["file_offset"] + row["file_length"] > gone[0]

    def _read_text(self, row: sqlite3.Row) -> str | None:
        """The row's lines from its file, or None (with a warning, the first time for this file)."""
        try:
            fd = self._fd(row["file_id"], row["path"], create=False)
        except FileNotFoundError as exc:  # deleted: all of it is gone
            self._damaged(row, 0, str(exc))
            return None
        except OSError as exc:
            self._damaged(row, None, str(exc))
            return None
        try:
            data = os.pread(fd, row["file_length"], row["file_offset"])
        except OSError as exc:
            self._damaged(row, None, str(exc))
            return None
        if len(data) < row["file_length"]:  # truncated: what was past its end is gone
            self._damaged(row, row["file_offset"] + len(data), "the file is shorter than its index says")
            return None
        if data.count(b"\n") != row["count"]:
            self._damaged(row, None, "the file does not hold what its index says")
            return None
        return data[:-1].decode("utf-8", errors="replace")

    def _damaged(self, row: sqlite3.Row, gone_from: int | None, why: str) -> None:
        """Remember a damaged file: from `gone_from` (when known) to its committed size, its bytes are
        gone, and those rows are skipped from now on. One warning per file."""
        file_id = row["file_id"]
        known = self._unreadable.get(file_id)
        if gone_from is not None:
            size = self.store.one("SELECT size FROM log_files WHERE id = ?", (file_id,))
            end = size["size"] if size is not None else row["file_offset"] + row["file_length"]
            self._unreadable[file_id] = (gone_from, max(end, row["file_offset"] + row["file_length"]))
        elif known is None:
            self._unreadable[file_id] = (0, 0)
        self._unreadable.move_to_end(file_id)
        while len(self._unreadable) > MAX_UNREADABLE_FILES:
            self._unreadable.popitem(last=False)
        if known is None:
            log.warning("log_file_unreadable", path=row["path"], run_id=row["run_id"], why=why)

    def close(self) -> None:
        """Close the files, and give back the cursors reserved but not used (so a clean restart goes on
        from the next cursor, not from the end of the block). The store may be used again after it."""
        if self._reserved > self._next_cursor:
            with contextlib.suppress(sqlite3.Error):  # (not giving them back only leaves a gap)
                self._reserve(self._next_cursor)
        while self._fds:
            _, fd = self._fds.popitem()
            os.close(fd)
