"""``powertrain ingest``, ``search`` and ``ask``: collections from the terminal.

The CLI works on the store directly (no server needed) as the admin key's
collections, the same ones the server shows the admin key.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from powertrain.cli._common import (
    config_option,
    console,
    err_console,
    friendly_errors,
    json_option,
    load,
    print_json,
    with_client,
)
from powertrain.client import AsyncClient
from powertrain.rag.answer import DEFAULT_THRESHOLD, answer
from powertrain.store.collections import ADMIN_OWNER


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("-c", "--collection", required=True, help="Collection name (created if new).")
@click.option("--include", multiple=True, help="Glob of files to take (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of files to skip (repeatable).")
@click.option("--remove-missing", is_flag=True, help="Delete documents whose file is gone.")
@click.option("--embedding-model", default=None, help="For a new collection (default: minilm).")
@config_option
@json_option
@friendly_errors
def ingest(
    path: Path,
    collection: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    remove_missing: bool,
    embedding_model: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Add PATH (a file or a directory of .md, .txt, .html, .pdf) to a collection.

    Unchanged files are skipped, changed ones replace their chunks.

    \b
    Example:
      powertrain ingest docs/ --collection handbook --exclude '**/drafts/**'
    """

    async def work(client: AsyncClient) -> Any:
        gateway = client.gateway
        record = await asyncio.to_thread(
            gateway.collections.get_or_create,
            ADMIN_OWNER,
            collection,
            embedding_model=embedding_model,
        )
        with Progress(
            TextColumn("[bold]ingest[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=err_console,
            transient=as_json,
            disable=as_json,
        ) as bar:
            task_id = bar.add_task("", total=None)

            def progress(name: str, done: int, total: int) -> None:
                bar.update(task_id, completed=done, total=total, description=escape(name))

            return await gateway.ingester.ingest_path(
                record,
                path,
                include=include or ("**/*",),
                exclude=exclude,
                remove_missing=remove_missing,
                progress=progress,
            )

    report = with_client(load(config_path), work)
    if as_json:
        print_json({"collection": collection, **report.as_dict()})
        return
    console.print(
        f"{collection}: {len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} unchanged, {len(report.removed)} removed, "
        f"{report.chunks} chunks written"
    )
    for failed, reason in report.failed:
        err_console.print(f"[red]skipped[/red] {escape(failed)}: {escape(reason)}")
    if report.failed:
        raise SystemExit(1)


@click.command()
@click.argument("collection")
@click.argument("query")
@click.option("-k", default=5, show_default=True, help="How many chunks.")
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "vector", "keyword"]),
    default="hybrid",
    show_default=True,
)
@click.option("--threshold", type=float, default=None, help="Least cosine similarity.")
@click.option("--mmr", type=float, default=None, help="Diversity 0-1 (maximal marginal relevance).")
@click.option("--path", "paths", multiple=True, help="Only documents matching this glob.")
@config_option
@json_option
@friendly_errors
def search(
    collection: str,
    query: str,
    k: int,
    mode: str,
    threshold: float | None,
    mmr: float | None,
    paths: tuple[str, ...],
    config_path: str | None,
    as_json: bool,
) -> None:
    """The chunks of COLLECTION that best match QUERY.

    \b
    Example:
      powertrain search handbook "how do I reset my password" -k 3
    """

    async def work(client: AsyncClient) -> Any:
        gateway = client.gateway
        record = await asyncio.to_thread(gateway.collections.get, ADMIN_OWNER, collection)
        return await gateway.searcher.search(
            record,
            query,
            k=k,
            mode=mode,  # type: ignore[arg-type]
            threshold=threshold,
            mmr=mmr,
            paths=list(paths) or None,
        )

    hits = with_client(load(config_path), work)
    if as_json:
        print_json([hit.as_dict() for hit in hits])
        return
    if not hits:
        console.print("no matching chunks")
        return
    table = Table(title=f"{collection}: {query}")
    for column in ("#", "score", "source", "text"):
        table.add_column(column, overflow="fold")
    for hit in hits:
        chunk = hit.chunk
        where = chunk.path + (f" > {' > '.join(chunk.heading_path)}" if chunk.heading_path else "")
        if chunk.page is not None:
            where += f" p.{chunk.page}"
        snippet = " ".join(chunk.text.split())
        table.add_row(str(hit.rank), f"{hit.score:.3f}", escape(where), escape(snippet[:300]))
    console.print(table)


@click.command()
@click.argument("collection")
@click.argument("question")
@click.option("-m", "--model", default=None, help="Chat model (default: smollm2).")
@click.option("-k", default=4, show_default=True, help="Sources to show the model.")
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Least cosine similarity of a source.",
)
@config_option
@json_option
@friendly_errors
def ask(
    collection: str,
    question: str,
    model: str | None,
    k: int,
    threshold: float,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Answer QUESTION from COLLECTION, citing the sources it used.

    \b
    Example:
      powertrain ask handbook "How do I reset my password?"
    """

    async def work(client: AsyncClient) -> Any:
        gateway = client.gateway
        record = await asyncio.to_thread(gateway.collections.get, ADMIN_OWNER, collection)
        return await answer(gateway, record, question, k=k, threshold=threshold, model=model)

    result = with_client(load(config_path), work)
    if as_json:
        print_json(
            {
                "answer": result.text,
                "found": result.found,
                "cited": result.cited,
                "sources": [hit.as_dict() for hit in result.sources],
                "trace_id": result.trace_id,
            }
        )
        return
    console.print(result.text)
    for n, hit in enumerate(result.sources, 1):
        mark = "*" if n in result.cited else " "
        page = f" p.{hit.chunk.page}" if hit.chunk.page is not None else ""
        err_console.print(
            f"[dim]{mark}[{n}] {escape(hit.chunk.path)}{page} ({hit.score:.2f})[/dim]"
        )
    if result.trace_id:
        err_console.print(f"[dim]trace {result.trace_id}[/dim]")
