"""``powertrain`` on the command line: a thin shell over the library."""

from __future__ import annotations

import click

from powertrain import __version__
from powertrain.cli import (
    dataset,
    feedback,
    finetune,
    generate,
    keys,
    logs,
    models,
    promote,
    rag,
    serve,
    task,
)
from powertrain.cli import eval as eval_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="powertrain")
def main() -> None:
    """powertrain: one OpenAI-compatible endpoint for any LLM, with traces.

    Runs offline on the bundled SmolLM2 model and a SQLite file by default.
    Configure models in ./powertrain.toml; settings also come from POWERTRAIN_*
    environment variables (see `powertrain settings`).
    """


for command in (
    serve.serve,
    generate.run,
    generate.chat,
    models.models,
    models.settings,
    logs.logs,
    task.task,
    rag.ingest,
    rag.search,
    rag.ask,
    keys.keys,
    feedback.feedback,
    dataset.dataset,
    eval_cli.eval_group,
    finetune.finetune,
    promote.promote,
):
    main.add_command(command)
