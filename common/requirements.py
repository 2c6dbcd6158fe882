"""Validating a run's `requirements` (pip requirement lines): shared by the scheduler, which refuses a
bad spec at submit, and the agent, which builds the environment (agent/envcache.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_REQUIREMENTS = 1000
MAX_REQUIREMENT_CHARS = 2000

_INLINE_COMMENT = re.compile(r"(^|\s)#.*$")  # pip's own rule: '#' at the start or after blanks
_OPTION = re.compile(r"(^|\s)-")  # '-e', '--index-url', and per-line ones like 'pkg --config-settings'
_LOCAL_PATH = re.compile(r"^[./~]|@\s*[./~]|file:", re.IGNORECASE)


def normalize_requirements(requirements: object) -> list[str]:
    """Validated requirement lines, stripped, without blanks or comments, sorted, unique.

    Only package requirements pass ('numpy==2.1', 'foo[extra]>=1; python_version>"3.9"',
    'pkg @ https://...'). Anything that makes pip reach elsewhere is refused with a
    ValueError saying what to fix: options ('-e', '--index-url', '-r other.txt', '-c', ...,
    which the agent's own pip_args alone may set), local paths and file: URLs (files on the
    agent, and their content would not be part of the cache key), '${VAR}' (pip expands the
    agent's environment variables), a trailing backslash (joins the next line) and lines with
    a newline or other control character inside.
    """
    if isinstance(requirements, (str, bytes)) or not isinstance(requirements, Sequence):
        raise ValueError(
            f"requirements must be a list of strings such as ['numpy==2.1'], not {type(requirements).__name__}"
        )
    if len(requirements) > MAX_REQUIREMENTS:
        raise ValueError(f"requirements has {len(requirements)} lines; at most {MAX_REQUIREMENTS} are allowed")
    lines: set[str] = set()
    for i, item in enumerate(requirements):
        where = f"requirements[{i}]"
        if not isinstance(item, str):
            raise ValueError(f"{where} must be a string such as 'numpy==2.1', not {type(item).__name__}")
        line = item.strip()
        if len(line) > MAX_REQUIREMENT_CHARS:
            raise ValueError(f"{where} is {len(line)} characters long; at most {MAX_REQUIREMENT_CHARS} are allowed")
        if any(ch in "\n\r" or (ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in line):
            raise ValueError(
                f"{where} = {line!r} has a newline or control character inside; give one requirement per list item"
            )
        line = _INLINE_COMMENT.sub("", line).strip()
        if not line:
            continue
        if _OPTION.search(line):
            raise ValueError(
                f"{where} = {line!r} is or carries a pip option; list packages only ('name==version'): "
                "indexes, links and other pip options come from the agent's configuration"
            )
        if line.endswith("\\"):
            raise ValueError(f"{where} = {line!r} ends with a backslash, which joins it to the next line; remove it")
        if "${" in line:
            raise ValueError(
                f"{where} = {line!r} refers to an environment variable ('${{...}}'); write the value itself"
            )
        if _LOCAL_PATH.search(line):
            raise ValueError(
                f"{where} = {line!r} points at a local path or file: URL on the agent; "
                "publish the package to an index the agent uses, or name a https:// URL"
            )
        lines.add(line)
    return sorted(lines)
