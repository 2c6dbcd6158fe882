"""SQLite rows to API messages."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

from gridlab.common.timeutil import ts
from gridlab.v1 import types_pb2

from .store import Store

PAGE_BYTES = 3 * 1024 * 1024  # what one listing reply carries at most (one item always): replies are capped at 4 MiB


def _set_time(msg: object, field: str, value: float | None) -> None:
    if value is not None:
        getattr(msg, field).CopyFrom(ts(value))


def attempt_pb(row: sqlite3.Row, nodes: list[sqlite3.Row]) -> types_pb2.Attempt:
    out = types_pb2.Attempt(
        id=row["id"],
        run_id=row["run_id"],
        number=row["number"],
        state=f"ATTEMPT_STATE_{row['state']}",
        exit_code=row["exit_code"] or 0,
        reason=row["reason"] or "",
    )
    for node in nodes:
        out.nodes.add(
            node_rank=node["node_rank"],
            agent_name=node["agent_name"],
            gpu_uuids=json.loads(node["gpu_uuids"]),
            cpus=node["cpus"],
            memory_bytes=node["memory_bytes"] or 0,
        )
    _set_time(out, "created_at", row["created_at"])
    _set_time(out, "started_at", row["started_at"])
    _set_time(out, "finished_at", row["finished_at"])
    return out


def run_pb(store: Store, row: sqlite3.Row, *, with_attempts: bool = True) -> types_pb2.Run:
    spec = types_pb2.RunSpec.FromString(row["spec"])
    out = types_pb2.Run(
        id=row["id"],
        spec=spec,
        state=f"RUN_STATE_{row['state']}",
        user=row["user"],
        team=row["team"] or "",
        pending_reason=row["pending_reason"] or "",
        exit_code=row["exit_code"] or 0,
        message=row["message"] or "",
        retries_used=row["retries_used"] or 0,
        interruptions=row["interruptions"] or 0,
        idempotency_key=row["idempotency_key"] or "",
    )
    _set_time(out, "created_at", row["created_at"])
    _set_time(out, "started_at", row["started_at"])
    _set_time(out, "finished_at", row["finished_at"])
    if with_attempts:
        attempts = store.all("SELECT * FROM attempts WHERE run_id = ? ORDER BY number", (row["id"],))
        nodes = store.all(
            "SELECT n.* FROM attempt_nodes n JOIN attempts a ON a.id = n.attempt_id "
            "WHERE a.run_id = ? ORDER BY n.node_rank",
            (row["id"],),
        )
        for attempt in attempts:
            mine = [n for n in nodes if n["attempt_id"] == attempt["id"]]
            out.attempts.append(attempt_pb(attempt, mine))
    return out


def event_pb(row: sqlite3.Row) -> types_pb2.RunEvent:
    out = types_pb2.RunEvent(
        id=row["id"],
        run_id=row["run_id"],
        attempt_id=row["attempt_id"] or "",
        kind=row["kind"],
        state=f"RUN_STATE_{row['state']}",
        message=row["message"] or "",
    )
    _set_time(out, "time", row["time"])
    return out


def log_pb(row: sqlite3.Row, text: str | None = None, skip: int = 0, count: int | None = None) -> types_pb2.LogLine:
    """A log_batches row as one LogLine (a batch when it holds more than one line): its lines in
    `text` (default: the row's inline text), less the first `skip` of them; `count` of them (default:
    all the rest)."""
    if count is None:
        count = row["count"] - skip
    out = types_pb2.LogLine(
        attempt_id=row["attempt_id"],
        attempt_number=row["attempt_number"],
        rank=row["rank"],
        seq=row["first_seq"] + skip,
        stream=row["stream"],
        text=row["text"] if text is None else text,
        cursor=row["first_cursor"] + skip,
        count=count if count > 1 else 0,
    )
    _set_time(out, "time", row["time"])
    return out


def single_lines(batch: types_pb2.LogLine) -> Iterator[types_pb2.LogLine]:
    """A batch as one LogLine per line, for clients that do not take batches: made one at a time, as
    they are used (a batch may hold some 100,000 lines)."""
    if batch.count <= 1:
        yield batch
        return
    template = types_pb2.LogLine()
    template.CopyFrom(batch)
    template.count = 0
    template.text = ""
    text = batch.text
    start = i = 0
    while True:
        end = text.find("\n", start)
        line = types_pb2.LogLine()
        line.CopyFrom(template)
        line.seq = batch.seq + i
        line.cursor = batch.cursor + i
        line.text = text[start:] if end < 0 else text[start:end]
        yield line
        if end < 0:
            return
        start, i = end + 1, i + 1
