"""From ``[guardrails.<name>]`` tables and per-task lists to guardrail pipelines.

```toml
[guardrails.pii]
type = "pii"                 # a registered guardrail type
action = "redact"            # block | redact | flag (default: the type's own)
stages = ["input", "output"] # default: every stage the type supports
roles = ["user", "tool"]     # input messages it reads (default: user and tool)
global = true                # every request (default); false: only tasks listing it
categories = ["email", "card"]
```

A task lists extra guardrails by name, and may opt out of a global one with
``"!name"``. Every mistake is a one-line ``ConfigError`` naming the field.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from powertrain.errors import ConfigError
from powertrain.guard.base import Action, Guardrail, Stage
from powertrain.guard.pipeline import GuardPipeline
from powertrain.plugins import plugin_manager

COMMON_FIELDS = frozenset({"type", "action", "stages", "roles", "global", "description"})


def guardrail_types() -> dict[str, type[Guardrail]]:
    """Every registered guardrail type by its ``type_name``, built-ins and plugins alike."""
    found: dict[str, type[Guardrail]] = {}

    def register(cls: type[Guardrail]) -> None:
        name = getattr(cls, "type_name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"guardrail plugin class {cls.__name__} has no type_name")
        if name in found and found[name] is not cls:
            raise ConfigError(f"two plugins register a guardrail type named {name!r}")
        found[name] = cls

    plugin_manager().hook.register_guardrails(register=register)
    return found


class Options:
    """One guardrail's table, read field by field. Each reader names the field in its
    errors; ``unread`` lists what no reader asked for (a typo, usually)."""

    def __init__(
        self,
        cls: type[Guardrail],
        table: Mapping[str, Any],
        *,
        where: str,
        base_dir: Path | None = None,
    ):
        self.cls = cls
        self.table = table
        self.where = where
        self.base_dir = base_dir
        self._read: set[str] = set(COMMON_FIELDS)

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}.{field}: {message}")

    def get(self, field: str) -> Any:
        self._read.add(field)
        return self.table.get(field)

    @property
    def fields(self) -> frozenset[str]:
        """The fields read so far (after ``from_options``: every field the type knows)."""
        return frozenset(self._read)

    def unread(self) -> list[str]:
        return sorted(set(self.table) - self._read)

    def common(self) -> dict[str, Any]:
        """``action``, ``stages`` and ``roles``, checked against what the type supports."""
        out: dict[str, Any] = {}
        action = self.table.get("action")
        if action is not None:
            allowed = ", ".join(a.value for a in Action if a in self.cls.actions)
            if action not in {a.value for a in Action}:
                raise self.error("action", f"{action!r} is not an action (choose: {allowed})")
            if Action(action) not in self.cls.actions:
                raise self.error(
                    "action",
                    f"a {self.cls.type_name} guardrail cannot {action} (choose: {allowed})",
                )
            out["action"] = Action(action)
        stages = self.table.get("stages")
        if stages is not None:
            supported = sorted(s.value for s in self.cls.stages_supported)
            values = self._strings("stages", stages)
            bad = [s for s in values if s not in supported]
            if bad or not values:
                raise self.error(
                    "stages",
                    f"{bad[0]!r} is not a stage of a {self.cls.type_name} guardrail"
                    if bad
                    else "give at least one stage",
                ) from None
            out["stages"] = [Stage(s) for s in values]
        roles = self.table.get("roles")
        if roles is not None:
            out["roles"] = self._strings("roles", roles)
        return out

    def str_list(
        self, field: str, *, default: list[str] | None, choices: Iterable[str] | None = None
    ) -> list[str] | None:
        value = self.get(field)
        if value is None:
            return default
        values = self._strings(field, value)
        if choices is not None:
            known = set(choices)
            bad = [v for v in values if v not in known]
            if bad:
                raise self.error(field, f"{bad[0]!r} is not one of: {', '.join(sorted(known))}")
        return values

    def regex_list(self, field: str) -> list[str]:
        import re

        values = self.str_list(field, default=[]) or []
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise self.error(field, f"{value!r} is not a regular expression: {exc}") from None
        return values

    def number(
        self,
        field: str,
        *,
        default: float | None,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
    ) -> Any:
        value = self.get(field)
        if value is None:
            return default
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(field, f"must be {kind}, got {_json(value)}")
        if integer and not isinstance(value, int):
            raise self.error(field, f"must be {kind}, got {_json(value)}")
        if minimum is not None and value < minimum:
            raise self.error(field, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(field, f"must be at most {maximum}, got {value}")
        return value

    def function(self, field: str) -> Callable[..., Any] | None:
        """A callable given directly (Python API) or as ``"package.module:function"``."""
        value = self.get(field)
        if value is None:
            return None
        if callable(value):
            return cast(Callable[..., Any], value)
        if not isinstance(value, str) or value.count(":") != 1:
            raise self.error(field, 'must be "package.module:function"')
        module_name, attr = value.split(":")
        added = self.base_dir is not None and str(self.base_dir) not in sys.path
        if added:
            sys.path.insert(0, str(self.base_dir))
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise self.error(field, f"cannot import {module_name!r}: {exc}") from None
        finally:
            if added:
                sys.path.remove(str(self.base_dir))
        found = getattr(module, attr, None)
        if not callable(found):
            raise self.error(field, f"{value!r} is not a callable")
        return cast(Callable[..., Any], found)

    def topics(self, field: str) -> dict[str, list[str]]:
        value = self.get(field)
        if not isinstance(value, Mapping) or not value:
            raise self.error(field, "must be a table of topic = [keywords or phrases]")
        return {
            str(topic): self._strings(f"{field}.{topic}", words) for topic, words in value.items()
        }

    def schema(self, field: str) -> dict[str, Any]:
        value = self.get(field)
        file = self.get(f"{field}_file")
        if (value is None) == (file is None):
            raise self.error(field, f"give either {field} (a table) or {field}_file (a path)")
        if file is not None:
            path = Path(file) if self.base_dir is None else self.base_dir / file
            try:
                value = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                message = f"cannot read JSON from {str(path)!r}: {exc}"
                raise self.error(f"{field}_file", message) from None
        if not isinstance(value, Mapping):
            raise self.error(field, "must be a JSON Schema object")
        return dict(value)

    def _strings(self, field: str, value: Any) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(field, "must be a list of non-empty strings")
        return list(value)


def _json(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, str) else repr(value)


def build_guardrail(
    name: str,
    table: Mapping[str, Any],
    *,
    types: Mapping[str, type[Guardrail]] | None = None,
    where: str | None = None,
    base_dir: Path | None = None,
) -> Guardrail:
    """One guardrail from its config table."""
    where = where or f"guardrails.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table")
    types = types if types is not None else guardrail_types()
    type_name = table.get("type", name)
    cls = types.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise ConfigError(
            f"{where}.type: no guardrail type {type_name!r} (known: {', '.join(sorted(types))}; "
            f"plugins add more through register_guardrails)"
        )
    if not isinstance(table.get("global", True), bool):
        raise ConfigError(f"{where}.global: must be true or false")
    options = Options(cls, table, where=where, base_dir=base_dir)
    try:
        guardrail = cls.from_options(name, options)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unread = options.unread()
    if unread:
        raise ConfigError(
            f"{where}.{unread[0]}: unknown field for a {cls.type_name} guardrail (fields: "
            f"{', '.join(sorted(COMMON_FIELDS | options.fields - {'description'}))})"
        )
    return guardrail


@dataclass(frozen=True)
class GuardrailsConfig:
    """Every configured guardrail, and which of them apply to every request."""

    guardrails: dict[str, Guardrail]
    global_names: tuple[str, ...]

    @classmethod
    def parse(
        cls,
        table: Mapping[str, Any] | None,
        *,
        base_dir: Path | None = None,
        where: str = "guardrails",
    ) -> GuardrailsConfig:
        """Read the ``[guardrails]`` table (None or empty: no guardrails)."""
        if table is None:
            return cls({}, ())
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{where}] must be a table of guardrails")
        types = guardrail_types()
        guardrails: dict[str, Guardrail] = {}
        global_names: list[str] = []
        for name, entry in table.items():
            guardrails[name] = build_guardrail(
                name, entry, types=types, where=f"{where}.{name}", base_dir=base_dir
            )
            if entry.get("global", True):
                global_names.append(name)
        return cls(guardrails, tuple(global_names))

    def check_names(self, names: Any, *, where: str) -> list[str]:
        """A task's ``guardrails`` list, checked: names of configured guardrails, or
        ``"!name"`` to opt out of a global one."""
        if names is None:
            return []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where}: must be a list of guardrail names")
        for entry in names:
            name = entry.removeprefix("!")
            if name not in self.guardrails:
                known = ", ".join(sorted(self.guardrails)) or "none are configured"
                raise ConfigError(f"{where}: no guardrail named {name!r} (known: {known})")
            if entry.startswith("!") and name not in self.global_names:
                raise ConfigError(f"{where}: {entry!r} opts out of {name!r}, which is not global")
        return list(names)

    def pipeline(self, names: Sequence[str] | None = None, *, where: str = "task") -> GuardPipeline:
        """The pipeline for a request: the global guardrails in file order, minus the ones
        ``names`` opts out of, then the ones it adds, in its order."""
        listed = self.check_names(list(names) if names is not None else None, where=where)
        skipped = {n[1:] for n in listed if n.startswith("!")}
        chosen = [n for n in self.global_names if n not in skipped]
        chosen += [n for n in listed if not n.startswith("!") and n not in chosen]
        return GuardPipeline(self.guardrails[n] for n in chosen)
