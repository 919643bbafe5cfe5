"""What every command shares: loading config, one-line errors, tables and --json."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console

from powertrain.client import AsyncClient
from powertrain.config import Config, load_config
from powertrain.errors import PowertrainError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Piped output is not cut to 80 columns: scripts and files get whole ids and values.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def config_option(fn: F) -> F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="powertrain.toml to use (default: ./powertrain.toml, or $POWERTRAIN_CONFIG).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


def load(config_path: str | None) -> Config:
    return load_config(config_path)


def friendly_errors(fn: F) -> F:
    """Turn a PowertrainError into one actionable line and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PowertrainError as exc:
            raise click.ClickException(exc.message) from None
        except KeyboardInterrupt:
            err_console.print("[dim]interrupted[/dim]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def with_client(config: Config, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Run ``work`` with a started client (config tasks synced), closing it afterwards."""

    async def main() -> T:
        async with AsyncClient(config, source="cli") as client:
            return await work(client)

    return asyncio.run(main())


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
