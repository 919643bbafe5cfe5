"""Generation tokens/s of a tuned model: llama.cpp with a GGUF LoRA vs the transformers engine.

Sides (in-process engines, no HTTP; the same prompt, ``max_tokens``, greedy):

- ``base``: the bundled GGUF on the llamacpp engine — what every ratio is measured against;
- ``lora-gguf``: the same GGUF plus the LoRA adapter exported by ``export_gguf_lora``
  (``lora_path``), on the llamacpp engine;
- ``lora-hf``: the same LoRA (PEFT, merged into the weights) on the transformers engine;
- ``pt-hf``: a prompt-tuning adapter (20 virtual tokens) on the transformers engine;
- ``base-hf`` (not run unless named): the GGUF on the transformers engine, no adapter.

The LoRA is ``--adapter DIR`` (a PEFT LoRA of the bundled model, e.g. a fine-tuning
job's ``adapter/``) or, by default, a fresh one shaped like the LoRA method's
defaults (rank 16 on all seven projections) with PEFT's initialisation (B = 0): what
an adapter costs to serve depends on its shape, not its values, and a zero B keeps
every LoRA side's text equal to the base's, so all sides generate the same tokens.
The prompt-tuning adapter is initialised from the embeddings of a sentence, as the
prompt-tuning method does. Tokens are the engines' exact counts.

Runs alternate between sides so background load hits each alike; the table shows
the best run (the least disturbed) and medians, and each side's best tokens/s as a
ratio of the base's. The load average is recorded: on a machine whose cores are
busy, PyTorch's spinning OpenMP threads slow down several times over (set
``OMP_WAIT_POLICY=PASSIVE`` before the run to measure that case with sleeping waits).

    nice -n 5 .venv/bin/python -m bench.flywheel.tokens [--runs 5] [--max-tokens 128] \
        [--threads 2] [--only base,lora-gguf,lora-hf,pt-hf] [--adapter DIR] [--prompt-tuning DIR] \
        [--json [FILE]]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.gateway.tokens import MESSAGES, Run, alternate, say, summarize
from bench.results import add_json_option, publish
from powertrain.catalog import ModelConfig
from powertrain.engines._local_chat import LocalChatEngine
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.engines.transformers import TransformersEngine
from powertrain.flywheel.gguf_lora import GGUF_NAMES, export_gguf_lora, read_base
from powertrain.schemas import ChatCompletionRequest

SIDES = ("base", "lora-gguf", "lora-hf", "pt-hf", "base-hf")
DEFAULT_SIDES = SIDES[:4]
PROJECTIONS = tuple(GGUF_NAMES)  # the seven projections, as the LoRA method's default
PT_TEXT = "Answer the customer's question about their bank account briefly and exactly."
PT_TOKENS = 20
N_CTX = 2048


def fresh_lora(directory: Path, base_gguf: Path, rank: int = 16) -> Path:
    """A PEFT LoRA of ``base_gguf`` as PEFT initialises one: A random, B zero."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    base = read_base(base_gguf)
    LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(PROJECTIONS)).save_pretrained(
        str(directory)
    )
    weights = {}
    for layer in range(base.n_layer):
        for module in PROJECTIONS:
            out, into = base.tensors[f"blk.{layer}.{GGUF_NAMES[module]}.weight"]
            block = "mlp" if GGUF_NAMES[module].startswith("ffn") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{block}.{module}"
            weights[f"{key}.lora_A.weight"] = torch.randn(rank, into) / into**0.5
            weights[f"{key}.lora_B.weight"] = torch.zeros(out, rank)
    save_file(weights, str(directory / "adapter_model.safetensors"))
    return directory


def prompt_tuning_adapter(directory: Path, engine: TransformersEngine) -> Path:
    """A prompt-tuning adapter whose virtual tokens start as the embeddings of ``PT_TEXT``."""
    import torch
    from peft import PromptTuningConfig
    from safetensors.torch import save_file

    loaded = engine.loaded
    ids = loaded.chat.tokenize(PT_TEXT, special=False, add_bos=False)
    ids = (ids * (PT_TOKENS // len(ids) + 1))[:PT_TOKENS]
    table = loaded.model.get_input_embeddings().weight
    PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=PT_TOKENS, token_dim=int(table.shape[1])
    ).save_pretrained(str(directory))
    embeddings = table[torch.tensor(ids)].detach().clone()
    save_file({"prompt_embeddings": embeddings}, str(directory / "adapter_model.safetensors"))
    return directory


async def measure(engine: LocalChatEngine[Any, Any], max_tokens: int) -> Run:
    request = ChatCompletionRequest.model_validate(
        {
            "model": engine.model.alias,
            "messages": MESSAGES,
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    )
    started = time.perf_counter()
    first = last = started
    parts: list[str] = []
    tokens = 0
    async for chunk in engine.stream(request):
        if chunk.delta:
            last = time.perf_counter()
            if not parts:
                first = last
            parts.append(chunk.delta)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return Run(tokens, first - started, last - started, last - first, "".join(parts))


class Sides:
    """The engines, started one by one on one event loop (the engines' workers report to it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threads: int, workdir: Path):
        self.loop = loop
        self.threads = threads
        self.workdir = workdir
        self.engines: dict[str, LocalChatEngine[Any, Any]] = {}

    def start(self, name: str, engine: LocalChatEngine[Any, Any]) -> Callable[[int], Run]:
        began = time.perf_counter()
        self.loop.run_until_complete(engine.start())
        say(f"{name}: loaded in {time.perf_counter() - began:.1f} s")
        self.engines[name] = engine
        return lambda max_tokens: self.loop.run_until_complete(measure(engine, max_tokens))

    def llamacpp(self, name: str, **options: Any) -> Callable[[int], Run]:
        config = {"n_threads": self.threads, "n_ctx": N_CTX, **options}
        return self.start(
            name, LlamaCppEngine(ModelConfig(alias=name, engine="llamacpp", options=config))
        )

    def transformers(self, name: str, **options: Any) -> Callable[[int], Run]:
        config = {"n_threads": self.threads, **options}
        model = ModelConfig(alias=name, engine="transformers", options=config)
        return self.start(name, TransformersEngine(model))

    def close(self) -> None:
        for engine in self.engines.values():
            self.loop.run_until_complete(engine.aclose())


def build(
    sides: Sides, wanted: list[str], adapter: Path | None, soft_prompt: Path | None
) -> dict[str, Callable[[int], Run]]:
    gguf = smollm2_path()
    lora = adapter or fresh_lora(sides.workdir / "lora", gguf)
    generate: dict[str, Callable[[int], Run]] = {}
    if "base" in wanted:
        generate["base"] = sides.llamacpp("base")
    if "lora-gguf" in wanted:
        exported = export_gguf_lora(lora, gguf, sides.workdir / "lora.gguf")
        generate["lora-gguf"] = sides.llamacpp("lora-gguf", lora_path=str(exported))
    if "lora-hf" in wanted:
        generate["lora-hf"] = sides.transformers("lora-hf", adapter=str(lora))
    if "base-hf" in wanted:
        generate["base-hf"] = sides.transformers("base-hf")
    if "pt-hf" in wanted and soft_prompt is not None:
        generate["pt-hf"] = sides.transformers("pt-hf", adapter=str(soft_prompt))
    elif "pt-hf" in wanted:
        # The soft prompt starts from token embeddings, read from a loaded PyTorch model.
        donors = [e for e in sides.engines.values() if isinstance(e, TransformersEngine)]
        if not donors:
            sides.transformers("embeddings")
            donors = [e for e in sides.engines.values() if isinstance(e, TransformersEngine)]
        donor = donors[0]
        pt = prompt_tuning_adapter(sides.workdir / "pt", donor)
        generate["pt-hf"] = sides.transformers("pt-hf", adapter=str(pt))
    return generate


ROWS = [
    ("tokens per run", "tokens", "{:.0f}"),
    ("best end-to-end tokens/s", "best_e2e_tps", "{:.1f}"),
    ("median end-to-end tokens/s", "median_e2e_tps", "{:.1f}"),
    ("best decode tokens/s", "best_decode_tps", "{:.1f}"),
    ("median TTFT ms", "median_ttft_ms", "{:.1f}"),
]


def render(document: dict[str, Any]) -> str:
    summaries: dict[str, dict[str, float]] = document["sides"]
    names = list(summaries)
    table = [["metric", *names]]
    for label, key, fmt in ROWS:
        table.append([label, *(fmt.format(summaries[n][key]) for n in names)])
    if "base" in summaries:
        table.append(["best e2e ÷ base", *(f"{document['ratios'][n]:.2f}x" for n in names)])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )
        for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(
        f"\n{document['max_tokens']} tokens asked, {document['runs']} runs per side, "
        f"{document['threads']} threads, load average {document['load_average'][0]:.1f} at the start, "
        f"{document['load_average_end'][0]:.1f} at the end"
    )
    differ = [n for n, same in document["same_text_as_base"].items() if not same]
    if differ:
        lines.append(f"text differs from the base's: {', '.join(differ)}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flywheel.tokens", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--only", default=",".join(DEFAULT_SIDES), help=f"sides: {', '.join(SIDES)}"
    )
    parser.add_argument("--runs", type=int, default=5, help="measured runs per side (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="threads of every engine")
    parser.add_argument("--adapter", type=Path, help="a PEFT LoRA directory (default: a fresh one)")
    parser.add_argument(
        "--prompt-tuning", type=Path, help="a PEFT prompt-tuning directory (default: a fresh one)"
    )
    add_json_option(parser)
    args = parser.parse_args(argv)
    args.sides = [s.strip() for s in args.only.split(",") if s.strip()]
    if not args.sides or not set(args.sides) <= set(SIDES):
        parser.error(f"--only takes some of {', '.join(SIDES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="powertrain-flywheel-tokens-") as tmp:
        sides = Sides(loop, args.threads, Path(tmp))
        try:
            built = build(sides, args.sides, args.adapter, args.prompt_tuning)
            generate = {name: built[name] for name in args.sides if name in built}
            say("warm-up…")
            for run_once in generate.values():
                run_once(8)
            runs = alternate(generate, args.runs, args.max_tokens)
        finally:
            sides.close()
            loop.close()
    summaries = {side: summarize(r) for side, r in runs.items()}
    base_tps = summaries["base"]["best_e2e_tps"] if "base" in summaries else None
    base_text = runs["base"][0].text if "base" in runs else None
    document = {
        "model": smollm2_path().name,
        "adapter": str(args.adapter)
        if args.adapter
        else "fresh LoRA, rank 16, all projections, B = 0",
        "prompt_tuning": str(args.prompt_tuning or f"fresh, {PT_TOKENS} virtual tokens"),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "load_average": load_start,
        "load_average_end": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "sides": summaries,
        "ratios": {n: s["best_e2e_tps"] / base_tps for n, s in summaries.items()}
        if base_tps
        else {},
        # A fresh LoRA (B = 0) leaves the text as the base's on llama.cpp; PyTorch's float32
        # may part from llama.cpp's kernels at a near tie, and a soft prompt changes the text.
        "same_text_as_base": {n: r[0].text == base_text for n, r in runs.items()}
        if base_text is not None
        else {},
    }
    publish(document, "flywheel-tokens", lambda: render(document), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
