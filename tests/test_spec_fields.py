"""Run spec fields end to end from the user's side: what `build_spec` makes of each argument, what
`schedctl submit` parses, and the scheduler's checks (`validate.normalize`) with their messages."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gridlab.client import cli
from gridlab.client.sdk import build_spec, parse_duration, parse_size
from gridlab.scheduler.validate import SpecError, normalize
from gridlab.v1 import types_pb2

GIB = 1 << 30

# --- sizes and durations -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0),
        (1024, 1024),
        (1.5e9, 1_500_000_000),
        ("123", 123),
        ("40GB", 40 * 10**9),
        ("40gb", 40 * 10**9),
        ("40 GB", 40 * 10**9),
        ("40GiB", 40 * GIB),
        ("40G", 40 * GIB),
        ("1.5GiB", 3 * GIB // 2),
        ("512M", 512 << 20),
        ("512MB", 512 * 10**6),
        ("2T", 2 << 40),
        ("2TB", 2 * 10**12),
        ("64k", 64 << 10),
        ("100B", 100),
    ],
)
def test_sizes(text: int | float | str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "40XB", "-5GB", "4 0GB", "1e9", "lots", "40 G B"])
def test_bad_sizes_name_the_argument(text: str) -> None:
    with pytest.raises(ValueError, match=r"^memory must be a size like '40GB'"):
        parse_size(text, "memory")


def test_size_types_and_signs() -> None:
    with pytest.raises(ValueError, match="min_gpu_memory must be 0 or more bytes"):
        parse_size(-1, "min_gpu_memory")
    with pytest.raises(ValueError, match="memory must be 0 or more bytes"):
        parse_size(float("nan"), "memory")
    with pytest.raises(TypeError, match="memory must be bytes"):
        parse_size(True, "memory")
    with pytest.raises(TypeError, match="memory must be bytes"):
        parse_size([1], "memory")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too large"):
        parse_size("99999999TB", "memory")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        (timedelta(hours=2), 7200.0),
        ("3600", 3600.0),
        ("2.5", 2.5),
        ("45s", 45.0),
        ("90m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5h", 5400.0),
        ("2H", 7200.0),
        ("1:30", 90.0),  # MM:SS
        ("90:00", 5400.0),
        ("01:30:00", 5400.0),  # HH:MM:SS
        ("36:00:00", 129600.0),
        ("1-12", 129600.0),  # D-HH
        ("1-12:30", 131400.0),  # D-HH:MM
        ("2-00:00:10", 172810.0),  # D-HH:MM:SS
    ],
)
def test_durations(text: float | timedelta | str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "1:60", "1:61:00", "1-24:00", "1-", "1h30", "1e3", "inf", "1:2:3:4"])
def test_bad_durations_name_the_argument_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"time_limit must be seconds \('3600'\).*'HH:MM:SS'"):
        parse_duration(text, "time_limit")


def test_negative_durations() -> None:
    for value in ("-5", "-1:00:00", -1, timedelta(seconds=-1)):
        with pytest.raises(ValueError, match="time_limit must be a duration of 0 seconds or more"):
            parse_duration(value, "time_limit")
    with pytest.raises(TypeError, match="time_limit must be seconds"):
        parse_duration(None, "time_limit")  # type: ignore[arg-type]


# --- build_spec ----------------------------------------------------------------------------


def test_build_spec_sets_every_field() -> None:
    spec = build_spec(
        ["python", "train.py"],
        gpus=4,
        nodes=2,
        cpus=16,
        gpu_type=["A100", " H100 "],
        min_gpu_memory="40GB",
        memory="128GiB",
        pool="onprem",
        labels={"zone": "b", "rack": "3"},
        priority=10,
        preemptible=True,
        time_limit="1-12:00:00",
        max_retries=2,
    )
    res = spec.resources
    assert (res.nodes, res.gpus, res.cpus) == (2, 4, 16.0)
    assert list(res.gpu_types) == ["A100", "H100"]
    assert res.min_gpu_memory_bytes == 40 * 10**9
    assert res.memory_bytes == 128 * GIB
    assert spec.pool == "onprem"
    assert dict(spec.labels) == {"zone": "b", "rack": "3"}
    assert (spec.priority, spec.preemptible, spec.max_retries) == (10, True, 2)
    assert spec.time_limit.ToSeconds() == 36 * 3600
    normalize(spec)  # and the scheduler takes it as it is


def test_build_spec_defaults_leave_the_fields_unset() -> None:
    spec = build_spec(["true"])
    assert not spec.resources.gpu_types
    assert (spec.resources.min_gpu_memory_bytes, spec.resources.memory_bytes) == (0, 0)
    assert (spec.pool, dict(spec.labels), spec.priority, spec.preemptible) == ("", {}, 0, False)
    assert not spec.HasField("time_limit")


def test_build_spec_takes_one_model_a_timedelta_and_bytes() -> None:
    spec = build_spec(["true"], gpus=1, gpu_type="RTX-3090", time_limit=timedelta(minutes=90), memory=1 << 34)
    assert list(spec.resources.gpu_types) == ["RTX-3090"]
    assert spec.time_limit.ToSeconds() == 5400
    assert spec.resources.memory_bytes == 1 << 34
    assert build_spec(["true"], time_limit=600).time_limit.ToSeconds() == 600
    assert list(build_spec(["true"], gpu_type=("A100", "H100")).resources.gpu_types) == ["A100", "H100"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"gpu_type": 3}, TypeError, "gpu_type must be a GPU model"),
        ({"gpu_type": ["A100", 3]}, TypeError, "gpu_type must be a GPU model"),
        ({"gpu_type": {"A100": 1}}, TypeError, "gpu_type must be a GPU model"),
        ({"gpu_type": ["A100", " "]}, ValueError, "gpu_type must name GPU models"),
        ({"min_gpu_memory": "forty"}, ValueError, "min_gpu_memory must be a size"),
        ({"min_gpu_memory": -1}, ValueError, "min_gpu_memory must be 0 or more"),
        ({"memory": "64 gigs"}, ValueError, "memory must be a size"),
        ({"memory": [64]}, TypeError, "memory must be bytes"),
        ({"pool": 3}, TypeError, "pool must be a pool name"),
        ({"labels": ["zone=b"]}, TypeError, "labels must be a mapping"),
        ({"labels": {"zone": 2}}, TypeError, "labels must map str to str"),
        ({"priority": "high"}, TypeError, "priority must be an int"),
        ({"priority": 1.5}, TypeError, "priority must be an int"),
        ({"priority": 2**40}, ValueError, "priority must fit in 32 bits"),
        ({"preemptible": 1}, TypeError, "preemptible must be True or False"),
        ({"preemptible": "yes"}, TypeError, "preemptible must be True or False"),
        ({"time_limit": "a while"}, ValueError, "time_limit must be seconds"),
        ({"time_limit": -60}, ValueError, "time_limit must be a duration of 0 seconds or more"),
        ({"time_limit": [60]}, TypeError, "time_limit must be seconds"),
    ],
)
def test_build_spec_errors_name_the_argument(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build_spec(["true"], gpus=1, **kwargs)  # type: ignore[arg-type]


# --- schedctl submit -----------------------------------------------------------------------


def test_schedctl_submit_parses_every_field() -> None:
    args = cli.parse_args(
        [
            "submit", "--gpus", "4", "--gpu-type", "A100", "--gpu-type", "H100,L40S", "--min-gpu-memory", "40GB",
            "--memory", "64GiB", "--pool", "onprem", "--label", "zone=b", "--label", "note=a=b", "--priority", "-5",
            "--preemptible", "--time-limit", "1-12:00:00", "--", "python", "t.py",
        ]
    )  # fmt: skip
    assert args.gpu_type == ["A100", "H100", "L40S"]
    assert (args.min_gpu_memory, args.memory) == (40 * 10**9, 64 * GIB)
    assert (args.pool, args.label, args.priority) == ("onprem", [("zone", "b"), ("note", "a=b")], -5)
    assert (args.preemptible, args.time_limit) == (True, 129600.0)
    spec = build_spec(
        args.command, gpus=args.gpus, gpu_type=args.gpu_type, min_gpu_memory=args.min_gpu_memory, memory=args.memory,
        pool=args.pool, labels=dict(args.label), priority=args.priority, preemptible=args.preemptible,
        time_limit=args.time_limit,
    )  # fmt: skip
    normalize(spec)
    assert list(spec.resources.gpu_types) == ["A100", "H100", "L40S"]
    assert spec.time_limit.ToSeconds() == 129600


def test_schedctl_submit_defaults() -> None:
    args = cli.parse_args(["submit", "--", "true"])
    assert (args.gpu_type, args.min_gpu_memory, args.memory, args.pool, args.label) == (None, None, None, None, None)
    assert (args.priority, args.preemptible, args.time_limit) == (0, False, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory", "lots"], "expected a size like 40GB"),
        (["--min-gpu-memory=-4GB"], "expected a size like 40GB"),
        (["--time-limit", "forever"], "expected seconds (3600), a duration with units"),
        (["--time-limit=-1h"], "expected seconds (3600)"),
        (["--time-limit", "1:75:00"], "expected seconds (3600)"),
        (["--label", "zone"], "expected KEY=VALUE"),
        (["--label", "=b"], "expected KEY=VALUE"),
        (["--gpu-type", "A100,"], "expected a GPU model"),
        (["--priority", "high"], "invalid int value"),
    ],
)
def test_schedctl_submit_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", *argv, "--", "true"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


# --- the scheduler's checks ----------------------------------------------------------------


def spec(gpus: int = 1, **kw: object) -> types_pb2.RunSpec:
    resources = {k: kw.pop(k) for k in ("gpu_types", "min_gpu_memory_bytes", "memory_bytes") if k in kw}
    return types_pb2.RunSpec(command=["python", "t.py"], resources=types_pb2.Resources(gpus=gpus, **resources), **kw)


def test_scheduler_stores_gpu_types_stripped_and_once() -> None:
    s = spec(gpu_types=[" A100", "H100", "A100"])
    normalize(s)
    assert list(s.resources.gpu_types) == ["A100", "H100"]


def test_scheduler_accepts_bounds() -> None:
    s = spec(
        gpu_types=["m" * 128] * 32,
        min_gpu_memory_bytes=1 << 44,
        memory_bytes=1 << 50,
        pool="cloud-spot_2.a",
        labels={"k" * 128: "v" * 256, "zone": ""},
        priority=-1_000_000,
    )
    s.time_limit.FromSeconds(365 * 86400)
    normalize(s)


def _time_limit(seconds: float) -> types_pb2.RunSpec:
    s = spec()
    s.time_limit.FromNanoseconds(int(seconds * 1e9))
    return s


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (spec(memory_bytes=-1), r"resources.memory_bytes is -1: it must be between 0 \(any\) and"),
        (spec(memory_bytes=(1 << 50) + 1), "resources.memory_bytes is .*1024 TiB"),
        (spec(min_gpu_memory_bytes=-5), "resources.min_gpu_memory_bytes is -5"),
        (spec(min_gpu_memory_bytes=1 << 45), r"resources.min_gpu_memory_bytes is .* \(16 TiB\)"),
        (spec(gpu_types=["A100", " "]), r"resources.gpu_types\[1\] is blank"),
        (spec(gpu_types=["x" * 129]), r"resources.gpu_types\[0\] is 129 characters; the limit is 128"),
        (spec(gpu_types=["A\x07100"]), r"resources.gpu_types\[0\] .* control character"),
        (spec(gpu_types=[f"m{i}" for i in range(33)]), "lists 33 models; the limit is 32"),
        (spec(gpus=0, gpu_types=["A100"]), "resources.gpu_types is set but resources.gpus is 0"),
        (spec(gpus=0, min_gpu_memory_bytes=1), "resources.min_gpu_memory_bytes is set but resources.gpus is 0"),
        (spec(pool="on prem"), "pool 'on prem' is not a pool name"),
        (spec(pool="-x"), "pool '-x' is not a pool name"),
        (spec(pool="p" * 65), "pool is 65 characters; the limit is 64"),
        (spec(labels={f"k{i}": "v" for i in range(65)}), "labels has 65 pairs; the limit is 64"),
        (spec(labels={"": "v"}), "label key '' must be 1 to 128 characters"),
        (spec(labels={"k" * 129: "v"}), "must be 1 to 128 characters"),
        (spec(labels={" zone": "b"}), "without '=' or surrounding spaces"),
        (spec(labels={"a=b": "c"}), "without '=' or surrounding spaces"),
        (spec(labels={"zo\tne": "b"}), "must be printable"),
        (spec(labels={"zone": "v" * 257}), "label 'zone' has a value of 257 characters; the limit is 256"),
        (spec(labels={"zone": "b\n"}), "label 'zone' has a value with a control character"),
        (spec(priority=1_000_001), "priority is 1000001: it must be between -1000000 and 1000000"),
        (spec(priority=-1_000_001), "priority is -1000001"),
        (_time_limit(0), r"time_limit is 0s: give a positive duration .* or leave it unset"),
        (_time_limit(-1), "time_limit is -1s: give a positive duration"),
        (_time_limit(366 * 86400), r"time_limit is 3.1622[0-9e+]*s; the limit is 31536000s \(365 days\)"),
    ],
)
def test_scheduler_refuses_with_a_message_naming_the_field(bad: types_pb2.RunSpec, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        normalize(bad)
