"""The bundled all-MiniLM-L6-v2 behind /v1/embeddings, offline, through the official openai SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from tokenizers import Tokenizer

from powertrain.catalog import BUNDLED_EMBEDDING_MODEL, Catalog
from powertrain.engines.bundled import minilm_path
from powertrain.engines.sentence_transformers import SentenceTransformersEngine
from powertrain.errors import ConfigError, UpstreamTimeout
from powertrain.schemas import ChatCompletionRequest
from tests.conftest import ServerProcess, start_server

pytestmark = pytest.mark.model

DIM = 384
MAX_SEQ_LENGTH = 256
# Common words that are one WordPiece each, so word counts bound token counts.
WORDS = "river music garden window yellow mountain coffee letter summer engine forest market"
WORDS_B = "doctor planet silver morning island button camera school winter bridge kitchen ocean"


def words(count: int, vocabulary: str = WORDS) -> str:
    vocab = vocabulary.split()
    return " ".join(vocab[i % len(vocab)] for i in range(count))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("embeddings")
    proc = start_server(home, env={"POWERTRAIN_HOME": str(home / "data")})
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The model's own tokenizer file, read without transformers, truncated as the model is."""
    tok = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128 for training; counting must not
    tok.enable_truncation(MAX_SEQ_LENGTH)
    return tok


def embed(client: openai.OpenAI, texts: list[str], **kwargs: Any) -> list[list[float]]:
    result = client.embeddings.create(model="minilm", input=texts, **kwargs)
    assert [d.index for d in result.data] == list(range(len(texts)))
    return [d.embedding for d in result.data]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def get_trace(server: ServerProcess, trace_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/api/traces/{trace_id}", timeout=10) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


SENTENCES = [
    "The cat sits on the mat.",
    "Quarterly revenue grew by twelve percent.",
    "How do I reset my password?",
]


def test_unit_vectors_in_input_order_with_exact_usage_and_a_trace(
    server: ServerProcess, client: openai.OpenAI, tokenizer: Tokenizer
) -> None:
    raw = client.embeddings.with_raw_response.create(
        model="minilm", input=SENTENCES, encoding_format="float"
    )
    result = raw.parse()
    assert result.model == "minilm" and len(result.data) == len(SENTENCES)
    for i, item in enumerate(result.data):
        assert item.index == i and len(item.embedding) == DIM
        assert math.fsum(x * x for x in item.embedding) == pytest.approx(1.0, abs=1e-5)
    # Input order: each row is the embedding of the text at that position.
    for text, row in zip(SENTENCES, result.data, strict=True):
        alone = embed(client, [text], encoding_format="float")[0]
        assert alone == pytest.approx(row.embedding, abs=1e-5)

    expected = sum(len(e.ids) for e in tokenizer.encode_batch(SENTENCES))
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected

    trace = get_trace(server, raw.headers["x-powertrain-trace-id"])
    assert trace["status"] == "ok" and trace["metadata"]["kind"] == "embeddings"
    assert trace["model"] == "minilm" and trace["engine"] == "sentence-transformers"
    assert trace["prompt_tokens"] == expected and trace["cost_usd"] == 0.0


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(client: openai.OpenAI) -> None:
    question, paraphrase, unrelated, also_unrelated = embed(
        client,
        [
            "How do I reset my password?",
            "I forgot my password, how can I change it?",
            "What time does the train to Paris leave?",
            "Bananas are rich in potassium.",
        ],
    )
    assert cosine(question, paraphrase) > cosine(question, unrelated)
    assert cosine(question, paraphrase) > cosine(question, also_unrelated)
    assert cosine(paraphrase, question) > cosine(paraphrase, unrelated)


def test_base64_matches_float(client: openai.OpenAI) -> None:
    floats = embed(client, SENTENCES, encoding_format="float")
    # The SDK's default asks for base64 and decodes it itself; float32 survives both ways.
    for decoded, expected in zip(embed(client, SENTENCES), floats, strict=True):
        assert decoded == pytest.approx(expected, rel=1e-6, abs=1e-7)
    encoded = client.embeddings.create(model="minilm", input=SENTENCES, encoding_format="base64")
    for item, expected in zip(encoded.data, floats, strict=True):
        assert isinstance(item.embedding, str)
        raw = base64.b64decode(item.embedding)
        assert list(struct.unpack(f"<{DIM}f", raw)) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_chat_with_an_embedding_model_is_a_clear_400(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    messages: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="minilm", messages=messages)
    assert "model 'minilm' only embeds; use it with /v1/embeddings" in info.value.message
    with pytest.raises(openai.BadRequestError, match="only embeds"):
        client.chat.completions.create(model="minilm", messages=messages, stream=True)
    trace_id = info.value.response.headers["x-powertrain-trace-id"]
    assert get_trace(server, trace_id)["status"] == "error"


def test_empty_and_very_long_inputs(client: openai.OpenAI, tokenizer: Tokenizer) -> None:
    long = words(10_000)
    prefix = words(300)  # already past max_seq_length
    shared = words(200)  # inside max_seq_length (and past 128, the tokenizer file's own cap)
    first, second = f"{shared} {words(300)}", f"{shared} {words(300, WORDS_B)}"
    texts = ["", long, prefix, first, second]
    result = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    empty, long_vec, prefix_vec, first_vec, second_vec = (d.embedding for d in result.data)

    assert len(empty) == DIM and math.fsum(x * x for x in empty) == pytest.approx(1.0, abs=1e-5)
    # Truncated to the first max_seq_length tokens: only those count, and only they matter.
    assert long_vec == pytest.approx(prefix_vec, abs=1e-5)
    assert cosine(first_vec, second_vec) < 0.999  # tokens 201..254 were read
    counts = [len(e.ids) for e in tokenizer.encode_batch(texts)]
    assert counts == [2, MAX_SEQ_LENGTH, MAX_SEQ_LENGTH, MAX_SEQ_LENGTH, MAX_SEQ_LENGTH]
    assert result.usage.prompt_tokens == sum(counts)


def test_two_hundred_inputs_in_one_call(client: openai.OpenAI) -> None:
    # Lengths vary so batching (longest first) must put rows back in input order.
    texts = [f"sentence {i}: " + words(1 + i % 23) for i in range(200)]
    started = time.monotonic()
    result = client.embeddings.create(model="minilm", input=texts, encoding_format="float")
    assert time.monotonic() - started < 120
    assert len(result.data) == 200 and [d.index for d in result.data] == list(range(200))
    for i in (0, 57, 199):
        alone = embed(client, [texts[i]], encoding_format="float")[0]
        assert result.data[i].embedding == pytest.approx(alone, abs=1e-5)


def test_powertrain_models_lists_minilm() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "powertrain.cli", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    models = {m["alias"]: m for m in json.loads(out)}
    minilm = models["minilm"]
    assert minilm["engine"] == "sentence-transformers"
    assert minilm["context_window"] == MAX_SEQ_LENGTH
    assert minilm["price_input"] == minilm["price_output"] == 0.0
    assert "smollm2" in models


def test_a_user_alias_minilm_replaces_the_bundled_one() -> None:
    catalog = Catalog.from_config({"minilm": {"engine": "openai", "model": "text-embedding"}})
    assert catalog.get("minilm").engine == "openai"
    assert "smollm2" in catalog and len(catalog) == 2


# -- the engine in-process ----------------------------------------------------------------


@pytest.fixture
async def engine() -> AsyncIterator[SentenceTransformersEngine]:
    eng = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL)
    await eng.start()
    yield eng
    await eng.aclose()


async def test_loads_without_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> Any:
        attempts.append(args)
        raise OSError("network refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    engine = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL)
    await engine.start()
    try:
        result = await engine.embed(["offline"])
    finally:
        await engine.aclose()
    assert len(result.vectors[0]) == DIM and attempts == []


async def test_counting_and_the_deadline(engine: SentenceTransformersEngine) -> None:
    request = ChatCompletionRequest.model_validate(
        {"model": "minilm", "messages": [{"role": "user", "content": "hello world"}]}
    )
    assert engine.count_tokens(request) == engine.count_text("user: hello world")
    assert engine.count_text("hello world") == 4  # [CLS] hello world [SEP]
    assert engine.count_text(words(1000)) == 1002  # counted before truncation
    assert engine.context_window == MAX_SEQ_LENGTH

    many = [words(300)] * 2000
    with pytest.raises(UpstreamTimeout, match="did not embed 2000 inputs"):
        await engine.embed(many, deadline=time.monotonic() + 0.2)
    worker = engine.loaded.worker
    for _ in range(1000):  # the running batch finishes, the rest never starts
        if worker.admitted == 0:
            break
        await asyncio.sleep(0.01)
    assert worker.admitted == 0
    assert len((await engine.embed(["still serving"])).vectors) == 1


async def test_aliases_share_one_loaded_model() -> None:
    a = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL.model_copy(update={"alias": "a"}))
    b = SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL.model_copy(update={"alias": "b"}))
    await a.start()
    await b.start()
    assert a.loaded is b.loaded and a.loaded.users == 2
    await a.aclose()
    assert len((await b.embed(["shared"])).vectors) == 1
    await b.aclose()


async def test_options() -> None:
    raw = SentenceTransformersEngine(
        BUNDLED_EMBEDDING_MODEL.model_copy(
            update={"options": {"normalize": False, "batch_size": 2, "max_seq_length": 8}}
        )
    )
    await raw.start()
    try:
        assert raw.context_window == 8
        text = "normalisation is a choice of the alias"
        vector = (await raw.embed([text])).vectors[0]
        assert math.fsum(x * x for x in vector) > 1.5  # mean pooling without the unit scaling
        three = await raw.embed(["a", "b", text])  # two batches of batch_size 2
        assert three.vectors[2] == pytest.approx(vector, abs=1e-5)
        assert three.usage.prompt_tokens == 3 + 3 + 8
    finally:
        await raw.aclose()

    with pytest.raises(ConfigError, match=r"\[models.minilm.options\] n_thread"):
        SentenceTransformersEngine(
            BUNDLED_EMBEDDING_MODEL.model_copy(update={"options": {"n_thread": 2}})
        )
    with pytest.raises(ConfigError, match="not a sentence-transformers model directory"):
        SentenceTransformersEngine(BUNDLED_EMBEDDING_MODEL.model_copy(update={"model": "/nope"}))
    too_long = SentenceTransformersEngine(
        BUNDLED_EMBEDDING_MODEL.model_copy(update={"options": {"max_seq_length": 10_000}})
    )
    with pytest.raises(ConfigError, match="over the 512 positions"):
        await too_long.start()


def test_dimensions_the_model_cannot_give_are_refused(client: openai.OpenAI) -> None:
    assert len(embed(client, ["a short text"], dimensions=DIM)[0]) == DIM
    with pytest.raises(openai.BadRequestError, match="cannot shorten them to 128") as caught:
        embed(client, ["a short text"], dimensions=128)
    assert caught.value.body["param"] == "dimensions"  # type: ignore[index]
