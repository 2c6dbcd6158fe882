"""Hyper-parameter sweeps in Grid.ai's syntax: `--sweep lr=[0.1,0.01] --sweep wd=loguniform(1e-5,1e-2,4)`.

Two promises shape this module. Trials are reproducible: trial k's parameters depend only on
(seed, k, parameter name, expression), so a requeued or re-expanded trial gets the same values,
and adding a parameter or more trials never changes the existing ones. Expressions are parsed
by a small hand-written tokenizer that knows a list and seven functions, never `eval`; anything
else is a `SweepError` that names the parameter and says what is accepted.

    [a,b,c]                      literal values (int, else float, else string; quote to keep '1')
    range(stop) / range(start, stop[, step])   Python semantics; float steps allowed
    linspace(a, b, n)            n floats from a to b inclusive
    logspace(a, b, n)            10**x for x in linspace(a, b, n)
    uniform(a, b[, n]) / loguniform(a, b[, n]) / randint(a, b[, n])
                                 with n: n values drawn from the seed (finite);
                                 without n: unbounded, only strategy='random' can sample it
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias

Value: TypeAlias = int | float | str
Number: TypeAlias = int | float

MAX_VALUES = 100_000  # values in one domain (a list, a range, n of a distribution)
MAX_RUNS = 10_000  # runs one sweep may make
MAX_EXPR_CHARS = 10_000
MAX_NAME_CHARS = 100
STRATEGIES = ("grid", "random")

ACCEPTED = "use [a,b,...], range(), linspace(), logspace(), uniform(), loguniform() or randint()"
_SIGNATURES = {
    "range": "range(stop) or range(start, stop[, step])",
    "linspace": "linspace(a, b, n)",
    "logspace": "logspace(a, b, n)",
    "uniform": "uniform(a, b[, n])",
    "loguniform": "loguniform(a, b[, n])",
    "randint": "randint(a, b[, n])",
}
_ARITY = {
    "range": (1, 3),
    "linspace": (3, 3),
    "logspace": (3, 3),
    "uniform": (2, 3),
    "loguniform": (2, 3),
    "randint": (2, 3),
}
_RANDOM_KINDS = ("uniform", "loguniform", "randint")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_CALL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SweepError(ValueError):
    """A sweep expression, parameter or option that cannot be used; the message says what to write."""


@dataclass(frozen=True)
class Domain:
    """The values one parameter may take. Build it with `parse_domain`.

    Attributes:
        name: The parameter name.
        expr: The expression as written.
        kind: "list", "range", "linspace", "logspace", "uniform", "loguniform" or "randint".
        items: The values of a list/range/linspace/logspace; empty for a distribution.
        bounds: (a, b) of a distribution; empty otherwise.
        count: n of a distribution given a count; None otherwise.
    """

    name: str
    expr: str
    kind: str
    items: tuple[Value, ...] = ()
    bounds: tuple[Number, ...] = ()
    count: int | None = None

    def finite(self) -> bool:
        """True when the domain is a fixed list of values (grid-able)."""
        return self.kind not in _RANDOM_KINDS or self.count is not None

    def size(self) -> int | None:
        """How many values `values()` returns; None for an unbounded distribution."""
        return len(self.items) if self.kind not in _RANDOM_KINDS else self.count

    def values(self, seed: int = 0) -> list[Value]:
        """Every value of a finite domain; a distribution's n values are drawn from `seed` and the name."""
        if self.kind not in _RANDOM_KINDS:
            return list(self.items)
        if self.count is None:
            raise SweepError(
                f"sweep {self.name}={_show(self.expr)} is an unbounded distribution: give it a count "
                f"({self.kind}(a, b, n)) or use strategy='random'"
            )
        return list(_drawn(self, seed, self.count))

    def sample(self, rng: random.Random, *, seed: int = 0) -> Value:
        """One value: a uniform choice among a finite domain's values (drawn from `seed`), or one draw."""
        if self.kind not in _RANDOM_KINDS:
            return rng.choice(self.items)
        if self.count is not None:
            return rng.choice(_drawn(self, seed, self.count))
        return self._draw(rng)

    def _draw(self, rng: random.Random) -> Value:
        a, b = self.bounds
        if self.kind == "uniform":
            return rng.uniform(a, b)
        if self.kind == "loguniform":
            # Clamped: exp(log(b)) can land one ulp past b.
            return min(max(math.exp(rng.uniform(math.log(a), math.log(b))), float(a)), float(b))
        return rng.randrange(int(a), int(b))


@functools.lru_cache(maxsize=64)
def _drawn(domain: Domain, seed: int, count: int) -> tuple[Value, ...]:
    """A distribution's n values: the same for the same (seed, name, expression), whoever asks."""
    rng = _rng(f"{seed}:{domain.name}")
    return tuple(domain._draw(rng) for _ in range(count))


def _rng(key: str) -> random.Random:
    """A generator seeded from a string (stable across processes and Python versions)."""
    return random.Random(key)  # noqa: S311 - reproducible sweeps, not secrets


def parse_domain(name: str, expr: str) -> Domain:
    """Parse one sweep expression for parameter `name`; raises SweepError on anything not accepted."""
    _check_name(name)
    text = expr.strip()
    if len(text) > MAX_EXPR_CHARS:
        raise _error(name, expr, f"expression is {len(text)} characters; at most {MAX_EXPR_CHARS}")
    if text.startswith("["):
        if not text.endswith("]"):
            raise _error(name, expr, "a list must end with ']'")
        items = _parse_list(name, expr, text[1:-1])
        return Domain(name, expr, "list", items=tuple(items))
    call = _CALL.fullmatch(text)
    if call is None:
        hint = f"; for one value write [{text}]" if _NUMBER.fullmatch(text) else ""
        raise _error(name, expr, f"not a list or a function call; {ACCEPTED}{hint}")
    func, inner = call.group(1), call.group(2)
    if func not in _SIGNATURES:
        raise _error(name, expr, f"unknown function {func}; {ACCEPTED}")
    args = _parse_args(name, expr, func, inner)
    if func == "range":
        return Domain(name, expr, "range", items=tuple(_range(name, expr, args)))
    if func in ("linspace", "logspace"):
        n = _count(name, expr, func, args[2])
        xs = _linspace(args[0], args[1], n)
        if func == "logspace":
            try:
                xs = [10.0**x for x in xs]
            except OverflowError:
                raise _error(name, expr, "values overflow a float") from None
        values = [_tidy(x) for x in xs]
        if not all(math.isfinite(v) for v in values):
            raise _error(name, expr, "values overflow a float")
        return Domain(name, expr, func, items=tuple(values))
    return _distribution(name, expr, func, args)


def expand(
    params: Mapping[str, str],
    *,
    strategy: str = "grid",
    trials: int | None = None,
    seed: int | None = None,
) -> list[dict[str, Value]]:
    """Turn {name: expression} into one {name: value} dict per run, keys in the order of `params`.

    strategy="grid": the cartesian product of every domain (first parameter varies slowest);
    all domains must be finite and `trials` must be None.
    strategy="random": `trials` runs; trial k draws each parameter with
    `random.Random(f"{seed}:{k}:{name}")` (seed defaults to 0), so it never depends on the
    other parameters or on how many trials there are. Values may repeat across trials.
    """
    if strategy not in STRATEGIES:
        raise SweepError(f"unknown sweep strategy {strategy!r}; use 'grid' or 'random'")
    if not params:
        raise SweepError("a sweep needs at least one parameter, e.g. --sweep lr=[0.1,0.01]")
    if seed is None:
        seed = 0
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise SweepError(f"sweep seed must be an integer, got {seed!r}")
    domains = [parse_domain(name, expr) for name, expr in params.items()]
    if strategy == "grid":
        if trials is not None:
            raise SweepError("trials applies to strategy='random'; a grid runs every combination")
        pools = [d.values(seed) for d in domains]
        runs = math.prod(len(p) for p in pools)
        _check_runs(runs)
        return [dict(zip(params, combo, strict=True)) for combo in itertools.product(*pools)]
    if trials is None:
        raise SweepError("strategy='random' needs trials (how many runs to make)")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise SweepError(f"trials must be a whole number >= 1, got {trials!r}")
    _check_runs(trials)
    return [{d.name: d.sample(_rng(f"{seed}:{k}:{d.name}"), seed=seed) for d in domains} for k in range(trials)]


def substitute(command: Sequence[str], values: Mapping[str, Value]) -> list[str]:
    """Fill `{name}` placeholders in each argv element; append every unreferenced parameter as `--name value`.

    Only placeholders whose name is in `values` are replaced; other braces (`{}`, `{x`, JSON)
    stay as written. Ints print as str(), floats as repr() (shortest round-trip), strings as is.
    """
    used: set[str] = set()

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            return match.group(0)
        used.add(key)
        return format_value(values[key])

    argv = [_PLACEHOLDER.sub(fill, arg) for arg in command]
    for key, value in values.items():
        if key not in used:
            argv += [f"--{key}", format_value(value)]
    return argv


def format_value(value: Value) -> str:
    """How a value appears on a command line: 3, 0.001, 1e-05, adam."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_assignment(text: str) -> tuple[str, str]:
    """Split the CLI's `--sweep NAME=EXPR` into (name, expr); the expression is checked later."""
    name, sep, expr = text.partition("=")
    name, expr = name.strip(), expr.strip()
    if not sep or not expr:
        raise SweepError(f"--sweep {_show(text)}: expected NAME=EXPR, e.g. --sweep lr=[0.1,0.01]")
    _check_name(name, context=f"--sweep {_show(text)}: ")
    return name, expr


def trial_name(base: str, k: int, values: Mapping[str, Value] | None = None) -> str:
    """The run name of trial k: `base-k`. `values` is accepted but not used, to keep names short."""
    if k < 0:
        raise SweepError(f"trial index must be >= 0, got {k}")
    return f"{base}-{k}"


# --- parsing helpers ---------------------------------------------------------------------------


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _error(name: str, expr: str, reason: str) -> SweepError:
    return SweepError(f"sweep {name}={_show(expr)}: {reason}")


def _check_name(name: str, context: str = "sweep ") -> None:
    if len(name) > MAX_NAME_CHARS:
        raise SweepError(f"{context}parameter name is {len(name)} characters; at most {MAX_NAME_CHARS}")
    if not _NAME.fullmatch(name):
        raise SweepError(
            f"{context}parameter name {_show(name)} is not an identifier "
            "(letters, digits and _, not starting with a digit)"
        )


def _check_runs(runs: int) -> None:
    if runs > MAX_RUNS:
        raise SweepError(f"this sweep would make {runs} runs; at most {MAX_RUNS} are allowed")


def _literal(token: str) -> Value:
    return _number(token) if _NUMBER.fullmatch(token) else token


def _number(token: str) -> Number:
    """A token that matches _NUMBER: int when it has no '.' or exponent, else float."""
    return int(token) if _INT.fullmatch(token) else float(token)


def _parse_list(name: str, expr: str, inner: str) -> list[Value]:
    """Split on commas outside quotes; a quoted item is a string, an unquoted one int, else float, else string."""
    items: list[Value] = []
    i, n = 0, len(inner)
    if not inner.strip():
        raise _error(name, expr, "the list is empty; give at least one value, e.g. [0.1,0.01]")
    while True:
        while i < n and inner[i].isspace():
            i += 1
        if i < n and inner[i] in "'\"":
            quote = inner[i]
            end = inner.find(quote, i + 1)
            if end < 0:
                raise _error(name, expr, f"unterminated {quote}-quoted value")
            items.append(inner[i + 1 : end])
            i = end + 1
            while i < n and inner[i].isspace():
                i += 1
            if i < n and inner[i] != ",":
                raise _error(name, expr, "expected ',' after a quoted value")
        else:
            end = inner.find(",", i)
            end = n if end < 0 else end
            token = inner[i:end].strip()
            if not token:
                raise _error(name, expr, "empty value in the list (two commas in a row or a trailing comma)")
            if any(c in token for c in "[]()"):
                raise _error(name, expr, f"value {_show(token, 30)} has brackets; lists do not nest (quote it)")
            try:
                items.append(_literal(token))
            except ValueError:  # an int too long to convert
                raise _error(name, expr, f"number {_show(token, 30)} is too large") from None
            i = end
        if len(items) > MAX_VALUES:
            raise _error(name, expr, f"more than {MAX_VALUES} values")
        if i >= n:
            return items
        i += 1  # the comma


def _parse_args(name: str, expr: str, func: str, inner: str) -> list[Number]:
    tokens = [t.strip() for t in inner.split(",")] if inner.strip() else []
    low, high = _ARITY[func]
    if not low <= len(tokens) <= high:
        raise _error(name, expr, f"{func} takes {_SIGNATURES[func]}, got {len(tokens)} argument(s)")
    args: list[Number] = []
    for token in tokens:
        if not _NUMBER.fullmatch(token):
            raise _error(name, expr, f"{func} arguments must be plain numbers, got {_show(token, 30)}")
        try:
            value = _number(token)
        except ValueError:  # an int too long to convert
            raise _error(name, expr, f"number {_show(token, 30)} is too large") from None
        if not math.isfinite(value):
            raise _error(name, expr, f"number {_show(token, 30)} is too large")
        args.append(value)
    return args


def _count(name: str, expr: str, func: str, n: Number) -> int:
    if not isinstance(n, int):
        raise _error(name, expr, f"n in {_SIGNATURES[func]} must be a whole number, got {n!r}")
    if not 1 <= n <= MAX_VALUES:
        raise _error(name, expr, f"n in {_SIGNATURES[func]} must be between 1 and {MAX_VALUES}, got {n}")
    return n


def _tidy(x: float) -> float:
    """Round to 15 significant digits, so 0.1 steps give 0.3, not 0.30000000000000004."""
    return float(f"{x:.15g}")


def _linspace(a: Number, b: Number, n: int) -> list[float]:
    if n == 1:
        return [float(a)]
    step = (b - a) / (n - 1)
    return [a + i * step for i in range(n - 1)] + [float(b)]


def _range(name: str, expr: str, args: list[Number]) -> list[Value]:
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if step == 0:
        raise _error(name, expr, "range step must not be 0")
    if isinstance(start, int) and isinstance(stop, int) and isinstance(step, int):
        try:
            size = len(range(start, stop, step))
        except OverflowError:
            size = MAX_VALUES + 1
        if size > MAX_VALUES:
            raise _error(name, expr, f"range has more than {MAX_VALUES} values")
        values: list[Value] = list(range(start, stop, step))
    else:
        span = (stop - start) / step
        if not math.isfinite(span) or span > MAX_VALUES:
            raise _error(name, expr, f"range has more than {MAX_VALUES} values")
        floats = (_tidy(start + i * step) for i in range(max(0, math.ceil(span))))
        values = [v for v in floats if (v < stop if step > 0 else v > stop)]
    if not values:
        raise _error(name, expr, "range is empty; check start < stop for a positive step (or > for a negative one)")
    return values


def _distribution(name: str, expr: str, func: str, args: list[Number]) -> Domain:
    a, b = args[0], args[1]
    n = _count(name, expr, func, args[2]) if len(args) == 3 else None
    if not a < b:
        raise _error(name, expr, f"{func} needs a < b, got a={a!r}, b={b!r}")
    if func == "loguniform" and a <= 0:
        raise _error(name, expr, f"loguniform needs 0 < a < b (the bounds themselves, not exponents), got a={a!r}")
    if func == "randint" and not (isinstance(a, int) and isinstance(b, int)):
        raise _error(name, expr, "randint needs whole-number bounds: randint(a, b[, n]) draws a <= x < b")
    return Domain(name, expr, func, bounds=(a, b), count=n)
