"""Declared, typed task variables, and binding the values a caller sends to them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from powertrain.errors import InvalidRequest

VariableType = Literal["string", "integer", "number", "boolean", "array", "object"]

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


class VariableSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: VariableType = "string"
    required: bool = True
    default: Any = None
    description: str | None = None
    max_length: int | None = Field(
        default=None, ge=1, description="Most characters (string) or items (array)."
    )

    def check(self, name: str, value: Any, where: str) -> Any:
        expected = _PYTHON_TYPES[self.type]
        # JSON has no separate bool and int, but Python does: True is not a number here.
        is_bool = isinstance(value, bool)
        if not isinstance(value, expected) or (is_bool and self.type != "boolean"):
            raise InvalidRequest(
                f"{where}: variable {name!r} must be {self.type}, got {_json_type(value)}",
                param=f"variables.{name}",
            )
        limit = self.max_length
        if limit is not None and isinstance(value, str | list) and len(value) > limit:
            unit = "characters" if isinstance(value, str) else "items"
            raise InvalidRequest(
                f"{where}: variable {name!r} is {len(value)} {unit}, over its max_length "
                f"of {limit}",
                param=f"variables.{name}",
            )
        return value


def bind_variables(
    declared: dict[str, VariableSpec], given: dict[str, Any], *, where: str
) -> dict[str, Any]:
    """Check ``given`` against the declarations and fill in defaults."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise InvalidRequest(
            f"{where}: unknown variable {unknown[0]!r} (declared: {known})",
            param=f"variables.{unknown[0]}",
        )
    bound: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given and given[name] is not None:
            bound[name] = spec.check(name, given[name], where)
        elif spec.default is not None:
            bound[name] = spec.default
        elif spec.required:
            raise InvalidRequest(
                f"{where}: missing required variable {name!r}", param=f"variables.{name}"
            )
        else:
            bound[name] = None
    return bound


def _json_type(value: Any) -> str:
    for name, types in _PYTHON_TYPES.items():
        if isinstance(value, types) and not (isinstance(value, bool) and name != "boolean"):
            return name
    return "null" if value is None else type(value).__name__
