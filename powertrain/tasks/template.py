"""Prompt templates: Jinja2 in a sandbox, checked when a task is defined.

Values are passed to a compiled template as data, so template syntax inside a
variable (``{{ 7*7 }}``, ``{% include %}``) is printed as typed, never run. The
sandbox also keeps a template's own author away from Python internals.
"""

from __future__ import annotations

import functools
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from powertrain.errors import InvalidRequest

# Names every template may use besides its declared variables.
TEMPLATE_GLOBALS = frozenset({"output_schema", "documents"})

_ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined,
    autoescape=False,  # prompts are text, not HTML
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)


class TemplateInvalid(InvalidRequest):
    """A template does not parse, or uses a name it does not declare."""

    code = "invalid_template"


class RenderFailed(InvalidRequest):
    """A valid template failed while rendering (a missing key, a forbidden attribute)."""

    code = "template_render_failed"


@functools.lru_cache(maxsize=512)
def _parse(source: str) -> nodes.Template:
    return _ENV.parse(source)


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> Any:
    return _ENV.from_string(source)


def check_template(source: str, *, where: str, declared: set[str]) -> None:
    """Refuse a template that does not parse or reads an undeclared variable."""
    try:
        tree = _parse(source)
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        at = f" (line {line})" if line else ""
        raise TemplateInvalid(f"{where}: template syntax error{at}: {exc}") from None
    unknown = sorted(meta.find_undeclared_variables(tree) - declared - TEMPLATE_GLOBALS)
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise TemplateInvalid(
            f"{where}: the template uses {{{{ {unknown[0]} }}}} but the task declares no "
            f"variable {unknown[0]!r} (declared: {known}); add it under variables"
        )


def reads(source: str, name: str) -> bool:
    """Whether a (valid) template mentions ``name``."""
    return name in meta.find_undeclared_variables(_parse(source))


def render(source: str, values: dict[str, Any], *, where: str) -> str:
    """Render ``source`` with ``values``; every failure is one clear error."""
    try:
        return str(_compile(source).render(values))
    except SecurityError as exc:
        raise RenderFailed(
            f"{where}: the template did something the sandbox forbids: {exc}"
        ) from None
    except TemplateError as exc:
        raise RenderFailed(f"{where}: the template failed to render: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise RenderFailed(
            f"{where}: the template failed to render: {type(exc).__name__}: {exc}"
        ) from None
