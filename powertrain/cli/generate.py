"""``powertrain run`` and ``powertrain chat``: generation from the terminal, traced."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from powertrain.cli._common import (
    config_option,
    err_console,
    friendly_errors,
    json_option,
    load,
    print_json,
)
from powertrain.client import AsyncClient


def _params(temperature: float | None, max_tokens: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    return params


def generation_options(fn: Any) -> Any:
    fn = click.option("-m", "--model", default=None, help="Catalog model (default: smollm2).")(fn)
    fn = click.option("--system", default=None, help="System prompt.")(fn)
    fn = click.option("-t", "--temperature", type=float, default=None)(fn)
    fn = click.option("--max-tokens", type=int, default=None)(fn)
    return config_option(fn)


@click.command()
@click.argument("prompt", required=False)
@generation_options
@json_option
@friendly_errors
def run(
    prompt: str | None,
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Stream one answer to PROMPT (or stdin). The call is traced like any other."""
    if prompt is None:
        if sys.stdin.isatty():
            raise click.UsageError("give a PROMPT argument or pipe one on stdin")
        prompt = sys.stdin.read()
    asyncio.run(_run(prompt, model, system, _params(temperature, max_tokens), config_path, as_json))


async def _run(
    prompt: str,
    model: str | None,
    system: str | None,
    params: dict[str, Any],
    config_path: str | None,
    as_json: bool,
) -> None:
    async with AsyncClient(load(config_path), source="cli") as client:
        if as_json:
            reply = await client.chat(prompt, model=model, system=system, **params)
            print_json(
                {
                    "text": reply.text,
                    "trace_id": reply.trace_id,
                    "model": reply.model,
                    "finish_reason": reply.finish_reason,
                    "usage": reply.usage.to_openai(),
                }
            )
            return
        async for piece in client.stream(prompt, model=model, system=system, **params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        err_console.print(f"[dim]trace {client.last_trace_id}[/dim]")


@click.command()
@generation_options
@friendly_errors
def chat(
    model: str | None,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    config_path: str | None,
) -> None:
    """Chat interactively, keeping the conversation as history.

    Type /reset to forget the history, /exit (or Ctrl-D) to leave.
    """
    asyncio.run(_chat(model, system, _params(temperature, max_tokens), config_path))


async def _chat(
    model: str | None, system: str | None, params: dict[str, Any], config_path: str | None
) -> None:
    async with AsyncClient(load(config_path), source="cli") as client:
        name = model or client.config.settings.default_model
        err_console.print(f"[bold]powertrain chat[/bold] with {name} — /reset, /exit")
        history: list[dict[str, Any]] = []
        if system:
            history.append({"role": "system", "content": system})
        while True:
            try:
                line = await asyncio.to_thread(input, "> ")
            except EOFError:
                sys.stdout.write("\n")
                return
            text = line.strip()
            if not text:
                continue
            if text in ("/exit", "/quit"):
                return
            if text == "/reset":
                history = history[:1] if system else []
                err_console.print("[dim]history cleared[/dim]")
                continue
            history.append({"role": "user", "content": text})
            parts: list[str] = []
            async for piece in client.stream(list(history), model=model, **params):
                parts.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            history.append({"role": "assistant", "content": "".join(parts)})
