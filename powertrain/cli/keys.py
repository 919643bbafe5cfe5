"""``powertrain keys``: create, list, change and revoke virtual API keys.

Like ``powertrain logs``, these work on the store directly (no server needed),
with the admin's authority. A running server sees a new key at once, and a
change or revocation within its key cache window (5 s).
"""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from powertrain.access import KeyService
from powertrain.access.views import KeyCreated, KeyInfo, check_models_exist
from powertrain.cli._common import (
    config_option,
    console,
    err_console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.config import Config
from powertrain.errors import InvalidRequest, NotFound
from powertrain.store import Database, KeyStore
from powertrain.store.keys import ApiKeyRecord

_UNLIMITED = ("none", "unlimited")


class _Limit(click.ParamType[Any, Any]):
    """A positive number, or "none" to lift the limit."""

    name = "number|none"

    def __init__(self, kind: type[int] | type[float]) -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or isinstance(value, int | float):
            return value
        if str(value).lower() in _UNLIMITED:
            return _UNLIMITED[0]
        try:
            number = self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a number (or 'none')", param, ctx)
        if number < 0 or (self.kind is int and number == 0):
            self.fail(f"{value!r} must be positive", param, ctx)
        return number


def _names(values: tuple[str, ...]) -> list[str] | None:
    """``--models a,b --models c`` as ["a", "b", "c"]; None when the option was not given."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _service(config: Config) -> KeyService:
    return KeyService(KeyStore(Database(config.settings.resolved_database_url)))


def _find(service: KeyService, ref: str) -> ApiKeyRecord:
    """A key by id, or by name when exactly one live key has it."""
    record = service.store.get(ref)
    if record is not None:
        return record
    named = [k for k in service.store.list_keys(include_revoked=False) if k.name == ref]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(k.id for k in named)
        raise InvalidRequest(f"{len(named)} keys are named {ref!r} ({ids}); use the id")
    raise NotFound(f"no API key with id or name {ref!r}; `powertrain keys list` shows them")


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return "$" + (f"{value:.6f}".rstrip("0").rstrip(".") if value else "0")


def _limits(options: dict[str, Any]) -> dict[str, Any]:
    """The store's fields from the options given ("none" lifts a limit)."""
    names = {"rpm": "rpm", "tpm": "tpm", "budget": "budget_usd"}
    return {
        names[k]: (None if v == _UNLIMITED[0] else v) for k, v in options.items() if v is not None
    }


@click.group()
def keys() -> None:
    """Virtual API keys: each with its own models, rate limits and spend budget.

    Keys work once authentication is on (POWERTRAIN_ADMIN_KEY is set).

    \b
    Example:
      powertrain keys create --name web-app --rpm 60 --tpm 40000 --budget 25 --models gpt-4o-mini
      powertrain keys list
      powertrain keys revoke web-app
    """


_MODELS_HELP = "Models it may call, comma-separated or repeated (default: every model)."
_TASKS_HELP = "Tasks it may run, comma-separated or repeated (default: every task)."


@keys.command("create")
@click.option("--name", required=True, help="A label for people (need not be unique).")
@click.option("--rpm", type=_Limit(int), default=None, help="Requests per minute.")
@click.option("--tpm", type=_Limit(int), default=None, help="Tokens per minute (in + out).")
@click.option("--budget", type=_Limit(float), default=None, help="Spend budget in USD.")
@click.option("--models", multiple=True, help=_MODELS_HELP)
@click.option("--tasks", multiple=True, help=_TASKS_HELP)
@config_option
@json_option
@friendly_errors
def create(
    name: str,
    rpm: Any,
    tpm: Any,
    budget: Any,
    models: tuple[str, ...],
    tasks: tuple[str, ...],
    config_path: str | None,
    as_json: bool,
) -> None:
    """Make a key and print it (once: only its hash is stored).

    The key alone goes to stdout, so KEY=$(powertrain keys create --name ci) works.
    """
    config = load(config_path)
    allowed_models = _names(models)
    check_models_exist(config.catalog, allowed_models)
    record, secret = _service(config).create(
        name,
        allowed_models=allowed_models,
        allowed_tasks=_names(tasks),
        **_limits({"rpm": rpm, "tpm": tpm, "budget": budget}),
    )
    created = KeyCreated(**KeyInfo.of(record).model_dump(), key=secret)
    if as_json:
        print_json(created.model_dump(mode="json"))
        return
    click.echo(secret)
    err_console.print(
        f"created {record.id} ({escape(name)}). Store the key now: it is not saved and "
        "cannot be shown again."
    )
    if not config.settings.admin_key:
        err_console.print(
            "[yellow]note:[/yellow] keys take effect once authentication is on "
            "(set POWERTRAIN_ADMIN_KEY)"
        )


@keys.command("list")
@click.option("--active", is_flag=True, help="Leave out revoked keys.")
@config_option
@json_option
@friendly_errors
def list_keys(active: bool, config_path: str | None, as_json: bool) -> None:
    """Every key: its limits, spend and what is left of its budget."""
    records = _service(load(config_path)).store.list_keys(include_revoked=not active)
    infos = [KeyInfo.of(r) for r in records]
    if as_json:
        print_json([i.model_dump(mode="json") for i in infos])
        return
    if not infos:
        console.print("no keys yet: `powertrain keys create --name <name>` makes one")
        return
    table = Table(title="API keys")
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("prefix", no_wrap=True)
    for column in ("rpm", "tpm", "budget", "spend", "left"):
        table.add_column(column, justify="right", no_wrap=True)
    for column in ("models", "tasks", "created", "last used", "revoked"):
        table.add_column(column)
    for i in infos:
        table.add_row(
            i.id,
            escape(i.name),
            i.prefix + "…",
            str(i.rpm or "-"),
            str(i.tpm or "-"),
            _usd(i.budget_usd),
            _usd(i.spend_usd),
            _usd(i.remaining_usd),
            escape(", ".join(i.models)) if i.models is not None else "all",
            escape(", ".join(i.tasks)) if i.tasks is not None else "all",
            i.created_at.strftime("%Y-%m-%d %H:%M"),
            i.last_used_at.strftime("%Y-%m-%d %H:%M") if i.last_used_at else "",
            f"[red]{i.revoked_at:%Y-%m-%d %H:%M}[/red]" if i.revoked_at else "",
        )
    console.print(table)


@keys.command("update")
@click.argument("key")
@click.option("--name", default=None, help="A new label.")
@click.option("--rpm", type=_Limit(int), default=None, help="Requests per minute, or none.")
@click.option("--tpm", type=_Limit(int), default=None, help="Tokens per minute, or none.")
@click.option("--budget", type=_Limit(float), default=None, help="Budget in USD, or none.")
@click.option("--models", multiple=True, help="Models it may call (replaces the list).")
@click.option("--all-models", is_flag=True, help="Let it call every model.")
@click.option("--tasks", multiple=True, help="Tasks it may run (replaces the list).")
@click.option("--all-tasks", is_flag=True, help="Let it run every task.")
@config_option
@json_option
@friendly_errors
def update(
    key: str,
    name: str | None,
    rpm: Any,
    tpm: Any,
    budget: Any,
    models: tuple[str, ...],
    all_models: bool,
    tasks: tuple[str, ...],
    all_tasks: bool,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Change KEY's (id or name) limits, budget or allowed models and tasks.

    \b
    Example:
      powertrain keys update web-app --budget 50 --rpm none
    """
    config = load(config_path)
    service = _service(config)
    record = _find(service, key)
    changes = _limits({"rpm": rpm, "tpm": tpm, "budget": budget})
    if name is not None:
        changes["name"] = name
    if models or all_models:
        changes["allowed_models"] = None if all_models else _names(models)
        check_models_exist(config.catalog, changes["allowed_models"])
    if tasks or all_tasks:
        changes["allowed_tasks"] = None if all_tasks else _names(tasks)
    if not changes:
        raise InvalidRequest("nothing to change; see `powertrain keys update --help`")
    updated = service.update(record.id, **changes)
    assert updated is not None
    if as_json:
        print_json(KeyInfo.of(updated).model_dump(mode="json"))
        return
    console.print(f"updated {updated.id} ({escape(updated.name)})")


@keys.command("revoke")
@click.argument("key")
@config_option
@json_option
@friendly_errors
def revoke(key: str, config_path: str | None, as_json: bool) -> None:
    """Revoke KEY (its id, or its name if only one live key has it).

    Running servers refuse it within their key cache window (5 s).
    """
    service = _service(load(config_path))
    revoked = service.revoke(_find(service, key).id)
    assert revoked is not None
    if as_json:
        print_json(KeyInfo.of(revoked).model_dump(mode="json"))
        return
    console.print(f"revoked {revoked.id} ({escape(revoked.name)})")
