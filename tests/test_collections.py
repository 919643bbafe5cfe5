"""Collections end to end on the bundled models: ingest, search, delete, ask, and tasks that retrieve."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

import powertrain
from powertrain.cli import main
from powertrain.config import Config
from powertrain.rag.vectors import FileVectors
from powertrain.store.collections import ADMIN_OWNER, NewChunk
from tests.conftest import config_from, running_app

pytestmark = pytest.mark.model

DOCS = {
    "guide/install.md": """# Installing Zephyrgate

## From source

Clone the repository and run `make serve`. The build needs a C compiler.

## Ports

Zephyrgate listens on port 8417 by default. Change it with the `--port` flag.
""",
    "guide/billing.md": """# Billing

Invoices are sent on the first day of each month. Refunds take five business days
to reach your card.
""",
    "notes/animals.txt": """Otters hold hands while they sleep so they do not drift apart.

Octopuses have three hearts and blue blood.
""",
    "site/faq.html": """<html><head><title>FAQ</title><script>var secret = 'not text';</script>
<style>p { color: red }</style></head><body><h1>Frequently asked</h1>
<p>The support line is open from 9 to 5 on weekdays.</p></body></html>""",
}


def write_docs(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for name, text in docs.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[powertrain.AsyncClient]:
    async with powertrain.AsyncClient(config_from(tmp_path)) as pt:
        yield pt


@pytest.fixture
async def any_store(database_url: str, tmp_path: Path) -> AsyncIterator[powertrain.AsyncClient]:
    """A client on SQLite (index files) and on Postgres (pgvector, when the server has it)."""
    settings = f'[settings]\ndatabase_url = "{database_url}"\n'
    async with powertrain.AsyncClient(config_from(tmp_path, settings)) as pt:
        expected = "pgvector" if database_url.startswith("postgresql") else "file"
        assert pt.gateway.collections.vectors.kind == expected
        yield pt


async def test_ingest_is_idempotent_and_search_finds_the_right_file(
    any_store: powertrain.AsyncClient, tmp_path: Path
) -> None:
    gateway = any_store.gateway
    docs = write_docs(tmp_path / "docs")
    record = gateway.collections.get_or_create(ADMIN_OWNER, "kb")
    first = await gateway.ingester.ingest_path(record, docs)
    assert sorted(first.added) == sorted(DOCS) and first.chunks >= 4 and not first.failed
    record = gateway.collections.get(ADMIN_OWNER, "kb")
    assert record.dim == 384
    pgvector = gateway.collections.store.pgvector
    if pgvector is not None:  # the collection's own HNSW index answers its searches
        assert pgvector.uses_index(record.id, 384)

    again = await gateway.ingester.ingest_path(record, docs)
    assert sorted(again.unchanged) == sorted(DOCS) and again.chunks == 0

    hits = await gateway.searcher.search(record, "which port does it listen on", k=3)
    assert hits[0].chunk.path == "guide/install.md"
    assert hits[0].chunk.heading_path[-1] == "Ports"
    keyword = await gateway.searcher.search(record, "octopuses hearts", k=2, mode="keyword")
    assert keyword[0].chunk.path == "notes/animals.txt" and keyword[0].keyword_rank == 1
    vector = await gateway.searcher.search(
        record, "when do I get my money back", k=2, mode="vector"
    )
    assert vector[0].chunk.path == "guide/billing.md"
    only_notes = await gateway.searcher.search(record, "port", k=3, paths=["notes/*"])
    assert {h.chunk.path for h in only_notes} <= {"notes/animals.txt"}
    html = await gateway.searcher.search(record, "support line hours", k=1)
    assert html[0].chunk.path == "site/faq.html" and "secret" not in html[0].chunk.text

    # A changed file replaces its chunks; a removed one is deleted with --remove-missing.
    (docs / "guide/billing.md").write_text("# Billing\n\nRefunds take ten business days.\n")
    (docs / "notes/animals.txt").unlink()
    third = await gateway.ingester.ingest_path(record, docs, remove_missing=True)
    assert third.updated == ["guide/billing.md"] and third.removed == ["notes/animals.txt"]
    gone = await gateway.searcher.search(record, "octopuses hearts", k=3)
    assert all(h.chunk.path != "notes/animals.txt" for h in gone)
    refund = await gateway.searcher.search(record, "refunds business days", k=1)
    assert "ten business days" in refund[0].chunk.text


async def test_deleting_removes_chunks_and_vectors(
    any_store: powertrain.AsyncClient, tmp_path: Path
) -> None:
    """RELIABILITY 20."""
    gateway = any_store.gateway
    vectors = gateway.collections.vectors
    record = gateway.collections.get_or_create(ADMIN_OWNER, "kb")
    await gateway.ingester.ingest_path(record, write_docs(tmp_path / "docs"))
    record = gateway.collections.get(ADMIN_OWNER, "kb")
    assert record.dim is not None
    before = vectors.count(record)
    assert before == gateway.collections.store.stats(record.id)[1]
    store = gateway.collections.store
    animals = next(d for d in store.list_documents(record.id) if d.path == "notes/animals.txt")
    assert await gateway.ingester.remove(record, "notes/animals.txt")
    assert vectors.count(record) == before - animals.chunk_count > 0
    for mode in ("vector", "keyword", "hybrid"):
        hits = await gateway.searcher.search(record, "otters octopuses", k=10, mode=mode)  # type: ignore[arg-type]
        assert all(h.chunk.path != "notes/animals.txt" for h in hits)
    gateway.collections.delete(ADMIN_OWNER, "kb")
    assert vectors.count(record) == 0
    if isinstance(vectors, FileVectors):
        assert not vectors.path(record).exists()
    with pytest.raises(powertrain.PowertrainError, match="no collection named 'kb'"):
        gateway.collections.get(ADMIN_OWNER, "kb")


async def _api(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.read()
        return resp.status, (json.loads(body) if body else None)


async def test_http_upload_search_delete_and_unsafe_paths(tmp_path: Path) -> None:
    config = config_from(tmp_path)
    async with running_app(config) as url, aiohttp.ClientSession() as http:
        base = f"{url}/api/collections"
        status, body = await _api(http, "POST", base, json={"name": "kb"})
        assert status == 201 and body["embedding_model"] == "minilm"
        status, _ = await _api(http, "POST", base, json={"name": "kb"})
        assert status == 409
        text = DOCS["guide/install.md"].encode()
        status, body = await _api(http, "PUT", f"{base}/kb/documents/guide/install.md", data=text)
        assert status == 200 and body["status"] == "added" and body["chunks"] >= 1
        status, body = await _api(http, "PUT", f"{base}/kb/documents/guide/install.md", data=text)
        assert body["status"] == "unchanged"
        status, body = await _api(
            http, "POST", f"{base}/kb/search", json={"query": "default port", "k": 2}
        )
        assert status == 200 and body["data"][0]["path"] == "guide/install.md"
        for unsafe in ["../escape.md", "%2e%2e/escape.md", "a/../../b.md", "/etc/passwd"]:
            status, body = await _api(http, "PUT", f"{base}/kb/documents/{unsafe}", data=b"x")
            assert status in (400, 404), (unsafe, status, body)
        status, body = await _api(
            http, "PUT", f"{base}/kb/documents/bad.pdf", data=b"%PDF-1.4 junk"
        )
        assert status == 400 and "bad.pdf" in body["error"]["message"]
        status, body = await _api(http, "GET", f"{base}/kb/documents")
        assert [d["path"] for d in body["data"]] == ["guide/install.md"]  # nothing half-written
        status, _ = await _api(http, "DELETE", f"{base}/kb/documents/guide/install.md")
        assert status == 204
        status, body = await _api(http, "POST", f"{base}/kb/search", json={"query": "port"})
        assert body["data"] == []
        status, body = await _api(http, "GET", f"{base}/nope")
        assert status == 404 and body["error"]["code"] == "collection_not_found"


def test_cli_ingest_search_and_ask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = write_docs(tmp_path / "docs")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(docs), "--collection", "kb", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert sorted(report["added"]) == sorted(DOCS)
    result = runner.invoke(main, ["search", "kb", "default port", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["path"] == "guide/install.md"

    result = runner.invoke(main, ["ask", "kb", "Which port does Zephyrgate listen on?", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["found"] and answer["trace_id"]
    assert answer["sources"][0]["path"] == "guide/install.md"
    assert "8417" in answer["answer"]

    result = runner.invoke(
        main, ["ask", "kb", "What is the capital of Mongolia?", "--json", "--threshold", "0.5"]
    )
    assert result.exit_code == 0, result.output
    nothing = json.loads(result.output)
    assert not nothing["found"] and nothing["trace_id"] is None
    assert "don't know" in nothing["answer"]

    result = runner.invoke(main, ["search", "missing", "x"])
    assert result.exit_code == 1 and "no collection named 'missing'" in result.output


def _qa_config(tmp_path: Path) -> Config:
    return config_from(
        tmp_path,
        """
[tasks.qa]
system = "You answer questions about Zephyrgate."
user = "{{ question }}"
variables = { question = "string" }
params = { temperature = 0, max_tokens = 64 }
[tasks.qa.retrieval]
collection = "kb"
k = 2
threshold = 0.3
""",
    )


async def test_a_task_retrieves_cites_and_admits_ignorance(tmp_path: Path) -> None:
    async with powertrain.AsyncClient(_qa_config(tmp_path)) as client:
        gateway = client.gateway
        record = gateway.collections.get_or_create(ADMIN_OWNER, "kb")
        await gateway.ingester.ingest_path(record, write_docs(tmp_path / "docs"))
        plan = await client.render_task("qa", {"question": "Which port is the default?"})
        system = plan.messages[0]["content"]
        assert "[1] guide/install.md > Installing Zephyrgate > Ports" in system
        result = await client.run_task("qa", {"question": "Which port is the default?"})
        trace = await client.trace(result.trace_id)
        assert trace is not None
        retrieved = trace.metadata["retrieval"]["chunks"]
        assert retrieved[0]["path"] == "guide/install.md" and retrieved[0]["score"] > 0.3

        nothing = await client.run_task("qa", {"question": "Who won the 1954 World Cup?"})
        assert "don't know" in nothing.output and nothing.attempts == 0
        trace = await client.trace(nothing.trace_id)
        assert trace is not None and trace.metadata["retrieval"]["chunks"] == []


async def test_one_key_cannot_reach_another_keys_collection(
    client: powertrain.AsyncClient, tmp_path: Path
) -> None:
    """RELIABILITY 9, at the library seam the HTTP routes use (virtual keys come with issue 5)."""
    from powertrain.rag.library import CollectionNotFound
    from powertrain.server.auth import Principal
    from powertrain.server.collections_api import owner_of

    collections = client.gateway.collections
    mine = collections.create("key_a", "private")
    assert collections.get("key_a", "private") == mine
    with pytest.raises(CollectionNotFound):
        collections.get("key_b", "private")
    with pytest.raises(CollectionNotFound):
        collections.delete("key_b", "private")
    assert collections.get("key_a", "private") == mine
    assert owner_of(Principal(key_id="key_a", admin=False)) == "key_a"
    assert owner_of(Principal(key_id="admin", admin=True)) == ADMIN_OWNER
    assert owner_of(Principal(key_id=None, admin=True)) == ADMIN_OWNER


async def test_a_damaged_index_file_is_rebuilt_from_the_store(
    client: powertrain.AsyncClient, tmp_path: Path
) -> None:
    gateway = client.gateway
    record = gateway.collections.get_or_create(ADMIN_OWNER, "kb")
    await gateway.ingester.ingest_path(record, write_docs(tmp_path / "docs"))
    record = gateway.collections.get(ADMIN_OWNER, "kb")
    assert record.dim is not None
    vectors = gateway.collections.vectors
    assert isinstance(vectors, FileVectors)
    vectors._indexes.clear()  # the ingest saved its index once, at the end
    saved = vectors.index(record, record.dim)
    assert len(saved) == gateway.collections.store.stats(record.id)[1]
    vectors.path(record).write_bytes(b"not an index")
    vectors._indexes.clear()  # as a freshly started worker would be
    hits = await gateway.searcher.search(record, "which port does it listen on", k=1, mode="vector")
    assert hits[0].chunk.path == "guide/install.md"


async def test_an_index_file_older_than_the_store_is_rebuilt(
    client: powertrain.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = client.gateway
    vectors = gateway.collections.vectors
    assert isinstance(vectors, FileVectors)
    record = gateway.collections.get_or_create(ADMIN_OWNER, "kb")
    await gateway.ingester.ingest_path(record, write_docs(tmp_path / "docs"))
    record = gateway.collections.get(ADMIN_OWNER, "kb")
    assert record.dim is not None

    # A saved file that matches the store is trusted as it is.
    vectors._indexes.clear()
    with monkeypatch.context() as patch:
        patch.setattr(vectors, "_rebuilt", lambda *a: pytest.fail("a matching file was rebuilt"))
        assert (
            len(vectors.index(record, record.dim)) == gateway.collections.store.stats(record.id)[1]
        )

    # A worker commits a document, then dies before saving the index file.
    text = "Walruses haul themselves out onto the sea ice with their long tusks."
    vector = (await gateway.collections.embed(record, [text]))[0]
    gateway.collections.store.replace_document(
        record.id,
        path="notes/walrus.txt",
        title="Walruses",
        media_type="text/plain",
        content_hash="walrus",
        size=len(text),
        metadata={},
        new_chunks=[NewChunk(text=text, idx=0, token_count=14, vector=vector.tobytes())],
    )
    vectors._indexes.clear()  # the next worker to start
    hits = await gateway.searcher.search(
        record, "which animal climbs onto ice using its tusks", k=1, mode="vector"
    )
    assert hits[0].chunk.path == "notes/walrus.txt"
