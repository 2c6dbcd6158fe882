"""A run's metric records as the agent forwards them: one JSON object per GRIDLAB_METRICS_FILE line, shipped as a
log line on the METRICS stream. Read the same way by the client (`Client.metrics`) and the dashboard."""

from __future__ import annotations

import json
from typing import Any

from gridlab.v1 import types_pb2


def metric_record(line: types_pb2.LogLine) -> dict[str, Any] | None:
    """The record a METRICS line holds, with the attempt it came from; None for any other line, or one that is
    not a JSON object (the user's file: a bad line is skipped, not fatal)."""
    if line.stream != types_pb2.LOG_STREAM_METRICS:
        return None
    try:
        record = json.loads(line.text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record.setdefault("attempt", line.attempt_number)
    return record
