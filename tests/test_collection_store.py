"""The collection store on SQLite and Postgres: ownership, atomic replace, real deletes, keywords."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from powertrain.store import CollectionStore, Database
from powertrain.store.collections import CollectionExists, NewChunk, keyword_terms


@pytest.fixture
def store(database_url: str) -> Iterator[CollectionStore]:
    db = Database(database_url)
    yield CollectionStore(db)
    db.dispose()


def _owner() -> str:
    return f"key_{uuid.uuid4().hex[:8]}"


def _replace(store: CollectionStore, cid: str, path: str, texts: list[str], digest: str = "h1"):  # type: ignore[no-untyped-def]
    return store.replace_document(
        cid,
        path=path,
        title=path,
        media_type="text/markdown",
        content_hash=digest,
        size=sum(len(t) for t in texts),
        metadata={"source": "test"},
        new_chunks=[
            NewChunk(
                text=t, idx=i, token_count=len(t.split()), heading_path=["Intro"], vector=bytes(8)
            )
            for i, t in enumerate(texts)
        ],
    )


def test_collections_belong_to_their_owner(store: CollectionStore) -> None:
    alice, bob = _owner(), _owner()
    mine = store.create(alice, "docs", embedding_model="minilm", settings={"chunk_tokens": 256})
    theirs = store.create(bob, "docs", embedding_model="minilm", settings={})  # same name, fine
    assert mine.id != theirs.id
    assert store.get(alice, "docs") == mine
    assert store.get(bob, "docs") == theirs
    assert [c.name for c in store.list_collections(alice)] == ["docs"]
    assert store.get(_owner(), "docs") is None  # a third key sees nothing
    with pytest.raises(CollectionExists):
        store.create(alice, "docs", embedding_model="minilm", settings={})
    store.set_dim(mine.id, 384)
    store.set_dim(mine.id, 768)  # the first dimension sticks
    found = store.get(alice, "docs")
    assert found is not None and found.dim == 384


def test_replace_is_atomic_and_keyword_index_follows(store: CollectionStore) -> None:
    owner = _owner()
    col = store.create(owner, "kb", embedding_model="minilm", settings={})
    first = _replace(
        store, col.id, "guide.md", ["install the gateway with make", "configure zebras"]
    )
    assert first.removed == [] and len(first.added) == 2
    assert store.document_hashes(col.id) == {"guide.md": "h1"}
    hits = store.keyword_search(col.id, "zebras", 5)
    assert [h[0] for h in hits] == [first.added[1]]

    second = _replace(store, col.id, "guide.md", ["giraffes only now"], digest="h2")
    assert second.removed == first.added
    assert second.document.created_at == first.document.created_at
    assert store.keyword_search(col.id, "zebras", 5) == []  # old chunks left the index
    assert [h[0] for h in store.keyword_search(col.id, "giraffes", 5)] == second.added

    # A failing replace leaves the previous chunks in place.
    with pytest.raises(sa.exc.IntegrityError):
        store.replace_document(
            col.id,
            path="guide.md",
            title="t",
            media_type="text/plain",
            content_hash="h3",
            size=1,
            metadata={},
            new_chunks=[NewChunk(text=None, idx=0, token_count=0)],  # type: ignore[arg-type]
        )
    assert [c.text for c in store.chunks(col.id, second.added)] == ["giraffes only now"]
    assert store.document_hashes(col.id) == {"guide.md": "h2"}


def test_deletes_remove_chunks_vectors_and_keywords(store: CollectionStore) -> None:
    """RELIABILITY 20: a deleted document leaves nothing behind."""
    owner = _owner()
    col = store.create(owner, "kb", embedding_model="minilm", settings={})
    kept = _replace(store, col.id, "a.md", ["apples are red"])
    gone = _replace(store, col.id, "b.md", ["bananas are yellow", "bananas again"])
    assert store.stats(col.id) == (2, 3)
    assert store.delete_document(col.id, "b.md") == gone.added
    assert store.delete_document(col.id, "b.md") is None
    assert store.keyword_search(col.id, "bananas", 5) == []
    assert store.chunks(col.id, gone.added) == []
    assert [i for i, _ in store.vectors(col.id)] == kept.added
    assert store.stats(col.id) == (1, 1)

    store.delete(col.id)
    assert store.get(owner, "kb") is None
    assert store.keyword_search(col.id, "apples", 5) == []
    assert store.vectors(col.id) == []


@pytest.mark.parametrize(
    "query",
    ['"', "NEAR(a b)", "*", "AND OR NOT", "'; DROP TABLE chunks; --", "a:b", "(", "^x", "\x00"],
)
def test_keyword_queries_are_data(store: CollectionStore, query: str) -> None:
    col = store.create(_owner(), "kb", embedding_model="minilm", settings={})
    _replace(store, col.id, "a.md", ["drop table chunks near the end"])
    hits = store.keyword_search(col.id, query, 5)  # never a syntax error
    assert all(isinstance(i, int) for i, _ in hits)
    assert store.stats(col.id) == (1, 1)


def test_chunks_come_back_in_the_order_asked_and_scoped(store: CollectionStore) -> None:
    owner = _owner()
    col = store.create(owner, "kb", embedding_model="minilm", settings={})
    other = store.create(_owner(), "kb", embedding_model="minilm", settings={})
    ids = _replace(store, col.id, "a.md", ["one", "two", "three"]).added
    assert [c.text for c in store.chunks(col.id, list(reversed(ids)))] == ["three", "two", "one"]
    assert store.chunks(other.id, ids) == []  # another collection's ids are not reachable
    chunk = store.chunks(col.id, ids[:1])[0]
    assert (chunk.path, chunk.heading_path, chunk.idx) == ("a.md", ["Intro"], 0)


def test_a_store_from_the_tasks_release_upgrades_in_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """RELIABILITY 21: the previous release's store migrates with its data."""
    from powertrain.store import TaskStore
    from powertrain.store.migrate import current_revision, head_revision, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = Database(url, migrate=False)
    upgrade(old.engine, "0002_create_tasks")
    TaskStore(old).create_task("keep", source="api", definition={"model": "m"})
    old.dispose()
    db = Database(url)
    assert current_revision(db.engine) == head_revision()
    assert TaskStore(db).get_task("keep") is not None
    assert "chunks_fts" in sa.inspect(db.engine).get_table_names()
    db.dispose()


def test_keyword_terms_drop_stopwords_unless_nothing_else_is_left() -> None:
    assert keyword_terms("How do I reset the password?") == ["reset", "password"]
    assert keyword_terms("to be or not to be") == ["to", "be", "or", "not"]
    assert keyword_terms('"quoted" OR NEAR(x) -- 502 output_invalid') == [
        "quoted",
        "near",
        "x",
        "502",
        "output_invalid",
    ]
