"""``powertrain models`` and ``powertrain settings``."""

from __future__ import annotations

import click
from rich.table import Table

from powertrain.catalog_sync import RegisteredModels
from powertrain.cli._common import (
    config_option,
    console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.config import url_password
from powertrain.settings import Settings
from powertrain.store import Database
from powertrain.store.finetune import FineTuneStore

_BUNDLED = {
    "llamacpp": "(bundled SmolLM2-135M-Instruct)",
    "sentence-transformers": "(bundled all-MiniLM-L6-v2)",
}


@click.command()
@config_option
@json_option
@friendly_errors
def models(config_path: str | None, as_json: bool) -> None:
    """List the model catalog: engine, model, context window, prices per 1M tokens.

    Models that fine-tuning registered in the store are listed too."""
    config = load(config_path)
    catalog = config.catalog
    database = Database(config.settings.resolved_database_url)
    try:
        configured = {m.alias for m in catalog}
        RegisteredModels(catalog, FineTuneStore(database)).load()
        registered = {m.alias for m in catalog} - configured
    finally:
        database.dispose()
    rows = [
        {**m.model_dump(exclude={"api_key", "options"}), "registered": m.alias in registered}
        for m in catalog
    ]
    if as_json:
        print_json(rows)
        return
    table = Table(title="models")
    for column in ("alias", "engine", "model", "context", "$ in /1M", "$ out /1M"):
        table.add_column(column, justify="right" if column.startswith("$") else "left")
    for m in catalog:
        table.add_row(
            m.alias + (" [dim](fine-tuned)[/dim]" if m.alias in registered else ""),
            m.engine,
            m.model or _BUNDLED.get(m.engine, "(bundled)"),
            str(m.context_window or "?"),
            f"{m.price_input:g}",
            f"{m.price_output:g}",
        )
    console.print(table)


@click.command()
@config_option
@json_option
@friendly_errors
def settings(config_path: str | None, as_json: bool) -> None:
    """Show every setting: its value, default and meaning ([settings] or POWERTRAIN_<NAME>)."""
    current = load(config_path).settings
    rows: list[dict[str, str | None]] = []
    for name, default, help_text in Settings.describe():
        value = getattr(current, name)
        if name == "admin_key" and value:
            value = "(set)"  # never print a secret
        password = url_password(value) if name == "redis_url" else None
        if password:
            value = str(value).replace(password, "***")
        rows.append(
            {
                "name": name,
                "value": None if value is None else str(value),
                "default": None if default is None else str(default),
                "help": help_text,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table(title="settings")
    for column in ("name", "value", "env", "help"):
        table.add_column(column)
    for row in rows:
        name = str(row["name"])
        table.add_row(name, row["value"] or "", "POWERTRAIN_" + name.upper(), row["help"])
    console.print(table)
