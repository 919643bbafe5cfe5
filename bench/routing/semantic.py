"""How should the semantic router score a query against a target's examples?

Measures, with the bundled all-MiniLM-L6-v2 on Banking77 (CC-BY-4.0, in
``../shared/data/banking77``), max cosine vs mean of the top k vs the
centroid, on held-out queries that are not among the examples:

- four targets (cards, disputes, transfers, identity), each three intents,
  with ``--examples`` training queries per intent as the route's examples;
- held-out queries of those intents, which should reach their target;
- hard negatives: queries of other Banking77 intents (top-ups, exchange
  rates, ATMs …), and easy ones: general questions, both of which should go to
  the default model.

    .venv/bin/python -m bench.routing.semantic [--examples 5] [--held-out 30] [--json -]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import add_json_option, publish
from powertrain.catalog import BUNDLED_EMBEDDING_MODEL
from powertrain.engines.sentence_transformers import SentenceTransformersEngine
from powertrain.routing.semantic import target_scores, unit_rows

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "banking77" / "train.csv"

TARGETS = {
    "cards": ["card_arrival", "lost_or_stolen_card", "activate_my_card"],
    "disputes": ["request_refund", "transaction_charged_twice", "extra_charge_on_statement"],
    "transfers": ["transfer_not_received_by_recipient", "cancel_transfer", "transfer_timing"],
    "identity": ["verify_my_identity", "unable_to_verify_identity", "passcode_forgotten"],
}
HARD_NEGATIVE_INTENTS = [
    "exchange_rate",
    "top_up_limits",
    "atm_support",
    "age_limit",
    "country_support",
    "apple_pay_or_google_pay",
    "terminate_account",
    "cash_withdrawal_charge",
]
OFF_TOPIC = [
    "What's the weather like in Paris tomorrow?",
    "Write me a short poem about autumn leaves.",
    "How do I reverse a list in Python?",
    "Who won the football world cup in 2018?",
    "Give me a recipe for banana bread.",
    "What is the capital of Australia?",
    "Translate 'good morning' into Spanish.",
    "How many moons does Jupiter have?",
    "Recommend a good science fiction novel.",
    "What time is it in Tokyo right now?",
    "Explain how photosynthesis works.",
    "How do I fix a flat bicycle tyre?",
    "What are the symptoms of the flu?",
    "Tell me a joke about cats.",
    "How tall is Mount Everest?",
    "What's a good name for a golden retriever puppy?",
    "Summarise the plot of Hamlet.",
    "How do I make my houseplants grow faster?",
    "Which programming language should I learn first?",
    "What's the difference between a virus and a bacterium?",
]


def load() -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = defaultdict(list)
    with DATA.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_intent[row["category"]].append(row["text"])
    return by_intent


def split(
    by_intent: dict[str, list[str]], examples: int, held_out: int, seed: int
) -> tuple[dict[str, list[str]], list[tuple[str, str | None]]]:
    rng = random.Random(seed)
    routes: dict[str, list[str]] = {}
    queries: list[tuple[str, str | None]] = []
    for target, intents in TARGETS.items():
        routes[target] = []
        for intent in intents:
            texts = list(by_intent[intent])
            rng.shuffle(texts)
            routes[target] += texts[:examples]
            queries += [(text, target) for text in texts[examples : examples + held_out]]
    for intent in HARD_NEGATIVE_INTENTS:
        texts = list(by_intent[intent])
        rng.shuffle(texts)
        queries += [(text, None) for text in texts[: held_out // 3]]
    queries += [(text, None) for text in OFF_TOPIC]
    return routes, queries


def scores_for(
    method: str, route_vectors: dict[str, np.ndarray], query: np.ndarray
) -> dict[str, float]:
    out = {}
    for name, matrix in route_vectors.items():
        if method == "centroid":
            centroid = unit_rows(matrix.mean(axis=0))[0]
            out[name] = float(centroid @ query)
        else:
            k = 10_000 if method == "mean_all" else int(method.removeprefix("top"))
            out[name] = target_scores(matrix @ query, k)
    return out


def evaluate(
    method: str,
    route_vectors: dict[str, np.ndarray],
    queries: list[tuple[str, str | None]],
    query_vectors: np.ndarray,
) -> dict[str, Any]:
    best: list[tuple[str, float]] = []
    for vector in query_vectors:
        scores = scores_for(method, route_vectors, vector)
        name = max(scores, key=lambda n: scores[n])
        best.append((name, scores[name]))

    def accuracy(threshold: float) -> tuple[float, float, float]:
        on = [
            (b[1] >= threshold and b[0] == want)
            for b, (_, want) in zip(best, queries, strict=True)
            if want
        ]
        off = [b[1] < threshold for b, (_, want) in zip(best, queries, strict=True) if not want]
        return (sum(on) + sum(off)) / (len(on) + len(off)), sum(on) / len(on), sum(off) / len(off)

    grid = [round(t, 2) for t in np.arange(0.2, 0.9, 0.01)]
    tuned = max(grid, key=lambda t: accuracy(t)[0])
    top1 = sum(b[0] == want for b, (_, want) in zip(best, queries, strict=True) if want) / sum(
        1 for _, want in queries if want
    )
    return {
        "method": method,
        "top1_in_domain": top1,
        "best_threshold": tuned,
        "accuracy_at_best": accuracy(tuned)[0],
        "in_domain_at_best": accuracy(tuned)[1],
        "to_default_at_best": accuracy(tuned)[2],
        "accuracy_at_0.5": accuracy(0.5)[0],
        "in_domain_at_0.5": accuracy(0.5)[1],
        "to_default_at_0.5": accuracy(0.5)[2],
    }


async def measure(examples: int, held_out: int, seeds: list[int]) -> dict[str, Any]:
    engine = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL)
    await engine.start()
    by_intent = load()
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for seed in seeds:
            routes, queries = split(by_intent, examples, held_out, seed)
            route_vectors = {
                name: unit_rows((await engine.embed(texts)).vectors)
                for name, texts in routes.items()
            }
            query_vectors = unit_rows((await engine.embed([q for q, _ in queries])).vectors)
            for method in ("top1", "top3", "top5", "mean_all", "centroid"):
                runs[method].append(evaluate(method, route_vectors, queries, query_vectors))
    finally:
        await engine.aclose()
    summary = []
    for method, results in runs.items():
        row: dict[str, Any] = {"method": method}
        for key in results[0]:
            if key != "method":
                row[key] = round(float(np.mean([r[key] for r in results])), 3)
        summary.append(row)
    return {
        "examples_per_intent": examples,
        "held_out_per_intent": held_out,
        "seeds": seeds,
        "queries_per_seed": len(split(by_intent, examples, held_out, seeds[0])[1]),
        "results": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5, help="examples per intent")
    parser.add_argument("--held-out", type=int, default=30, help="held-out queries per intent")
    parser.add_argument("--seeds", type=int, default=3)
    add_json_option(parser)
    args = parser.parse_args()
    document = asyncio.run(measure(args.examples, args.held_out, list(range(args.seeds))))

    def table() -> str:
        keys = [k for k in document["results"][0] if k != "method"]
        lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for row in document["results"]:
            lines.append(f"| {row['method']} | " + " | ".join(str(row[k]) for k in keys) + " |")
        return "\n".join(lines)

    publish(document, "routing-semantic", table, args.json)


if __name__ == "__main__":
    main()
