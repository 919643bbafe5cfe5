"""A small JSONPath subset: ``$``, ``.name``, ``['name']``, ``[0]``, ``[-1]``. Nothing else."""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")

MISSING = object()


class JsonPathError(ValueError):
    pass


def compile_path(path: str) -> list[str | int]:
    """The steps of ``path``; :class:`JsonPathError` for anything outside the subset."""
    if not path.startswith("$"):
        raise JsonPathError(f"JSON path {path!r} must start with $")
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            raise JsonPathError(
                f"JSON path {path!r}: cannot read {path[pos:]!r} (supported: .name, "
                "['name'], [index])"
            )
        name, index, quoted1, quoted2 = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(
                name if name is not None else (quoted1 if quoted1 is not None else quoted2)
            )
        pos = match.end()
    return steps


def resolve(value: Any, steps: list[str | int]) -> Any:
    """The value at ``steps``, or ``MISSING``."""
    for step in steps:
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return MISSING
            value = value[step]
        else:
            if not isinstance(value, dict) or step not in value:
                return MISSING
            value = value[step]
    return value
