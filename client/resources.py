"""The compact resource string of `submit(resources=...)`: "2x4xA100-40G" is 2 nodes x 4 A100s of 40 GB or more.

    NODESxGPUSxMODEL[-MEM]    every part optional from the left:
    "2x4xA100-40G"            2 nodes, 4 GPUs each, model A100, at least 40 GB per GPU
    "4xA100"                  1 node, 4 A100s
    "A100"                    1 node, 1 A100
    "8"   /  "2x4"            8 GPUs of any model  /  2 nodes x 4 GPUs of any model

Counts are ASCII digits; MEM needs its unit ("A100-40" is refused: write "A100-40G"), and a model is never
empty, never starts with "-" or "x" and never ends with "-" (so "x4", "2x-4" and "A100-" are mistakes, not
models). MEM counts the way GPUs are sold: "40G" and "40GB" are 40 * 10**9 bytes, so a card sold as 40 GB (or an
H100 "80GB", which has 79.6 GiB) qualifies; "40GiB" is 40 * 2**30.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# [0-9], not \d: \d (and str.isdigit) also take other scripts' digits, which int() would then read.
_COUNT = re.compile(r"^([0-9]+)\s*[xX]\s*")
_NUMBER = re.compile(r"[0-9]+")
_MEMORY = re.compile(r"^(.*?)\s*-\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(G|GB|GiB)$", re.IGNORECASE)
# A memory with its unit left out ("A100-40") or another unit ("A100-40M"): refused, never read as a model.
_MEMORY_LIKE = re.compile(r"-\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)$", re.IGNORECASE)
_MEMORY_UNITS = {"", "k", "kb", "kib", "m", "mb", "mib", "t", "tb", "tib"}
_FORMS = "NODESxGPUSxMODEL[-MEM] with parts optional from the left, e.g. '2x4xA100-40G', '4xA100', 'A100' or '8'"
MAX_COUNT = 1 << 20


@dataclass(frozen=True)
class Resources:
    """What a compact resource string asks for.

    Attributes:
        nodes: Machines the run spans.
        gpus: GPUs per node.
        gpu_type: The GPU model, or None for any.
        min_gpu_memory: Bytes each GPU must have at least, or None for any.
    """

    nodes: int = 1
    gpus: int = 0
    gpu_type: str | None = None
    min_gpu_memory: int | None = None


def parse_resources(text: str) -> Resources:
    """Read a compact resource string: NODESxGPUSxMODEL[-MEM], parts optional from the left.

    Example:
        >>> parse_resources("2x4xA100-40G")
        Resources(nodes=2, gpus=4, gpu_type='A100', min_gpu_memory=40000000000)
        >>> parse_resources("4xA100"), parse_resources("8")
        (Resources(nodes=1, gpus=4, gpu_type='A100', min_gpu_memory=None), Resources(nodes=1, gpus=8, ...))

    Args:
        text: The string; spaces around the parts are ignored, the `x` may be upper case.

    Returns:
        The `Resources` it asks for.

    Raises:
        TypeError: `text` is not a string.
        ValueError: The string does not have the form; the message shows what it could not read and the forms
            that are accepted.
    """
    if not isinstance(text, str):
        raise TypeError(f"resources must be a string like '2x4xA100-40G', got {type(text).__name__} {text!r}")
    rest = text.strip()
    odd = next((ch for ch in rest if not (ch.isascii() and ch.isprintable())), None)
    if odd is not None:
        raise ValueError(
            f"resources {text!r}: {odd!r} is not a plain ASCII character (counts are written with 0-9); write {_FORMS}"
        )
    counts: list[int] = []
    while len(counts) < 2 and (match := _COUNT.match(rest)):
        counts.append(int(match.group(1)))
        rest = rest[match.end() :]

    def bad(why: str) -> ValueError:
        return ValueError(f"resources {text!r}: {why}; write {_FORMS}")

    if not rest:
        if not counts:
            raise bad("it is empty")
        raise bad(f"it ends with 'x' where the GPU model should be (e.g. '{text.strip()}A100')")
    if len(counts) == 2 and (_NUMBER.fullmatch(rest) or _COUNT.match(rest)):
        raise bad("it has three numbers; at most NODESxGPUS come before the model")
    model: str | None = None
    memory: int | None = None
    if _NUMBER.fullmatch(rest):  # the last part is a number: the GPU count
        counts.append(int(rest))
    else:
        model, memory = _model_and_memory(rest, bad)
        if not counts:
            counts = [1]  # "A100" is one of them
    nodes, gpus = (1, counts[0]) if len(counts) == 1 else (counts[0], counts[1])
    if nodes < 1:
        raise bad("the node count must be at least 1")
    if gpus < 1:
        raise bad("the GPU count must be at least 1 (leave resources out for a CPU run)")
    if nodes > MAX_COUNT or gpus > MAX_COUNT:
        raise bad(f"a count is above {MAX_COUNT}")
    return Resources(nodes=nodes, gpus=gpus, gpu_type=model, min_gpu_memory=memory)


def _model_and_memory(rest: str, bad: Callable[[str], ValueError]) -> tuple[str, int | None]:
    """ "A100-40G" as ("A100", 40 GB); "A100" as ("A100", None)."""
    memory: int | None = None
    model = rest
    match = _MEMORY.match(rest)
    if match:
        model, number, unit = match.group(1), match.group(2), match.group(3).lower()
        scale = 1 << 30 if unit == "gib" else 10**9
        memory = int(number) * scale if _NUMBER.fullmatch(number) else int(float(number) * scale)
        if memory <= 0:
            raise bad("the GPU memory must be more than 0")
    elif rest.startswith("-"):
        raise bad(f"{rest!r} starts with '-': counts cannot be negative, and a GPU model does not start with '-'")
    elif found := _MEMORY_LIKE.search(rest):
        number, unit = found.group(1), found.group(2)
        if unit.lower() in _MEMORY_UNITS:
            said = f"{number}{unit}"
            why = "has no unit" if not unit else f"is in {unit}, not G, GB or GiB"
            raise bad(f"the GPU memory {said!r} {why}: write {number}G (GB, as GPUs are sold) or {number}GiB")
    model = model.strip()
    if not model:
        raise bad("the GPU model is missing before the memory (e.g. 'A100-40G')")
    if model[0] in "xX":
        raise bad(f"the GPU model {model!r} starts with {model[0]!r}: a count is missing before it (e.g. '1x4')")
    if model[0] == "-":
        raise bad(f"the GPU model {model!r} starts with '-'")
    if model.endswith("-"):
        raise bad(f"the GPU model {model!r} ends with '-': the memory is missing after it (e.g. 'A100-40G')")
    if "," in model:
        raise bad(f"one GPU model only, got {model!r} (pass gpu_type=[...] for a choice of models)")
    return model, memory
