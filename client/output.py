"""How `schedctl` shows things: tables, human times and sizes, and JSON.

Kept apart from the commands so that the formats (which scripts and eyes depend on) are
tested on their own and every command renders the same way: tables with columns as wide
as their content, `-o json` as exactly one JSON document on stdout (`logs -f -o json`, a stream,
prints JSON Lines: one document per line).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gridlab.common import timeutil

REASON_WIDTH = 60  # long reasons are cut in tables (not in -o wide or json)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, no_headers: bool = False) -> str:
    """Left-aligned columns, each as wide as its widest cell, two spaces apart.

    The last column is not padded, so no line ends in spaces. With `no_headers` the
    header row is left out (for `cut`/`awk`), and widths follow the data alone.

    Example:
        >>> print(format_table(["ID", "STATE"], [["run-1", "RUNNING"]]))
        ID     STATE
        run-1  RUNNING
    """
    body = [[str(cell) for cell in row] for row in rows]
    table = body if no_headers else [[str(cell) for cell in headers], *body]
    if not table:
        return ""
    columns = max(len(row) for row in table)
    widths = [max((len(row[i]) for row in table if i < len(row)), default=0) for i in range(columns)]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """A length of time as people say it: "45s", "1m03s", "2h05m", "3d04h"."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def human_ago(seconds: float) -> str:
    """How long ago, to one unit: "just now", "12s ago", "5m ago", "3h ago", "2d ago"."""
    total = int(seconds)
    if total < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if total >= size:
            return f"{total // size}{unit} ago"
    return f"{total}s ago"


def human_bytes(count: float) -> str:
    """Bytes in binary units: "512B", "1.5KiB", "251.4GiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def seconds(stamp: Timestamp) -> float | None:
    """A Timestamp as epoch seconds, or None when it is unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return float(timeutil.from_ts(stamp))


def ago(stamp: Timestamp, now: float) -> str:
    when = seconds(stamp)
    return "-" if when is None else human_ago(now - when)


def elapsed(start: Timestamp, end: Timestamp, now: float) -> str:
    """How long something ran: from start to end, or to now while it still runs."""
    began = seconds(start)
    if began is None:
        return "-"
    ended = seconds(end)
    return human_duration((now if ended is None else ended) - began)


def when(stamp: Timestamp, now: float) -> str:
    """Local wall-clock time with how long ago: "2025-01-02 10:00:00 (5m ago)"."""
    at = seconds(stamp)
    if at is None:
        return "-"
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{local} ({human_ago(now - at)})"


def cut(text: str, width: int = REASON_WIDTH) -> str:
    """One line of at most `width` characters, whatever the server sent."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data with the .proto field names (what scripts read)."""
    return MessageToDict(message, preserving_proto_field_name=True)


def jsonable(value: Any) -> Any:
    """Messages (also inside lists and dicts) as plain data, so json.dumps takes anything a command shows.

    NaN and infinities become None (JSON null): JSON has no such numbers, and `NaN`/`Infinity` break strict
    parsers (jq, JavaScript). Messages follow protobuf's JSON mapping, which writes them as strings.
    """
    if isinstance(value, Message):
        return to_dict(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """`value` as strict JSON text: never NaN or Infinity (see `jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, sort_keys=False, allow_nan=False)


def print_json(value: Any, out: TextIO) -> None:
    """`value` as one indented JSON document (the only thing a `-o json` command prints on stdout)."""
    print(dumps(value, indent=2), file=out, flush=True)
