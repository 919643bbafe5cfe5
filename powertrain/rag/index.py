"""A collection's vector index: exact (numpy) while small, HNSW (usearch) once large.

``open_index(path, dim)`` returns a ``TieredIndex``. It keeps vectors in an
``ExactIndex`` (brute force: perfect recall, exact filters and deletes, nothing to
build) up to ``EXACT_MAX`` = 20,000 vectors, and moves them into an ``AnnIndex``
(usearch HNSW, M=16, ef_construction=64, ef_search=96) when an ``add`` takes it
past that; it never moves back (HNSW answers small collections well too). The rule
is measured (``python -m bench.rag.ann``, bench/rag/README.md; 384 dims, one core):
an exact query costs ~3 ms at 20,000 vectors, ~8 ms at 50,000 and ~16 ms at
100,000, against ~14 ms to embed the query with MiniLM on 2 cores, so up to 20,000
it adds at most a fifth to a search; HNSW at ef_search 96 stays under 1 ms at
100,000 with recall@10 >= 0.99 on clustered vectors (real MiniLM vectors needed
ef_search 48 where the clustered ones needed 16, hence the margin).

Vectors are normalised on ``add`` and scores are cosine similarities. Ids are the
chunks' int64 row ids (0 <= id < 2**63); adding an id again replaces its vector,
and a removed id never comes back from a search. ``search(..., allowed=...)``
returns up to ``k`` hits that pass the filter: the exact index checks candidates
best first; the HNSW index over-fetches (4x, 16x, ... k) and, once that would
cover a quarter of the index, scans everything, so a filter never hides a hit.

Threads: each index has a readers-writer lock; ``add`` and ``remove`` hold it
alone, searches and ``save`` share it. Exact searches run in parallel (numpy
releases the GIL); usearch 2.26 holds the GIL while it searches, so HNSW searches
are safe from many threads but take turns (~0.3-0.7 ms each at 100,000). Writes
use one thread: usearch's parallel ``add`` can strand nodes that no search reaches
(unum-cloud/USearch#735).

The file is one blob: a magic string, a JSON header (kind, dim, count, CRC-32 of
the payload) and the payload (ids and vectors for ``exact``; usearch's own
serialisation for ``usearch``). ``save`` writes a temporary file beside the
target, fsyncs it and renames it over the target, so a crash leaves the old file
or the new one, never a mix. A truncated, corrupt or wrong-dimension file raises
``IndexFileError`` naming the file; deleting it is always safe, because the store
keeps every vector and the collection rebuilds its index from them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np

from powertrain.errors import ConfigError

EXACT_MAX = 20_000  # vectors; above this a TieredIndex moves to HNSW
HNSW_CONNECTIVITY = 16  # M
HNSW_EXPANSION_ADD = 64  # ef_construction
HNSW_EXPANSION_SEARCH = 96  # ef_search; usearch widens it to k when k is larger
MAGIC = b"PTVINDEX"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")  # magic, format version, header length
_MAX_ID = 2**63 - 1

Allowed = Callable[[int], bool]
Hit = tuple[int, float]
Ids = Sequence[int] | np.ndarray  # int64 chunk row ids


class IndexFileError(ConfigError):
    """A vector index file cannot be read: truncated, corrupt, or not an index at all."""

    code = "index_file_invalid"

    def __init__(self, path: Path, problem: str):
        super().__init__(
            f"vector index file {path} {problem}; delete it and powertrain rebuilds the "
            "index from the stored vectors"
        )
        self.path = path


class IndexDimensionMismatch(IndexFileError):
    """The file holds vectors of another dimension than the collection's embedder makes."""

    code = "index_dimension_mismatch"


@runtime_checkable
class VectorIndex(Protocol):
    """Ids with unit vectors, searched by cosine similarity."""

    dim: int

    def add(self, ids: Ids, vectors: np.ndarray) -> None:
        """Insert or replace (by id) one row of ``vectors`` per id."""

    def remove(self, ids: Ids) -> int:
        """Forget these ids; returns how many were present."""

    def search(self, vector: np.ndarray, k: int, *, allowed: Allowed | None = None) -> list[Hit]:
        """Up to ``k`` (id, cosine similarity), best first, only ids ``allowed`` accepts."""

    def save(self, path: Path, *, stamp: dict[str, Any] | None = None) -> None:
        """Write the index to ``path`` atomically; ``stamp`` is kept in its header."""

    def __len__(self) -> int: ...


# -- shared pieces ---------------------------------------------------------------------


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _as_ids(ids: Ids) -> np.ndarray:
    array = np.asarray(ids)
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got {array.dtype}")
    array = array.astype(np.int64, copy=False).reshape(-1)
    if array.size and (array.min() < 0 or array.max() > _MAX_ID):
        raise ValueError("ids must be 0 <= id < 2**63 (chunk row ids)")
    return array


def _unit_rows(vectors: np.ndarray, dim: int, count: int) -> np.ndarray:
    """float32 rows scaled to length 1 (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if count == 0 and array.size == 0:
        return np.empty((0, dim), dtype=np.float32)
    if array.ndim == 1 and count == 1:
        array = array[None, :]
    if array.shape != (count, dim):
        raise ValueError(f"expected {count} vectors of dimension {dim}, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("vectors must be finite (no NaN or infinity)")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    unit: np.ndarray = (array / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)
    return unit


def _unit_query(vector: np.ndarray, dim: int) -> np.ndarray:
    rows = _unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1), dim, 1)
    row: np.ndarray = rows[0]
    return row


def _last_wins(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop all but the last row of an id given twice in one call."""
    _, first_in_reversed = np.unique(ids[::-1], return_index=True)
    if len(first_in_reversed) == len(ids):
        return ids, vectors
    keep = np.sort(len(ids) - 1 - first_in_reversed)
    return ids[keep], vectors[keep]


class _Filter:
    """``allowed`` with memory, so widening a search never asks twice about one id."""

    def __init__(self, allowed: Allowed):
        self.allowed = allowed
        self.seen: dict[int, bool] = {}

    def __call__(self, item: int) -> bool:
        verdict = self.seen.get(item)
        if verdict is None:
            verdict = self.seen[item] = bool(self.allowed(item))
        return verdict


def _pick(ids: Iterable[int], scores: Iterable[float], k: int, keep: _Filter | None) -> list[Hit]:
    hits: list[Hit] = []
    for item, score in zip(ids, scores, strict=True):
        if keep is None or keep(int(item)):
            hits.append((int(item), float(score)))
            if len(hits) == k:
                break
    return hits


# -- files -----------------------------------------------------------------------------


def _write_chunks(handle: BinaryIO, chunks: Sequence[bytes | memoryview]) -> None:
    for chunk in chunks:
        handle.write(chunk)


def _write_atomic(
    path: Path, header: dict[str, Any], payload: Sequence[bytes | memoryview]
) -> None:
    crc = 0
    for chunk in payload:
        crc = zlib.crc32(chunk, crc)
    head = json.dumps({**header, "crc32": crc, "payload_bytes": sum(len(c) for c in payload)})
    head_bytes = head.encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(head_bytes))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temp, "wb") as handle:
            _write_chunks(handle, [prefix, head_bytes, *payload])
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_file(path: Path, dim: int) -> tuple[dict[str, Any], memoryview]:
    try:
        data = memoryview(path.read_bytes())
    except OSError as exc:
        raise IndexFileError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if len(data) < _PREFIX.size or bytes(data[:8]) != MAGIC:
        raise IndexFileError(path, "is not a powertrain vector index")
    _, version, head_len = _PREFIX.unpack(data[: _PREFIX.size])
    if version != FORMAT_VERSION:
        raise IndexFileError(
            path, f"has format version {version}, this powertrain reads {FORMAT_VERSION}"
        )
    try:
        header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + head_len]))
        crc, size, kind, file_dim = (
            int(header["crc32"]),
            int(header["payload_bytes"]),
            str(header["kind"]),
            int(header["dim"]),
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise IndexFileError(path, "has a corrupt header") from exc
    payload = data[_PREFIX.size + head_len :]
    if len(payload) != size:
        raise IndexFileError(path, f"is truncated ({len(payload)} of {size} payload bytes)")
    if zlib.crc32(payload) != crc:
        raise IndexFileError(path, "is corrupt (checksum mismatch)")
    if file_dim != dim:
        raise IndexDimensionMismatch(
            path, f"holds {file_dim}-dimensional vectors but the collection's are {dim}-dimensional"
        )
    if kind not in _LOADERS:
        raise IndexFileError(path, f"holds an index of unknown kind {kind!r}")
    return header, payload


# -- exact -----------------------------------------------------------------------------


class ExactIndex:
    """Brute force over a numpy matrix: exact, no build cost; for small collections."""

    kind = "exact"

    def __init__(self, dim: int):
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._ids = np.empty(0, dtype=np.int64)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._size = 0
        self._rows: dict[int, int] = {}
        self._lock = _ReadWriteLock()

    def __len__(self) -> int:
        return self._size

    def _reserve(self, needed: int) -> None:
        capacity = len(self._ids)
        if needed <= capacity:
            return
        capacity = max(needed, 2 * capacity, 64)
        ids = np.empty(capacity, dtype=np.int64)
        vectors = np.empty((capacity, self.dim), dtype=np.float32)
        ids[: self._size] = self._ids[: self._size]
        vectors[: self._size] = self._vectors[: self._size]
        self._ids, self._vectors = ids, vectors

    def add(self, ids: Ids, vectors: np.ndarray) -> None:
        keys = _as_ids(ids)
        rows = _unit_rows(vectors, self.dim, len(keys))
        keys, rows = _last_wins(keys, rows)
        with self._lock.write():
            self._reserve(self._size + len(keys))
            for key, row in zip(keys.tolist(), rows, strict=True):
                at = self._rows.get(key)
                if at is None:
                    at = self._rows[key] = self._size
                    self._ids[at] = key
                    self._size += 1
                self._vectors[at] = row

    def remove(self, ids: Ids) -> int:
        removed = 0
        with self._lock.write():
            for key in _as_ids(ids).tolist():
                at = self._rows.pop(key, None)
                if at is None:
                    continue
                last = self._size - 1
                if at != last:  # move the last row into the hole
                    moved = int(self._ids[last])
                    self._ids[at] = moved
                    self._vectors[at] = self._vectors[last]
                    self._rows[moved] = at
                self._size -= 1
                removed += 1
        return removed

    def search(self, vector: np.ndarray, k: int, *, allowed: Allowed | None = None) -> list[Hit]:
        query = _unit_query(vector, self.dim)
        with self._lock.read():
            n = self._size
            if k <= 0 or n == 0:
                return []
            scores = self._vectors[:n] @ query
            ids = self._ids[:n].copy()
        keep = None if allowed is None else _Filter(allowed)
        fetch = k if keep is None else 4 * k
        while True:
            fetch = min(fetch, n)
            top = np.argpartition(-scores, fetch - 1)[:fetch] if fetch < n else np.arange(n)
            top = top[np.argsort(-scores[top], kind="stable")]
            hits = _pick(ids[top], scores[top], k, keep)
            if len(hits) == k or fetch == n:
                return hits
            fetch *= 4

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the ids and their unit vectors."""
        with self._lock.read():
            return self._ids[: self._size].copy(), self._vectors[: self._size].copy()

    def save(self, path: Path, *, stamp: dict[str, Any] | None = None) -> None:
        with self._lock.read():
            n = self._size
            # Flat byte views of little-endian copies (reshape(-1): a view of shape (0, dim)
            # cannot be cast).
            ids = self._ids[:n].astype("<i8").reshape(-1).view(np.uint8)
            vectors = self._vectors[:n].astype("<f4").reshape(-1).view(np.uint8)
            header = {"kind": self.kind, "dim": self.dim, "count": n, "stamp": stamp}
            _write_atomic(path, header, [ids.data, vectors.data])

    @classmethod
    def _load(cls, path: Path, dim: int, header: dict[str, Any], payload: memoryview) -> ExactIndex:
        n = int(header.get("count", -1))
        if n < 0 or len(payload) != n * (8 + 4 * dim):
            raise IndexFileError(path, "has a payload that does not match its header")
        ids = np.frombuffer(payload[: 8 * n], dtype="<i8").astype(np.int64)
        vectors = np.frombuffer(payload[8 * n :], dtype="<f4").reshape(n, dim)
        if len(np.unique(ids)) != n or (n and ids.min() < 0):
            raise IndexFileError(path, "is corrupt (bad ids)")
        index = cls(dim)
        if n:
            index.add(ids, vectors)
        return index


# -- HNSW (usearch) --------------------------------------------------------------------


def _share_the_system_libstdcxx() -> None:
    """Make the process's libstdc++ global before usearch's extension loads.

    usearch's wheel links its own copy of libstdc++ statically. Its locale facet
    ids are GNU "unique" symbols, which bind process-wide: loaded first, they
    break every later user of the system libstdc++ that had not touched those
    facets yet (llama.cpp then fails to read a model's vocabulary with
    ``std::bad_cast``). With the system library already global, its definitions
    win.
    """
    if sys.platform != "linux":
        return
    # No system libstdc++ (OSError): then nothing in the process can conflict with usearch's.
    with contextlib.suppress(OSError):
        ctypes.CDLL(ctypes.util.find_library("stdc++") or "libstdc++.so.6", mode=os.RTLD_GLOBAL)


def _usearch() -> Any:
    _share_the_system_libstdcxx()
    try:
        from usearch import index as usearch_index
    except ImportError as exc:  # pragma: no cover - usearch is a dependency
        raise ConfigError(
            f"collections over {EXACT_MAX:,} vectors need usearch: pip install 'usearch>=2.26'"
        ) from exc
    return usearch_index


class AnnIndex:
    """usearch HNSW over unit vectors (inner product = cosine), keyed by id."""

    kind = "usearch"

    def __init__(
        self,
        dim: int,
        *,
        connectivity: int = HNSW_CONNECTIVITY,
        expansion_add: int = HNSW_EXPANSION_ADD,
        expansion_search: int = HNSW_EXPANSION_SEARCH,
        _index: Any = None,
    ):
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self.expansion_search = expansion_search
        if _index is None:
            _index = _usearch().Index(
                ndim=dim,
                metric="ip",
                dtype="f32",
                connectivity=connectivity,
                expansion_add=expansion_add,
                expansion_search=expansion_search,
            )
        self._index = _index
        self._index.expansion_search = expansion_search  # not stored in usearch's file
        self._lock = _ReadWriteLock()

    def __len__(self) -> int:
        return int(self._index.size)

    def add(self, ids: Ids, vectors: np.ndarray) -> None:
        keys = _as_ids(ids)
        rows = _unit_rows(vectors, self.dim, len(keys))
        keys, rows = _last_wins(keys, rows)
        if not len(keys):
            return
        keys = keys.astype(np.uint64)
        with self._lock.write():
            present = np.asarray(self._index.contains(keys), dtype=bool).reshape(-1)
            if present.any():  # usearch refuses duplicate keys: replace = remove + add
                self._index.remove(keys[present])
            # One thread: usearch 2.26's parallel add can leave nodes that search never
            # reaches (unum-cloud/USearch#735); measured here as lost self-matches.
            self._index.add(keys, rows, threads=1)

    def remove(self, ids: Ids) -> int:
        keys = _as_ids(ids)
        if not len(keys):
            return 0
        keys = np.unique(keys).astype(np.uint64)
        with self._lock.write():
            return int(np.sum(self._index.remove(keys)))

    def _query(self, query: np.ndarray, k: int, fetch: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(ids, similarities, all scanned) for the ``fetch`` nearest, or for all of them.

        A graph search for a large share of the index costs more than a scan and may
        miss nodes it cannot reach, so past a quarter of the index it scans.
        """
        with self._lock.read():
            n = len(self)
            if n == 0:
                return np.empty(0, np.int64), np.empty(0, np.float32), True
            scan = 4 * max(k, fetch) > n
            matches = self._index.search(query, n if scan else fetch, threads=1, exact=scan)
        keys = np.asarray(matches.keys, dtype=np.uint64).astype(np.int64)
        return keys, 1.0 - np.asarray(matches.distances, dtype=np.float32), scan

    def search(self, vector: np.ndarray, k: int, *, allowed: Allowed | None = None) -> list[Hit]:
        query = _unit_query(vector, self.dim)
        if k <= 0:
            return []
        if allowed is None:
            ids, scores, _ = self._query(query, k, k)
            return _pick(ids, scores, k, None)
        keep = _Filter(allowed)  # called outside the lock: it may be slow (a database)
        fetch = 4 * k
        while True:  # widen the graph search to 4x, 16x, ... k until k hits pass the filter
            ids, scores, scanned = self._query(query, k, fetch)
            hits = _pick(ids, scores, k, keep)
            if len(hits) == k or scanned:
                return hits
            fetch *= 4

    def save(self, path: Path, *, stamp: dict[str, Any] | None = None) -> None:
        with self._lock.read():
            blob = self._index.save()
            header = {
                "kind": self.kind,
                "dim": self.dim,
                "count": len(self),
                "expansion_search": self.expansion_search,
                "stamp": stamp,
            }
            _write_atomic(path, header, [memoryview(blob)])

    @classmethod
    def _load(cls, path: Path, dim: int, header: dict[str, Any], payload: memoryview) -> AnnIndex:
        try:
            index = _usearch().Index.restore(payload)  # copies into its own memory
        except (ValueError, RuntimeError) as exc:
            raise IndexFileError(path, f"is corrupt ({exc})") from exc
        if (
            index is None
            or int(index.ndim) != dim
            or int(index.size) != int(header.get("count", -1))
        ):
            raise IndexFileError(path, "has a payload that does not match its header")
        ef = int(header.get("expansion_search", HNSW_EXPANSION_SEARCH))
        return cls(dim, expansion_search=ef, _index=index)

    @classmethod
    def from_exact(cls, exact: ExactIndex) -> AnnIndex:
        index = cls(exact.dim)
        ids, vectors = exact.items()
        if len(ids):
            index.add(ids, vectors)
        return index


_LOADERS: dict[str, Callable[[Path, int, dict[str, Any], memoryview], VectorIndex]] = {
    ExactIndex.kind: ExactIndex._load,
    AnnIndex.kind: AnnIndex._load,
}


# -- the rule --------------------------------------------------------------------------


class TieredIndex:
    """Exact up to ``exact_max`` vectors, then HNSW: what ``open_index`` returns."""

    def __init__(
        self,
        inner: ExactIndex | AnnIndex,
        *,
        exact_max: int = EXACT_MAX,
        stamp: dict[str, Any] | None = None,
    ):
        self.dim = inner.dim
        self.stamp = stamp  # as read from the file it was loaded from, if any
        self.exact_max = exact_max
        self._inner: ExactIndex | AnnIndex = inner
        self._mutate = threading.Lock()

    @property
    def kind(self) -> str:
        return self._inner.kind

    def __len__(self) -> int:
        return len(self._inner)

    def add(self, ids: Ids, vectors: np.ndarray) -> None:
        with self._mutate:
            inner = self._inner
            inner.add(ids, vectors)
            if isinstance(inner, ExactIndex) and len(inner) > self.exact_max:
                # Searches keep using the exact index (no longer changed) until the swap.
                self._inner = AnnIndex.from_exact(inner)

    def remove(self, ids: Ids) -> int:
        with self._mutate:
            return self._inner.remove(ids)

    def search(self, vector: np.ndarray, k: int, *, allowed: Allowed | None = None) -> list[Hit]:
        return self._inner.search(vector, k, allowed=allowed)

    def save(self, path: Path, *, stamp: dict[str, Any] | None = None) -> None:
        self._inner.save(path, stamp=stamp)


def open_index(path: Path, dim: int) -> TieredIndex:
    """The index saved at ``path`` (exact or HNSW, as saved), or an empty one."""
    path = Path(path)
    if not path.exists():
        return TieredIndex(ExactIndex(dim))
    header, payload = _read_file(path, dim)
    inner = _LOADERS[str(header["kind"])](path, dim, header, payload)
    assert isinstance(inner, ExactIndex | AnnIndex)
    if isinstance(inner, ExactIndex) and len(inner) > EXACT_MAX:  # saved under another rule
        inner = AnnIndex.from_exact(inner)
    stamp = header.get("stamp")
    return TieredIndex(inner, stamp=stamp if isinstance(stamp, dict) else None)
