"""The collections' vector index: exact (numpy) and HNSW (usearch), files, filters, threads."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from powertrain.errors import ConfigError
from powertrain.rag import index as index_module
from powertrain.rag.index import (
    AnnIndex,
    ExactIndex,
    IndexDimensionMismatch,
    IndexFileError,
    TieredIndex,
    VectorIndex,
    open_index,
)

DIM = 32
Factory = Callable[[int], ExactIndex | AnnIndex]
IMPLEMENTATIONS = pytest.mark.parametrize("make", [ExactIndex, AnnIndex], ids=["exact", "ann"])


def clustered(n: int, dim: int = DIM, *, centroids: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around random centres, like embeddings of texts on a few topics."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((centroids, dim))
    points = centres[rng.integers(0, centroids, n)] + 0.6 * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ids_of(hits: list[tuple[int, float]]) -> list[int]:
    return [item for item, _ in hits]


def filled(make: Factory, n: int = 1000, *, first_id: int = 1000) -> tuple[VectorIndex, np.ndarray]:
    vectors = clustered(n)
    index = make(DIM)
    index.add(list(range(first_id, first_id + n)), vectors)
    return index, vectors


@IMPLEMENTATIONS
def test_search_returns_nearest_first_with_cosine_scores(make: Factory) -> None:
    index, vectors = filled(make)
    hits = index.search(vectors[7] * 5.0, 10)  # scale does not matter: cosine
    assert len(hits) == 10
    assert hits[0][0] == 1007
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-5 <= s <= 1.0 + 1e-5 for s in scores)
    assert len(index) == 1000
    assert len(index.search(vectors[0], 5000)) == 1000
    assert index.search(vectors[0], 0) == []


@IMPLEMENTATIONS
def test_vectors_are_normalised_on_add(make: Factory) -> None:
    index = make(3)
    index.add([1, 2], np.array([[10.0, 0.0, 0.0], [0.0, 0.5, 0.0]], dtype=np.float32))
    assert index.search(np.array([1.0, 0.0, 0.0]), 1)[0] == (1, pytest.approx(1.0, abs=1e-6))
    assert index.search(np.array([0.0, 3.0, 0.0]), 1)[0] == (2, pytest.approx(1.0, abs=1e-6))


@IMPLEMENTATIONS
def test_adding_an_id_again_replaces_its_vector(make: Factory) -> None:
    index, vectors = filled(make, 200)
    other = -vectors[3]
    index.add([1003], other)
    assert len(index) == 200
    assert index.search(other, 1)[0] == (1003, pytest.approx(1.0, abs=1e-5))
    assert 1003 not in ids_of(index.search(vectors[3], 10))
    # Twice in one call: the last row wins.
    index.add([1004, 1004], np.stack([vectors[5], vectors[6]]))
    assert len(index) == 200
    assert index.search(vectors[6], 2)[0][0] in (1004, 1006)
    assert 1004 in ids_of(index.search(vectors[6], 2))


@IMPLEMENTATIONS
def test_removed_ids_never_come_back(make: Factory, tmp_path: Path) -> None:
    """RELIABILITY 20: deleting a document removes its vectors from search."""
    index, vectors = filled(make, 600)
    gone = list(range(1000, 1600, 3))
    assert index.remove([*gone, 99_999]) == len(gone)
    assert index.remove(gone) == 0
    assert len(index) == 600 - len(gone)
    for row in range(0, 600, 3):
        assert set(ids_of(index.search(vectors[row], 50))).isdisjoint(gone)
    everything = ids_of(index.search(vectors[0], 1000))
    assert len(everything) == len(index)
    assert set(everything).isdisjoint(gone)
    index.save(tmp_path / "x.index")
    reopened = open_index(tmp_path / "x.index", DIM)
    assert len(reopened) == len(index)
    assert set(ids_of(reopened.search(vectors[0], 1000))).isdisjoint(gone)
    # An id can come back by being added again.
    index.add([1000], vectors[0])
    assert index.search(vectors[0], 1)[0][0] == 1000


@IMPLEMENTATIONS
def test_filtered_search_still_returns_k_allowed_hits(make: Factory) -> None:
    index, vectors = filled(make, 2000)
    asked: list[int] = []

    def allowed(item: int) -> bool:
        asked.append(item)
        return item % 50 == 0  # 2 % of the collection

    hits = index.search(vectors[1], 10, allowed=allowed)
    assert len(hits) == 10
    assert all(item % 50 == 0 for item in ids_of(hits))
    assert len(asked) == len(set(asked))  # each id is judged once
    exact = ExactIndex(DIM)
    exact.add(list(range(1000, 3000)), vectors)
    expected = ids_of(exact.search(vectors[1], 10, allowed=lambda i: i % 50 == 0))
    assert len(set(ids_of(hits)) & set(expected)) >= 9
    scores = [score for _, score in hits]
    assert scores == sorted(scores, reverse=True)
    # Fewer allowed ids than k: all of them, nothing else.
    few = {1001, 1500, 2999}
    assert set(ids_of(index.search(vectors[1], 10, allowed=few.__contains__))) == few
    assert index.search(vectors[1], 10, allowed=lambda _: False) == []


@IMPLEMENTATIONS
def test_save_and_load_give_the_same_results(make: Factory, tmp_path: Path) -> None:
    index, vectors = filled(make, 800)
    path = tmp_path / "indexes" / "c.index"
    index.save(path)
    loaded = open_index(path, DIM)
    assert len(loaded) == 800
    assert isinstance(loaded, TieredIndex) and loaded.kind == make.kind
    for row in (0, 17, 400, 799):
        before, after = index.search(vectors[row], 10), loaded.search(vectors[row], 10)
        assert ids_of(after) == ids_of(before)
        assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-6)
    loaded.add([5], vectors[0])  # a loaded index stays writable
    assert len(loaded) == 801
    make(DIM).save(path)  # an empty index too
    assert len(open_index(path, DIM)) == 0


@IMPLEMENTATIONS
def test_a_failed_save_leaves_the_old_file_intact(
    make: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, _ = filled(make, 100)
    path = tmp_path / "c.index"
    index.save(path)
    old = path.read_bytes()
    index.add(list(range(5000, 5100)), clustered(100, seed=1))

    def crash_halfway(handle, chunks) -> None:  # type: ignore[no-untyped-def]
        handle.write(chunks[0])
        handle.write(bytes(chunks[-1])[:100])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_module, "_write_chunks", crash_halfway)
    with pytest.raises(OSError, match="No space left"):
        index.save(path)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["c.index"]  # no temporary file left
    assert len(open_index(path, DIM)) == 100


@IMPLEMENTATIONS
def test_a_file_of_another_dimension_is_a_clear_error(make: Factory, tmp_path: Path) -> None:
    index, _ = filled(make, 50)
    path = tmp_path / "c.index"
    index.save(path)
    with pytest.raises(IndexDimensionMismatch) as caught:
        open_index(path, 64)
    assert isinstance(caught.value, ConfigError)
    assert str(path) in caught.value.message
    assert "32-dimensional" in caught.value.message and "64" in caught.value.message


@IMPLEMENTATIONS
def test_corrupt_files_are_clear_errors(make: Factory, tmp_path: Path) -> None:
    index, _ = filled(make, 300)
    path = tmp_path / "c.index"
    index.save(path)
    good = path.read_bytes()
    damaged = {
        "empty": b"",
        "not an index": b"SQLite format 3\x00" + bytes(100),
        "truncated": good[: len(good) // 2],
        "bit flip": good[:-100] + bytes([good[-100] ^ 0x40]) + good[-99:],
        "bad header": good[:16] + b"[" + good[17:],
    }
    for name, data in damaged.items():
        path.write_bytes(data)
        with pytest.raises(IndexFileError) as caught:
            open_index(path, DIM)
        assert str(path) in caught.value.message, name
        assert "delete it" in caught.value.message, name


def test_hnsw_recall_against_exact_search() -> None:
    dim, n = 384, 5000
    vectors = clustered(n + 200, dim, centroids=200, seed=3)
    base, queries = vectors[:n], vectors[n:]
    exact, ann = ExactIndex(dim), AnnIndex(dim)
    for index in (exact, ann):
        index.add(list(range(n)), base)
    found = sum(
        len(set(ids_of(ann.search(q, 10))) & set(ids_of(exact.search(q, 10)))) for q in queries
    )
    assert found / (10 * len(queries)) >= 0.95


@pytest.mark.parametrize(
    "make", [ExactIndex, AnnIndex, TieredIndex], ids=["exact", "ann", "tiered"]
)
def test_searches_from_threads_while_adding(make: Callable[[int], VectorIndex]) -> None:
    index = TieredIndex(ExactIndex(DIM), exact_max=1500) if make is TieredIndex else make(DIM)
    vectors = clustered(3000, seed=5)
    index.add(list(range(500)), vectors[:500])
    errors: list[BaseException] = []
    done = threading.Event()

    def searcher(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                row = int(rng.integers(0, 500))
                hits = index.search(vectors[row], 5, allowed=lambda i: i % 2 == 0)
                assert len(hits) == 5 and all(0 <= i < 3000 and i % 2 == 0 for i in ids_of(hits))
                nearest = index.search(vectors[row], 1)
                assert len(nearest) == 1 and nearest[0][1] > 0.9
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    try:
        for start in range(500, 3000, 250):
            index.add(list(range(start, start + 250)), vectors[start : start + 250])
            index.remove([start + 1])
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not errors, errors[0]
    assert len(index) == 3000 - 10


def test_open_index_starts_exact_and_moves_to_hnsw_past_the_threshold(tmp_path: Path) -> None:
    path = tmp_path / "c.index"
    index = open_index(path, DIM)
    assert isinstance(index, TieredIndex) and index.kind == "exact" and len(index) == 0
    assert index.search(np.ones(DIM), 5) == []
    index.exact_max = 300
    vectors = clustered(400)
    index.add(list(range(300)), vectors[:300])
    assert index.kind == "exact"
    index.add(list(range(300, 400)), vectors[300:])
    assert index.kind == "usearch" and len(index) == 400
    assert index.search(vectors[123], 1)[0][0] == 123
    index.save(path)
    reopened = open_index(path, DIM)
    assert isinstance(reopened, TieredIndex) and reopened.kind == "usearch"
    assert ids_of(reopened.search(vectors[5], 10)) == ids_of(index.search(vectors[5], 10))


@IMPLEMENTATIONS
def test_bad_input_is_rejected(make: Factory) -> None:
    index = make(DIM)
    with pytest.raises(ValueError, match="dimension"):
        index.add([1], np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="2 vectors"):
        index.add([1, 2], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="0 <= id"):
        index.add([-1], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="finite"):
        index.add([1], np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.ones(DIM - 1), 3)
    assert len(index) == 0
    index.add([], np.empty(0, dtype=np.float32))  # nothing to add is not an error
    assert index.remove([]) == 0 and len(index) == 0


@pytest.mark.model
def test_loading_usearch_first_leaves_the_local_model_loadable() -> None:
    """usearch's static libstdc++ once broke llama.cpp's vocabulary loader (std::bad_cast)."""
    script = (
        "from powertrain.rag.index import _usearch\n"
        "_usearch()\n"
        "from llama_cpp import Llama\n"
        "from powertrain.engines.bundled import smollm2_path\n"
        "Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)\n"
        "print('loaded')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]
