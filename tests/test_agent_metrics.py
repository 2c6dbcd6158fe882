"""The agent's reading of GRIDLAB_METRICS_FILE: progress, and the records it forwards."""

from __future__ import annotations

import json
from pathlib import Path

from gridlab.agent.metrics import MAX_RECORD_BYTES, MetricsTail


def test_records_are_taken_once_in_order_and_only_whole_json_objects(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path, clock=lambda: 100.0)
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n[1, 2]\n{"step": 2, "loss": 0.4}\n{"step": 3, "lo')
    tail.poll()
    assert [json.loads(r) for r in tail.take_records()] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    assert tail.take_records() == []
    assert tail.last_step == 2
    with path.open("a") as f:  # the half-written line is finished later
        f.write('ss": 0.3}\n' + json.dumps({"blob": "x" * MAX_RECORD_BYTES}) + "\n")
    tail.poll()
    assert [json.loads(r) for r in tail.take_records()] == [{"step": 3, "loss": 0.3}]  # the huge one is not sent
    assert tail.last_step == 3


def test_a_replaced_or_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    path.write_text('{"step": 1}\n{"step": 2}\n')
    tail.poll()
    assert len(tail.take_records()) == 2
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"step": 7, "rewritten": true}\n' * 5)  # longer than before
    replacement.replace(path)  # a new inode: even though it is not shorter, it is read from the start
    tail.poll()
    assert len(tail.take_records()) == 5


def test_poll_says_when_there_is_more_than_one_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    tail.MAX_READ = 64  # type: ignore[misc]
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(50)))
    reads = 1
    while tail.poll():
        reads += 1
    assert reads > 5
    assert [json.loads(r)["step"] for r in tail.take_records()] == list(range(50))
