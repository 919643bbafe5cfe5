"""A collection end to end: ingest throughput, search latency at 10k/100k chunks, retrieval quality.

Run (from the repository root):

    .venv/bin/python -m bench.rag.pipeline                 # 10,000 and 100,000 chunks (~10 min, 2 cores)
    .venv/bin/python -m bench.rag.pipeline --quick         # 10,000 chunks only
    .venv/bin/python -m bench.rag.pipeline --json > pipeline.json

Everything goes through the library (``powertrain.AsyncClient(config).gateway``) with a
temporary ``POWERTRAIN_HOME``; nothing touches ``~/.powertrain``. Three measurements:

1. **Ingest**: this repository's own Markdown docs (README.md, docs/, bench/, examples/),
   copied to a temporary directory, into a fresh collection with the bundled MiniLM:
   files, chunks, wall seconds, chunks/s, and the share of that time spent embedding
   (re-embedding the same chunk texts directly through ``collections.embed``).
2. **Latency**: p50/p99 of ``searcher.search`` (hybrid, vector, keyword; k = 5) end to end,
   query embedding included, on collections of 10,000 and 100,000 chunks, plus the
   query embedding alone. The big collections are *synthetic* (embedding 100k chunks
   with MiniLM would take hours here): chunk texts are sentences sampled from the docs,
   written straight through ``CollectionStore.replace_document``; their vectors are real
   MiniLM embeddings of a few thousand such texts, each reused with a small random
   perturbation (renormalised). The index is then built from the stored vectors by
   ``collections.vectors.index`` and saved with ``vectors.persist``, as on first use.
3. **Quality**: ``bench/rag/queries.jsonl`` (questions written by reading the docs, each
   labelled with the document that answers it, and its heading when clear) against the
   docs collection of step 1: recall@1, recall@5 and MRR@10 by document, per mode, and
   section hit@5 (a hit among the top 5 chunks is in the labelled document *and* under
   the labelled heading).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.rag`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from bench.gateway.report import format_table
from bench.results import add_json_option, publish
from powertrain.store.collections import NewChunk

ROOT = Path(__file__).resolve().parents[2]
QUERIES = Path(__file__).resolve().parent / "queries.jsonl"
MODES = ("hybrid", "vector", "keyword")
K = 5  # chunks a latency query asks for
K_QUALITY = 10  # chunks a quality query asks for (MRR@10)
DOCS_GLOBS = ("README.md", "docs/*.md", "bench/**/*.md", "examples/**/*.md")
SYNTH_CHUNKS_PER_DOC = 50
SYNTH_NOISE = 0.025  # per-dimension std of the perturbation: cosine to its source ~0.9


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- corpus ----------------------------------------------------------------------------------


def copy_docs(dest: Path) -> list[str]:
    """Copy the repository's Markdown docs under ``dest``; their relative paths."""
    found: set[Path] = set()
    for pattern in DOCS_GLOBS:
        found.update(p for p in ROOT.glob(pattern) if p.is_file() and ".venv" not in p.parts)
    paths = []
    for source in sorted(found):
        relative = source.relative_to(ROOT)
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        paths.append(relative.as_posix())
    return paths


def sentences(root: Path) -> list[str]:
    """Prose sentences of the copied docs (code blocks and tables dropped)."""
    out: list[str] = []
    for file in sorted(root.rglob("*.md")):
        text = re.sub(r"```.*?```", " ", file.read_text(encoding="utf-8"), flags=re.S)
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("|")]
        prose = " ".join(ln.strip().lstrip("#-*> ").strip() for ln in lines)
        for sentence in re.split(r"(?<=[.!?])\s+", prose):
            if 30 <= len(sentence) <= 400:
                out.append(sentence)
    return list(dict.fromkeys(out))


def load_queries() -> list[dict[str, str]]:
    lines = QUERIES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# -- timing ----------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.asarray(samples, dtype=np.float64) * 1e3
    return {"p50 ms": float(np.percentile(ms, 50)), "p99 ms": float(np.percentile(ms, 99))}


async def timed(fn: Callable[[str], Awaitable[object]], queries: Sequence[str]) -> dict[str, float]:
    for query in queries[:10]:  # warm caches
        await fn(query)
    samples = []
    for query in queries:
        start = time.perf_counter()
        await fn(query)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


# -- the steps -------------------------------------------------------------------------------


async def ingest_docs(gateway: Any, owner: str, corpus: Path) -> tuple[Any, dict[str, Any]]:
    collections = gateway.collections
    record = collections.get_or_create(owner, "docs")
    start = time.perf_counter()
    await collections.embed(record, ["warm up"])  # load the model outside the timing
    load_s = time.perf_counter() - start
    embedding = [0.0]
    embed = collections.embed

    async def counted(record: Any, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        try:
            return await embed(record, texts)
        finally:
            embedding[0] += time.perf_counter() - start

    collections.embed = counted  # on the instance: the ingester's calls are timed
    start = time.perf_counter()
    try:
        report = await gateway.ingester.ingest_path(record, corpus, include=["**/*.md"])
    finally:
        del collections.embed
    wall = time.perf_counter() - start
    if report.failed:
        say(f"ingest failures: {report.failed}")
    record = collections.get(owner, "docs")
    # The texts the ingester embedded: title > headings, then the chunk's text.
    ids = [i for i, _ in collections.store.vectors(record.id)]
    chunks = collections.store.chunks(record.id, ids)
    texts = []
    for c in chunks:
        context = " > ".join([c.title, *c.heading_path])
        texts.append(f"{context}\n{c.text}" if context else c.text)
    start = time.perf_counter()
    for at in range(0, len(texts), 64):  # the ingester's batch size
        await collections.embed(record, texts[at : at + 64])
    embed_s = time.perf_counter() - start
    return record, {
        "files": len(report.added),
        "failed": len(report.failed),
        "chunks": report.chunks,
        "tokens": sum(c.token_count for c in chunks),
        "model load s": load_s,
        "wall s": wall,
        "chunks/s": report.chunks / wall if wall else None,
        "embed s (in ingest)": embedding[0],
        "embed share": embedding[0] / wall if wall else None,
        "embed s (re-run)": embed_s,
    }


def synthetic_texts(pool: list[str], n: int, rng: random.Random) -> list[str]:
    """``n`` chunk-sized texts (3-8 sentences) sampled from ``pool``."""
    return [" ".join(rng.sample(pool, rng.randint(3, 8))) for _ in range(n)]


async def seed_vectors(gateway: Any, record: Any, texts: list[str]) -> np.ndarray:
    out = []
    for at in range(0, len(texts), 64):
        out.append(await gateway.collections.embed(record, texts[at : at + 64]))
    return np.vstack(out)


def build_big(
    gateway: Any,
    owner: str,
    n: int,
    seed_texts: list[str],
    seeds: np.ndarray,
    rng: random.Random,
) -> tuple[Any, dict[str, Any]]:
    """A collection of ``n`` synthetic chunks written through the store, then indexed."""
    collections = gateway.collections
    record = collections.get_or_create(owner, f"synthetic-{n}")
    nprng = np.random.default_rng(n)
    dim = seeds.shape[1]
    start = time.perf_counter()
    for doc_no, at in enumerate(range(0, n, SYNTH_CHUNKS_PER_DOC)):
        count = min(SYNTH_CHUNKS_PER_DOC, n - at)
        picks = nprng.integers(0, len(seeds), count)
        vectors = seeds[picks] + SYNTH_NOISE * nprng.standard_normal((count, dim))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        chunks = []
        for i, pick in enumerate(picks):
            words = seed_texts[pick].split(". ")
            rng.shuffle(words)  # same sentences as its vector's source, another order
            chunks.append(
                NewChunk(
                    text=". ".join(words),
                    idx=i,
                    token_count=len(seed_texts[pick].split()),
                    heading_path=[f"section {i % 7}"],
                    vector=vectors[i].tobytes(),
                )
            )
        collections.store.replace_document(
            record.id,
            path=f"synthetic/{doc_no:06d}.md",
            title=f"Synthetic document {doc_no}",
            media_type="text/markdown",
            content_hash=f"{n}-{doc_no}",
            size=0,
            metadata={},
            new_chunks=chunks,
        )
    insert_s = time.perf_counter() - start
    if collections.store.db.dialect == "postgresql":
        # As autovacuum would have by the time anyone searches: fresh planner statistics
        # (without them Postgres picks the collection index over the primary key).
        with collections.store.db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE chunks"
            )
    vectors = collections.vectors
    start = time.perf_counter()
    collections.store.set_dim(record.id, dim)  # pgvector builds the collection's HNSW here
    record = collections.get(owner, record.name)
    kind = vectors.kind
    if kind == "file":  # the first use builds the index from the stored vectors
        kind = vectors.index(record, dim).kind
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors.persist(record)
    save_s = time.perf_counter() - start
    return record, {
        "chunks": n,
        "store insert s": insert_s,
        "store chunks/s": n / insert_s,
        "index build s": build_s,
        "index": kind,
        "index save s": save_s,
    }


async def latency(gateway: Any, record: Any, queries: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    searcher = gateway.searcher
    collections = gateway.collections
    for mode in MODES:

        async def run(q: str, mode: str = mode) -> object:
            return await searcher.search(record, q, k=K, mode=mode)

        out[mode] = await timed(run, queries)

    async def embed(q: str) -> object:
        return await collections.embed(record, [q])

    out["embed query"] = await timed(embed, queries)
    vectors = await collections.embed(record, queries[:100])
    samples = []
    for v in vectors:
        start = time.perf_counter()
        collections.vectors.search(record, v, K * 4, None)
        samples.append(time.perf_counter() - start)
    out["index only"] = percentiles(samples)
    samples = []
    for q in queries:
        start = time.perf_counter()
        collections.store.keyword_search(record.id, q, K * 8)
        samples.append(time.perf_counter() - start)
    out["fts only"] = percentiles(samples)
    return out


def _heading_match(heading: str, path: Sequence[str]) -> bool:
    want = heading.strip().lower()
    return any(want == h.strip().lower() or want in h.lower() for h in path)


async def quality(gateway: Any, record: Any, labelled: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    misses: dict[str, list[str]] = {}
    for mode in MODES:
        r1 = r5 = rr = 0.0
        sec5 = 0
        with_heading = 0
        misses[mode] = []
        for item in labelled:
            hits = await gateway.searcher.search(record, item["query"], k=K_QUALITY, mode=mode)
            docs = list(dict.fromkeys(h.chunk.path for h in hits))
            rank = docs.index(item["path"]) + 1 if item["path"] in docs else None
            r1 += rank == 1
            r5 += rank is not None and rank <= 5
            rr += 1.0 / rank if rank is not None else 0.0
            if rank != 1:
                misses[mode].append(f"{item['query']} -> {docs[:1]} (rank {rank})")
            if item.get("heading"):
                with_heading += 1
                sec5 += any(
                    h.chunk.path == item["path"]
                    and _heading_match(item["heading"], h.chunk.heading_path)
                    for h in hits[:5]
                )
        n = len(labelled)
        out[mode] = {
            "recall@1": r1 / n,
            "recall@5": r5 / n,
            "MRR@10": rr / n,
            "section hit@5": sec5 / with_heading if with_heading else None,
        }
    out["queries"] = len(labelled)
    out["queries with heading"] = sum(1 for q in labelled if q.get("heading"))
    out["misses@1"] = misses
    return out


# -- report ----------------------------------------------------------------------------------


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    number = float(value)  # type: ignore[arg-type]
    if number >= 100:
        return f"{number:,.0f}"
    return f"{number:.{digits}f}"


def render(doc: dict[str, Any]) -> str:
    out = []
    ing = doc["ingest"]
    rows = [
        [label, _fmt(ing[key], 3 if key == "embed share" else 2)]
        for label, key in (
            ("files", "files"),
            ("chunks", "chunks"),
            ("tokens", "tokens"),
            ("wall s", "wall s"),
            ("chunks/s", "chunks/s"),
            ("embedding s (inside ingest)", "embed s (in ingest)"),
            ("embedding share of wall", "embed share"),
            ("embedding the same texts again s", "embed s (re-run)"),
            ("model load s (not in wall)", "model load s"),
        )
    ]
    out += [format_table(["ingest: this repo's docs", "value"], rows), ""]
    lat = doc["latency"]
    sizes = list(lat)
    rows = []
    for mode in (*MODES, "embed query", "index only", "fts only"):
        for p in ("p50 ms", "p99 ms"):
            rows.append([f"{mode} {p}", *(_fmt(lat[s]["search"][mode][p]) for s in sizes)])
    for label in ("store insert s", "store chunks/s", "index", "index build s", "index save s"):
        rows.append([label, *(_fmt(lat[s]["build"][label]) for s in sizes)])
    heads = [f"N = {int(s):,}" for s in sizes]
    out += [format_table([f"search latency (k={K})", *heads], rows), ""]
    qual = doc["quality"]
    rows = [
        [metric, *(_fmt(qual[m][metric], 3) for m in MODES)]
        for metric in ("recall@1", "recall@5", "MRR@10", "section hit@5")
    ]
    title = f"quality ({qual['queries']} queries, by document)"
    out += [format_table([title, *MODES], rows), ""]
    meta = doc["meta"]
    out.append(
        f"  {meta['latency queries']} latency queries per mode after 10 warm-up; big collections "
        f"synthetic ({meta['seed texts']:,} MiniLM-embedded seed texts, perturbed); "
        f"section hit@5 over {qual['queries with heading']} queries with a heading; "
        f"{meta['seconds']} s in all; store: {meta.get('store', 'sqlite')}."
    )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rag.pipeline",
        description="Ingest throughput, search latency and retrieval quality of a collection.",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 chunks only")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated chunk counts")
    parser.add_argument("--queries", type=int, default=200, help="latency queries per mode")
    parser.add_argument("--seed-texts", type=int, default=1000, help="texts embedded for vectors")
    parser.add_argument(
        "--database-url",
        help="store URL (default: a SQLite file in a temporary home); a Postgres URL "
        "measures pgvector and Postgres full-text. The bench's collections are left there.",
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    return args


async def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    from powertrain import AsyncClient
    from powertrain.config import load_config
    from powertrain.store.collections import ADMIN_OWNER

    toml = home / "powertrain.toml"
    settings = f'[settings]\nhome = "{home / "home"}"\n'
    if args.database_url:
        settings += f'database_url = "{args.database_url}"\n'
    toml.write_text(settings, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POWERTRAIN_")}
    config = load_config(toml, environ=environ)
    assert config.settings.home == home / "home", config.settings.home
    corpus = home / "corpus"
    copy_docs(corpus)
    rng = random.Random(0)
    doc: dict[str, Any] = {"latency": {}}
    client = AsyncClient(config)
    async with client:
        gateway = client.gateway
        say("ingesting the docs…")
        record, doc["ingest"] = await ingest_docs(gateway, ADMIN_OWNER, corpus)
        say(f"  {doc['ingest']['chunks']} chunks in {doc['ingest']['wall s']:.1f} s")
        labelled = load_queries()
        say("quality…")
        doc["quality"] = await quality(gateway, record, labelled)
        pool = sentences(corpus)
        seed_texts = synthetic_texts(pool, args.seed_texts, rng)
        say(f"embedding {len(seed_texts):,} seed texts for synthetic vectors…")
        start = time.perf_counter()
        seeds = await seed_vectors(gateway, record, seed_texts)
        seed_s = time.perf_counter() - start
        say(f"  {seed_s:.1f} s ({len(seed_texts) / seed_s:.1f} texts/s)")
        # Latency queries: the labelled questions, then sentence fragments from the docs.
        queries = [q["query"] for q in labelled]
        while len(queries) < args.queries:
            words = rng.choice(pool).split()
            at = rng.randrange(max(1, len(words) - 8))
            queries.append(" ".join(words[at : at + rng.randint(3, 10)]))
        queries = queries[: args.queries]
        rng.shuffle(queries)
        for n in args.sizes:
            say(f"building a synthetic collection of {n:,} chunks…")
            big, build = await asyncio.to_thread(
                build_big, gateway, ADMIN_OWNER, n, seed_texts, seeds, rng
            )
            say(f"  insert {build['store insert s']:.1f} s, index {build['index build s']:.1f} s")
            say(f"timing searches at {n:,}…")
            doc["latency"][str(n)] = {
                "build": build,
                "search": await latency(gateway, big, queries),
            }
    doc["meta"] = {
        "store": config.settings.resolved_database_url.split(":", 1)[0].split("+")[0],
        "vectors": gateway.collections.vectors.kind,
        "seed texts": len(seed_texts),
        "seed embed s": seed_s,
        "sentence pool": len(pool),
        "latency queries": len(queries),
    }
    return doc


def versions() -> dict[str, str]:
    out = {}
    for package in ("powertrain", "usearch", "numpy", "sentence-transformers", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[package] = importlib.metadata.version(package)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="powertrain-pipeline-"))
    try:
        doc = asyncio.run(run(args, home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    doc["meta"].update(
        {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    saved = publish(doc, "rag-pipeline", lambda: render(doc), args.json)
    say(f"done in {doc['meta']['seconds']} s; results saved to {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
