"""Sweep expressions parse to the documented values, trials are reproducible, and nothing is ever evaluated."""

from __future__ import annotations

import builtins
import math
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridlab.client.sweeps import (
    MAX_RUNS,
    Domain,
    SweepError,
    expand,
    format_value,
    parse_assignment,
    parse_domain,
    substitute,
    trial_name,
)


def values(expr: str, seed: int = 0) -> list[Any]:
    return list(parse_domain("x", expr).values(seed))


# --- expression forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("[1,2,3]", [1, 2, 3]),
        ("[ 0.1 , 0.01 ]", [0.1, 0.01]),
        ("[1e-3, -2, .5, 1., +4]", [0.001, -2, 0.5, 1.0, 4]),
        ("[adam, sgd]", ["adam", "sgd"]),
        ("[true, false, nan]", ["true", "false", "nan"]),
        ("['1', \"2\", 'a, b', '']", ["1", "2", "a, b", ""]),
        ("[resnet-50, path/to/x.yaml, 3]", ["resnet-50", "path/to/x.yaml", 3]),
        ("[7]", [7]),
        ("range(4)", [0, 1, 2, 3]),
        ("range(2, 5)", [2, 3, 4]),
        ("range(10, 0, -3)", [10, 7, 4, 1]),
        ("range(0, 1, 0.25)", [0.0, 0.25, 0.5, 0.75]),
        ("range(0, 0.3, 0.1)", [0.0, 0.1, 0.2]),
        ("range(0, 1, 0.1)", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ("range(1.5)", [0.0, 1.0]),
        ("linspace(0, 1, 5)", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("linspace(0, 1, 11)", [i / 10 for i in range(11)]),
        ("linspace(2, 3, 1)", [2.0]),
        ("linspace(1, -1, 3)", [1.0, 0.0, -1.0]),
        ("logspace(-5, -1, 5)", [1e-05, 0.0001, 0.001, 0.01, 0.1]),
        ("logspace(0, 2, 3)", [1.0, 10.0, 100.0]),
    ],
)
def test_finite_forms(expr: str, expected: list[object]) -> None:
    got = values(expr)
    assert got == expected
    assert [type(v) for v in got] == [type(v) for v in expected]
    assert parse_domain("x", expr).finite()


def test_logspace_is_ten_to_the_linspace() -> None:
    assert values("logspace(0, 1, 3)") == pytest.approx([1.0, 10**0.5, 10.0])


def test_linspace_and_logspace_are_floats_even_for_integer_bounds() -> None:
    assert all(isinstance(v, float) for v in values("linspace(1, 10, 10)"))


@pytest.mark.parametrize("expr", ["uniform(0.1, 0.5, 50)", "uniform(-1, 1, 3)"])
def test_uniform_with_count(expr: str) -> None:
    domain = parse_domain("x", expr)
    a, b = domain.bounds
    got = domain.values(7)
    assert domain.finite()
    assert len(got) == domain.count
    assert all(isinstance(v, float) and a <= v <= b for v in got)


def test_loguniform_draws_between_the_bounds_not_exponents() -> None:
    got = values("loguniform(1e-5, 1e-2, 200)")
    assert len(got) == 200
    assert all(1e-5 <= v <= 1e-2 for v in got)
    # Log-uniform: about a third of the draws fall in each decade.
    assert 30 < sum(1e-4 <= v < 1e-3 for v in got) < 110


def test_randint_is_half_open_like_numpy() -> None:
    got = values("randint(1, 4, 300)")
    assert all(isinstance(v, int) for v in got)
    assert set(got) == {1, 2, 3}


def test_counted_distribution_is_stable_per_seed_and_name() -> None:
    assert values("uniform(0, 1, 5)", seed=3) == values("uniform(0, 1, 5)", seed=3)
    assert values("uniform(0, 1, 5)", seed=3) != values("uniform(0, 1, 5)", seed=4)
    rng = random.Random("3:x")
    assert values("uniform(0, 1, 2)", seed=3) == [rng.uniform(0, 1), rng.uniform(0, 1)]
    assert parse_domain("a", "uniform(0,1,3)").values(0) != parse_domain("b", "uniform(0,1,3)").values(0)


@pytest.mark.parametrize("expr", ["uniform(0, 1)", "loguniform(1e-4, 1)", "randint(0, 10)"])
def test_distribution_without_count_is_unbounded(expr: str) -> None:
    domain = parse_domain("lr", expr)
    assert not domain.finite()
    assert domain.size() is None
    with pytest.raises(SweepError, match="unbounded distribution: give it a count"):
        domain.values(0)
    rng = random.Random(1)
    draws = [domain.sample(rng) for _ in range(50)]
    a, b = domain.bounds
    assert all(a <= float(v) <= b for v in draws)


def test_sample_of_finite_domain_is_one_of_its_values() -> None:
    domain = parse_domain("opt", "[adam, sgd, lion]")
    rng = random.Random(0)
    assert {domain.sample(rng) for _ in range(100)} == {"adam", "sgd", "lion"}
    counted = parse_domain("lr", "uniform(0, 1, 3)")
    assert {counted.sample(rng, seed=5) for _ in range(100)} == set(counted.values(5))


def test_domain_is_a_frozen_dataclass() -> None:
    domain = parse_domain("lr", "[0.1]")
    assert isinstance(domain, Domain)
    assert (domain.name, domain.expr) == ("lr", "[0.1]")
    attr = "name"
    with pytest.raises(AttributeError):
        setattr(domain, attr, "wd")


# --- errors read well ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("foo(1)", "sweep lr='foo(1)': unknown function foo; use [a,b,...], range(), linspace(), logspace()"),
        ("[]", "the list is empty"),
        ("[ ]", "the list is empty"),
        ("[1,,2]", "empty value"),
        ("[1,2,]", "empty value"),
        ("[1,2", "must end with ']'"),
        ("['a, b]", "unterminated"),
        ("['a' b]", "expected ','"),
        ("0.1", "for one value write [0.1]"),
        ("adam", "not a list or a function call; use [a,b,...]"),
        ("range()", "range takes range(stop) or range(start, stop[, step]), got 0"),
        ("range(1,2,3,4)", "got 4"),
        ("range(0, 10, 0)", "step must not be 0"),
        ("range(0)", "range is empty"),
        ("range(5, 1)", "range is empty"),
        ("range(0, 1, -0.1)", "range is empty"),
        ("range(a)", "must be plain numbers, got 'a'"),
        ("range(10000000)", "more than 100000 values"),
        ("range(0, 1, 1e-9)", "more than 100000 values"),
        ("linspace(0, 1)", "linspace takes linspace(a, b, n), got 2"),
        ("linspace(0, 1, 0)", "must be between 1 and 100000, got 0"),
        ("linspace(0, 1, 2.5)", "must be a whole number"),
        ("logspace(0, 400, 3)", "overflow"),
        ("uniform(1, 0)", "uniform needs a < b, got a=1, b=0"),
        ("uniform(1, 1, 3)", "needs a < b"),
        ("uniform(0, 1, 0)", "between 1 and 100000"),
        ("uniform(0, 1, 200000)", "between 1 and 100000, got 200000"),
        ("uniform(0, 1, -3)", "got -3"),
        ("uniform(0)", "uniform takes uniform(a, b[, n]), got 1"),
        ("uniform(0, 1, 2, 3)", "got 4"),
        ("loguniform(0, 1)", "loguniform needs 0 < a < b"),
        ("loguniform(-1, 1)", "not exponents"),
        ("randint(0.5, 3)", "randint needs whole-number bounds"),
        ("randint(3, 3)", "needs a < b"),
        ("uniform(0, 1e999)", "too large"),
        ("uniform(nan, 1)", "must be plain numbers, got 'nan'"),
        ("uniform(0, inf)", "must be plain numbers"),
    ],
)
def test_bad_expressions_say_what_is_wrong(expr: str, words: str) -> None:
    with pytest.raises(SweepError) as info:
        parse_domain("lr", expr)
    assert words in str(info.value)
    assert str(info.value).startswith("sweep lr=")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["1x", "a-b", "", "lr ", "ü", "a.b", "x" * 101])
def test_bad_parameter_names(name: str) -> None:
    with pytest.raises(SweepError, match="parameter name"):
        parse_domain(name, "[1]")
    with pytest.raises(SweepError, match="parameter name"):
        expand({name: "[1]"})


# --- hostile input ------------------------------------------------------------------------------


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('touch pwned')",
    "os.system('touch pwned')",
    "().__class__.__bases__[0].__subclasses__()",
    "range(__import__('os').getpid())",
    "range(range(3))",
    "uniform(0, linspace(0, 1, 2))",
    "[__import__('os')]",
    "[[1, 2], [3]]",
    "[f(x)]",
    "range(10**9)",
    "range(0x10)",
    "range(1_000)",
    "lambda: 1",
    "exec('1')",
    "eval",
    "{'a': 1}",
    "range(2" + ")" * 10_000,
    "range(" * 5_000 + "1" + ")" * 5_000,
    "range(" * 1_000 + "1" + ")" * 1_000,
    "[" * 3_000 + "]" * 3_000,
    "[" + "1," * 6_000 + "1]",
    "x" * 1_000_000,
    "[" + "9" * 5_000 + "]",
    "range(" + "9" * 5_000 + ")",
    "",
    "   ",
]


@pytest.mark.parametrize("expr", HOSTILE, ids=lambda e: e[:40])
def test_hostile_input_is_an_error_never_executed(expr: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("sweeps must never evaluate input")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    monkeypatch.setattr(builtins, "compile", forbidden)
    with pytest.raises(SweepError) as info:
        parse_domain("lr", expr)
    assert len(str(info.value)) < 300  # long input is cut in the message
    assert not (tmp_path / "pwned").exists()


# --- expand -------------------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_first_parameter_slowest() -> None:
    runs = expand({"lr": "[0.1, 0.01]", "opt": "[adam, sgd, lion]"})
    assert runs == [
        {"lr": 0.1, "opt": "adam"},
        {"lr": 0.1, "opt": "sgd"},
        {"lr": 0.1, "opt": "lion"},
        {"lr": 0.01, "opt": "adam"},
        {"lr": 0.01, "opt": "sgd"},
        {"lr": 0.01, "opt": "lion"},
    ]
    assert [list(run) for run in runs] == [["lr", "opt"]] * 6


def test_grid_with_counted_distribution_uses_the_seed() -> None:
    runs = expand({"lr": "loguniform(1e-4, 1e-1, 3)", "bs": "[32, 64]"}, seed=9)
    assert len(runs) == 6
    assert [r["lr"] for r in runs[::2]] == parse_domain("lr", "loguniform(1e-4, 1e-1, 3)").values(9)
    assert runs == expand({"lr": "loguniform(1e-4, 1e-1, 3)", "bs": "[32, 64]"}, seed=9)


def test_unbounded_under_grid_is_an_error() -> None:
    with pytest.raises(SweepError) as info:
        expand({"lr": "uniform(0, 1)", "bs": "[1, 2]"})
    message = str(info.value)
    assert "sweep lr='uniform(0, 1)' is an unbounded distribution" in message
    assert "give it a count (uniform(a, b, n)) or use strategy='random'" in message


def test_grid_refuses_trials() -> None:
    with pytest.raises(SweepError, match="trials applies to strategy='random'"):
        expand({"lr": "[1, 2]"}, trials=2)


def test_too_many_runs() -> None:
    with pytest.raises(SweepError, match="would make 1000000 runs; at most 10000"):
        expand({"a": "range(1000)", "b": "range(1000)"})
    with pytest.raises(SweepError, match=f"would make {MAX_RUNS + 1} runs"):
        expand({"a": "uniform(0, 1)"}, strategy="random", trials=MAX_RUNS + 1)
    assert len(expand({"a": "range(100)", "b": "range(100)"})) == MAX_RUNS


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"strategy": "bayes"}, "unknown sweep strategy 'bayes'; use 'grid' or 'random'"),
        ({"strategy": "random"}, "strategy='random' needs trials"),
        ({"strategy": "random", "trials": 0}, "trials must be a whole number >= 1, got 0"),
        ({"strategy": "random", "trials": -1}, "got -1"),
        ({"strategy": "random", "trials": True}, "got True"),
        ({"strategy": "random", "trials": 2.0}, "got 2.0"),
        ({"strategy": "random", "trials": 2, "seed": "x"}, "seed must be an integer"),
    ],
)
def test_bad_expand_options(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(SweepError) as info:
        expand({"lr": "uniform(0, 1)"}, **kwargs)
    assert words in str(info.value)


def test_empty_params() -> None:
    with pytest.raises(SweepError, match="at least one parameter"):
        expand({})


def test_expand_reports_the_bad_parameter() -> None:
    with pytest.raises(SweepError, match="sweep wd='foo'"):
        expand({"lr": "[1]", "wd": "foo"})


def test_random_sweep_is_reproducible_and_seed_dependent() -> None:
    params = {"lr": "loguniform(1e-5, 1e-1)", "bs": "[16, 32, 64]", "layers": "randint(1, 9)"}
    first = expand(params, strategy="random", trials=20, seed=42)
    assert first == expand(params, strategy="random", trials=20, seed=42)
    assert first != expand(params, strategy="random", trials=20, seed=43)
    assert expand(params, strategy="random", trials=5) == expand(params, strategy="random", trials=5, seed=0)
    assert all(list(run) == ["lr", "bs", "layers"] for run in first)
    assert all(1e-5 <= float(run["lr"]) <= 1e-1 for run in first)
    assert {run["bs"] for run in first} <= {16, 32, 64}
    assert len({run["lr"] for run in first}) == 20


def test_random_trial_uses_its_own_generator() -> None:
    run = expand({"lr": "uniform(0, 1)"}, strategy="random", trials=4, seed=5)[3]
    assert run["lr"] == random.Random("5:3:lr").uniform(0, 1)


def test_adding_a_parameter_keeps_the_others() -> None:
    before = expand({"lr": "uniform(0, 1)", "bs": "[1, 2, 3]"}, strategy="random", trials=10, seed=1)
    after = expand(
        {"wd": "loguniform(1e-6, 1e-2)", "lr": "uniform(0, 1)", "bs": "[1, 2, 3]"},
        strategy="random",
        trials=10,
        seed=1,
    )
    assert [{k: run[k] for k in ("lr", "bs")} for run in after] == before


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=-(2**63), max_value=2**63),
    small=st.integers(min_value=1, max_value=30),
    extra=st.integers(min_value=0, max_value=30),
)
def test_trial_k_does_not_change_when_trials_grows(seed: int, small: int, extra: int) -> None:
    params = {"lr": "loguniform(1e-5, 1)", "opt": "[adam, sgd]", "n": "randint(0, 100, 7)", "x": "linspace(0,1,5)"}
    few = expand(params, strategy="random", trials=small, seed=seed)
    more = expand(params, strategy="random", trials=small + extra, seed=seed)
    assert more[:small] == few


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False)), min_size=1))
def test_number_lists_round_trip(numbers: list[float]) -> None:
    expr = "[" + ", ".join(format_value(v) for v in numbers) + "]"
    got = values(expr)
    assert got == numbers
    assert [type(v) for v in got] == [type(v) for v in numbers]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_sweep_error(expr: str) -> None:
    try:
        domain = parse_domain("p", expr)
    except SweepError:
        return
    assert domain.finite() or domain.kind in ("uniform", "loguniform", "randint")


# --- substitute, parse_assignment, trial_name ---------------------------------------------------


def test_substitute_placeholders() -> None:
    argv = substitute(
        ["python", "train.py", "--lr={lr}", "--opt", "{opt}", "out/{opt}-{bs}"],
        {"lr": 0.001, "opt": "adam", "bs": 32},
    )
    assert argv == ["python", "train.py", "--lr=0.001", "--opt", "adam", "out/adam-32"]


def test_substitute_appends_unreferenced_parameters_in_order() -> None:
    argv = substitute(["python", "train.py", "--lr={lr}"], {"wd": 1e-05, "lr": 0.1, "layers": 4, "act": "relu"})
    assert argv == ["python", "train.py", "--lr=0.1", "--wd", "1e-05", "--layers", "4", "--act", "relu"]
    assert substitute(["run"], {"a": 1}) == ["run", "--a", "1"]


def test_substitute_leaves_other_braces_alone() -> None:
    command = ["{}", "{x", "x}", '{"lr": 1}', "{unknown}", "{{lr}}", "{ lr }"]
    argv = substitute(command, {"lr": 0.5})
    assert argv == ["{}", "{x", "x}", '{"lr": 1}', "{unknown}", "{0.5}", "{ lr }"]


def test_substitute_does_not_reexpand_values() -> None:
    assert substitute(["{a}", "{b}"], {"a": "{b}", "b": "x"}) == ["{b}", "x"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (-2, "-2"), (0.001, "0.001"), (1e-05, "1e-05"), (0.1 + 0.2, "0.30000000000000004"), ("adam", "adam")],
)
def test_format_value(value: int | float | str, text: str) -> None:
    assert format_value(value) == text
    if isinstance(value, float):
        assert float(text) == value


def test_parse_assignment() -> None:
    assert parse_assignment("lr=[0.1,0.01]") == ("lr", "[0.1,0.01]")
    assert parse_assignment(" lr = range(1, 3) ") == ("lr", "range(1, 3)")
    assert parse_assignment("tag=[a=b]") == ("tag", "[a=b]")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lr", "expected NAME=EXPR"),
        ("lr=", "expected NAME=EXPR"),
        ("=[1]", "parameter name"),
        ("1lr=[1]", "parameter name"),
    ],
)
def test_parse_assignment_errors(text: str, words: str) -> None:
    with pytest.raises(SweepError) as info:
        parse_assignment(text)
    assert words in str(info.value)
    assert f"--sweep {text!r}" in str(info.value)


def test_trial_name() -> None:
    assert trial_name("mnist", 3, {"lr": 0.1}) == "mnist-3"
    assert trial_name("mnist", 0) == "mnist-0"
    with pytest.raises(SweepError):
        trial_name("mnist", -1)


def test_end_to_end_commands() -> None:
    runs = expand({"lr": "logspace(-3, -1, 3)", "opt": "[adam, sgd]"})
    commands = [substitute(["python", "train.py", "--lr", "{lr}"], run) for run in runs]
    assert commands[0] == ["python", "train.py", "--lr", "0.001", "--opt", "adam"]
    assert commands[-1] == ["python", "train.py", "--lr", "0.1", "--opt", "sgd"]
    assert all(math.isfinite(float(c[3])) for c in commands)
