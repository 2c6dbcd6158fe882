"""Helpers shared by the file loggers."""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace
from typing import Any


def to_float(value: Any) -> float:
    """A metric as a Python float (tensors and numpy scalars through .item())."""
    item = getattr(value, "item", None)
    return float(item() if callable(item) else value)


def next_version(root: str) -> int:
    """One more than the highest existing `version_<n>` under root, or 0."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    found = [
        int(n[8:])
        for n in names
        if n.startswith("version_") and n[8:].isdigit() and os.path.isdir(os.path.join(root, n))
    ]
    return max(found) + 1 if found else 0


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        return _scalar(item())
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value if isinstance(value, str) else str(value))


def to_yaml(params: dict[str, Any], indent: int = 0) -> str:
    """Simple block YAML for hyperparameters: nested dicts, lists, scalars; anything else as its str."""
    pad = "  " * indent
    lines = []
    for key, value in params.items():
        if isinstance(value, Namespace):
            value = vars(value)
        k = json.dumps(str(key))
        if isinstance(value, dict):
            lines.append(f"{pad}{k}:" + (" {}" if not value else ""))
            if value:
                lines.append(to_yaml(value, indent + 1).rstrip("\n"))
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{k}:" + (" []" if not value else ""))
            for item in value:
                if isinstance(item, dict) and item:
                    lines.append(f"{pad}  -")
                    lines.append(to_yaml(item, indent + 2).rstrip("\n"))
                else:
                    lines.append(f"{pad}  - {_scalar(item)}")
        else:
            lines.append(f"{pad}{k}: {_scalar(value)}")
    return "\n".join(lines) + "\n"
