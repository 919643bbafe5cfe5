"""The transformers engine: the bundled GGUF in PyTorch, with and without a PEFT adapter."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from powertrain.catalog import BUNDLED_MODEL, ModelConfig
from powertrain.engines._local_chat import Sampling
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.engines.transformers import StopScanner, TransformersEngine
from powertrain.errors import ConfigError
from powertrain.schemas import ChatCompletionRequest
from tests.conftest import config_from, eventually, serving

pytestmark = pytest.mark.model
# One event loop for the module's async tests: the engine (and its worker, which settles
# each job on the loop that submitted it) is loaded once and shared by all of them.
shared_loop = pytest.mark.asyncio(loop_scope="module")

# One thread: PyTorch slows down several times over when its threads must share busy cores
# (the test machine's two are shared). The gateway's [models.hf] below shares these weights.
OPTIONS = {"n_threads": 1}
CONFIG = """
[cache]
enabled = false

[models.hf]
engine = "transformers"
options = { n_threads = 1 }

[models.hf-small]
engine = "transformers"
context_window = 40
options = { n_threads = 1 }
"""
N_LAYERS, HIDDEN, KV_DIM = 30, 576, 192  # SmolLM2-135M


def request(text: str, **params: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "hf", "messages": [{"role": "user", "content": text}], **params}
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def base() -> AsyncIterator[TransformersEngine]:
    """The bundled model in PyTorch, loaded once for the module (loading takes seconds)."""
    engine = TransformersEngine(ModelConfig(alias="hf", engine="transformers", options=OPTIONS))
    async with started(engine):
        yield engine


@contextlib.asynccontextmanager
async def started(engine: LlamaCppEngine | TransformersEngine) -> AsyncIterator[Any]:
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


@shared_loop
async def test_answers_through_the_gateway_with_the_openai_sdk(
    base: TransformersEngine, tmp_path: Path
) -> None:
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colors."}]
    async with serving(config_from(tmp_path, CONFIG)) as (url, app):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as sdk:
            raw = await sdk.chat.completions.with_raw_response.create(
                model="hf",
                messages=question,
                temperature=0,
                max_tokens=6,
            )
            whole = raw.parse()
            stream = await sdk.chat.completions.create(
                model="hf",
                messages=question,
                temperature=0,
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
        served = app.gateway.engines.started("hf")
        assert isinstance(served, TransformersEngine) and served.loaded is base.loaded
        await app.gateway.traces.flush()
        trace = app.gateway.trace_store.get(raw.headers["x-powertrain-trace-id"])

    text = whole.choices[0].message.content
    assert text and text.startswith("1. Red")
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == base.count_tokens(request("Name three colors."))
    assert whole.usage.completion_tokens == 6 and whole.choices[0].finish_reason == "length"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3  # token by token, not one block
    assert "".join(pieces) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert trace is not None and trace.engine == "transformers"
    assert trace.compute_seconds is not None and trace.compute_seconds > 0


@shared_loop
async def test_a_prompt_over_the_window_is_refused_like_any_other(tmp_path: Path) -> None:
    async with serving(config_from(tmp_path, CONFIG)) as (url, _app):
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as sdk:
            with pytest.raises(openai.BadRequestError) as info:
                await sdk.chat.completions.create(
                    model="hf-small",
                    messages=[{"role": "user", "content": "word " * 60}],
                )
    assert info.value.code == "context_length_exceeded"
    assert "context window of 40 tokens" in info.value.message


@shared_loop
async def test_greedy_output_matches_llama_cpp(base: TransformersEngine) -> None:
    # The same weights and prompt tokens: llama.cpp runs the Q4_1 weights with its own
    # kernels (activations quantized to 8 bits), PyTorch the dequantized weights in
    # float32, so logits agree to ~0.999 correlation, not exactly. Greedy decoding
    # therefore matches until two candidates are nearly tied: on these prompts for
    # every token asked; on "What is the capital of France?" the very first token
    # already differs ('L' by 0.35 in llama.cpp, 'The' by 0.09 in PyTorch).
    llama = LlamaCppEngine(BUNDLED_MODEL.model_copy(update={"options": OPTIONS}))
    async with started(llama):
        for text in ("Name three colors.", "Write a haiku about the sea."):
            wanted = request(text, temperature=0, max_tokens=16)
            ours, theirs = await base.chat(wanted), await llama.chat(wanted)
            assert ours.content == theirs.content
            assert ours.usage == theirs.usage


@shared_loop
async def test_stop_strings_seeds_and_the_end_of_turn(base: TransformersEngine) -> None:
    counted = await base.chat(request("Count from 1 to 20.", temperature=0, max_tokens=32))
    assert "7" in counted.content
    stopped = await base.chat(
        request("Count from 1 to 20.", temperature=0, max_tokens=32, stop=["7"])
    )
    assert stopped.content == counted.content[: counted.content.index("7")]
    assert stopped.finish_reason == "stop"

    short = await base.chat(request("What is 2+2?", temperature=0, max_tokens=40))
    assert short.finish_reason == "stop" and short.usage.completion_tokens < 40  # end of turn

    story = request("Tell me a story.", temperature=1.0, seed=7, max_tokens=12)
    first, again = await base.chat(story), await base.chat(story)
    assert first.content == again.content
    others = [
        (await base.chat(request("Tell me a story.", temperature=1.0, seed=s, max_tokens=12)))
        for s in (8, 9)
    ]
    assert any(o.content != first.content for o in others)


@shared_loop
async def test_a_client_that_leaves_frees_the_slot(base: TransformersEngine) -> None:
    worker = base.loaded.worker
    stream = base.stream(request("Tell me everything about history.", max_tokens=2000))
    pieces = [await anext(stream) for _ in range(3)]
    assert all(p.delta for p in pieces)
    assert worker.admitted == 1
    await stream.aclose()  # type: ignore[attr-defined]
    await eventually(lambda: worker.admitted == 0, "the slot freed")
    after = await base.chat(request("Hi", temperature=0, max_tokens=2))
    assert after.usage.completion_tokens == 2


def write_lora(directory: Path) -> Path:
    """A PEFT LoRA on q_proj and v_proj of every layer with non-zero B (as if trained)."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    rank = 4
    LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj", "v_proj"]).save_pretrained(
        str(directory)
    )
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for layer in range(N_LAYERS):
        for module, out in (("q_proj", HIDDEN), ("v_proj", KV_DIM)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            weights[f"{key}.lora_A.weight"] = torch.randn(rank, HIDDEN, generator=generator) * 0.05
            weights[f"{key}.lora_B.weight"] = torch.randn(out, rank, generator=generator) * 0.05
    save_file(weights, str(directory / "adapter_model.safetensors"))
    return directory


@shared_loop
async def test_a_lora_adapter_is_applied(base: TransformersEngine, tmp_path: Path) -> None:
    adapter = write_lora(tmp_path / "lora")
    tuned = TransformersEngine(
        ModelConfig(
            alias="tuned",
            engine="transformers",
            options={**OPTIONS, "adapter": str(adapter)},
        )
    )
    async with started(tuned):
        assert tuned.loaded is not base.loaded
        question = request("Write a haiku about the sea.", temperature=0, max_tokens=12)
        ours, plain = await tuned.chat(question), await base.chat(question)
        assert ours.content != plain.content
        assert ours.usage.prompt_tokens == plain.usage.prompt_tokens


@shared_loop
async def test_prompt_tuning_prefixes_its_virtual_tokens(
    base: TransformersEngine, tmp_path: Path
) -> None:
    # Virtual tokens that are exactly the embeddings of real tokens: the tuned model must
    # then answer as the base does with those tokens in front of the prompt.
    import torch
    from peft import PromptTuningConfig
    from safetensors.torch import save_file

    lead = base.loaded.chat.tokenize("Answer like a pirate.", special=False, add_bos=False)
    PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=len(lead), token_dim=HIDDEN
    ).save_pretrained(str(tmp_path / "pt"))
    table = base.loaded.model.get_input_embeddings().weight
    embeddings = table[torch.tensor(lead)].detach().clone()
    save_file({"prompt_embeddings": embeddings}, str(tmp_path / "pt/adapter_model.safetensors"))

    tuned = TransformersEngine(
        ModelConfig(
            alias="pt", engine="transformers", options={**OPTIONS, "adapter": str(tmp_path / "pt")}
        )
    )
    async with started(tuned):
        assert tuned.context_window == base.context_window - len(lead)  # type: ignore[operator]
        question = request("Say hello.", temperature=0, max_tokens=12)
        ours = await tuned.chat(question)
    prompt = base.loaded.prompt_tokens(question)
    loaded, counter = base.loaded, {"completion": 0}
    job = loaded.worker.submit(
        lambda job: loaded.generate(
            job, lead + prompt, Sampling(temperature=0, top_p=1), 12, ["<|im_end|>"], counter
        )
    )
    expected = "".join([text async for text, _finish in job.items()])
    assert ours.content == expected
    assert ours.usage.prompt_tokens == len(prompt)  # virtual tokens are not the caller's


def test_bad_options_and_missing_adapters_are_config_errors(tmp_path: Path) -> None:
    def make(**options: Any) -> TransformersEngine:
        return TransformersEngine(ModelConfig(alias="x", engine="transformers", options=options))

    with pytest.raises(ConfigError, match=r"unknown transformers option\(s\) lora_path"):
        make(lora_path="a.gguf")
    with pytest.raises(ConfigError, match="queue_size"):
        make(queue_size=-1)
    with pytest.raises(ConfigError, match="is not a PEFT adapter directory"):
        make(adapter=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="does not exist"):
        TransformersEngine(
            ModelConfig(alias="x", engine="transformers", model=str(tmp_path / "no.gguf"))
        )


def test_stop_scanner_holds_back_what_may_begin_a_stop() -> None:
    scanner = StopScanner(["<|im_end|>", "END"])
    assert scanner.feed("Hello <") == ("Hello ", False)
    assert scanner.feed("|im") == ("", False)
    assert scanner.feed("_x") == ("<|im_x", False)  # not a stop after all
    assert scanner.feed(" the E") == (" the ", False)
    assert scanner.feed("NDING") == ("", True)  # "END" reached: cut there
    tail = StopScanner(["stop"])
    assert tail.feed("all st") == ("all ", False)
    assert tail.flush() == "st"
