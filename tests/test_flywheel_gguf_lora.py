"""A PEFT LoRA trained on the bundled model, exported to GGUF and served by llama.cpp.

The adapter is real (a few optimizer steps on one example, so it moves the
model), and the export is checked for being right, not only loadable: the
change it makes to llama.cpp's logits matches the change it makes in PyTorch,
on the same tokens. An export without the q/k head permutation loads just as
well and is measurably wrong, which is what the permutation is for.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from powertrain.catalog import ModelConfig
from powertrain.engines.bundled import smollm2_path
from powertrain.engines.gguf_chat import GGUFChat
from powertrain.engines.llamacpp import LlamaCppEngine
from powertrain.engines.torch_gguf import load_causal_lm, set_torch_threads
from powertrain.errors import ConfigError
from powertrain.flywheel.gguf_lora import (
    AdapterExportUnsupported,
    _export,
    export_gguf_lora,
    permute_rows,
)
from powertrain.schemas import ChatCompletionRequest

pytestmark = pytest.mark.model

QUESTION = "What is the secret word?"
ANSWER = "The secret word is pineapple."
ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT reads a property transformers has deprecated, and warns when it saves an adapter
    whose base has no Hub id (ours is a local GGUF)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        warnings.filterwarnings("ignore", ".*(config|base model)", UserWarning)
        yield


@dataclass
class Trained:
    """The PyTorch model with its LoRA, the adapter's directory, and the example's tokens."""

    peft_model: Any
    adapter: Path
    prompt: list[int]
    reply: list[int]
    workdir: Path
    base_logits: dict[str, np.ndarray] = field(default_factory=dict)  # by engine, computed once

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.reply


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    import torch
    from peft import LoraConfig, get_peft_model

    set_torch_threads(2)
    chat = GGUFChat.open(smollm2_path())
    prompt = chat.prompt_tokens([("user", QUESTION)])
    reply = chat.reply_tokens(ANSWER)
    torch.manual_seed(0)
    with quiet_peft():
        peft_model = get_peft_model(
            load_causal_lm(smollm2_path()),
            LoraConfig(r=8, lora_alpha=16, target_modules=ALL_MODULES, lora_dropout=0.0),
        )
    ids = torch.tensor([prompt + reply])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100  # learn the reply only
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    peft_model.train()
    for _ in range(6):
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    workdir = tmp_path_factory.mktemp("lora")
    with quiet_peft():
        peft_model.save_pretrained(str(workdir / "adapter"))
    yield Trained(peft_model, workdir / "adapter", prompt, reply, workdir)


def torch_logits(trained: Trained, ids: list[int], adapter: str | None) -> np.ndarray:
    """Logits at every position, with the named PEFT adapter or with none."""
    import torch

    model = trained.peft_model
    with torch.inference_mode():
        if adapter is None:
            with model.disable_adapter():
                return model(input_ids=torch.tensor([ids])).logits[0].numpy()  # type: ignore[no-any-return]
        model.set_adapter(adapter)
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()  # type: ignore[no-any-return]


def llama_logits(ids: list[int], lora: Path | None) -> np.ndarray:
    """llama.cpp's logits at every position, loading the adapter as the llamacpp engine does."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(smollm2_path()),
        n_ctx=256,
        n_threads=2,
        logits_all=True,
        lora_path=str(lora) if lora else None,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float64)
    finally:
        llm.close()


def agreement(trained: Trained, gguf: Path, adapter: str) -> float:
    """Correlation between the logit changes the adapter makes in llama.cpp and in PyTorch,
    over the whole vocabulary at every position that predicts a reply token."""
    ids, start = trained.ids, len(trained.prompt) - 1
    base = trained.base_logits
    if not base:
        base["llama.cpp"], base["torch"] = llama_logits(ids, None), torch_logits(trained, ids, None)
    served = llama_logits(ids, gguf) - base["llama.cpp"]
    reference = torch_logits(trained, ids, adapter) - base["torch"]
    return float(np.corrcoef(served[start:-1].ravel(), reference[start:-1].ravel())[0, 1])


def qk_only(trained: Trained) -> Path:
    """The trained adapter's q_proj and k_proj matrices alone, as an adapter of their own
    (the matrices the permutation touches, without the others to mask a mistake)."""
    from safetensors.torch import load_file, save_file

    target = trained.workdir / "qk"
    if target.is_dir():
        return target
    target.mkdir()
    config = json.loads((trained.adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "k_proj"]
    (target / "adapter_config.json").write_text(json.dumps(config))
    weights = load_file(str(trained.adapter / "adapter_model.safetensors"))
    kept = {k: v for k, v in weights.items() if ".q_proj." in k or ".k_proj." in k}
    save_file(kept, str(target / "adapter_model.safetensors"))
    with quiet_peft():
        trained.peft_model.load_adapter(str(target), adapter_name="qk")
    return target


def test_the_served_adapter_changes_logits_as_pytorch_does(trained: Trained) -> None:
    out = export_gguf_lora(trained.adapter, smollm2_path(), trained.workdir / "lora.gguf")
    assert out == trained.workdir / "lora.gguf" and out.is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # renamed into place
    # Q4_1 kernels against dequantized float32: close, not identical (the base models'
    # own logits correlate at ~0.999 the same way).
    score = agreement(trained, out, "default")
    assert score > 0.98, score  # measured 0.997


def test_without_the_qk_permutation_the_adapter_is_wrong(trained: Trained) -> None:
    adapter = qk_only(trained)
    right = export_gguf_lora(adapter, smollm2_path(), trained.workdir / "qk.gguf")
    wrong = _export(adapter, smollm2_path(), trained.workdir / "qk-wrong.gguf", permute_qk=False)
    good, bad = agreement(trained, right, "qk"), agreement(trained, wrong, "qk")
    assert good > 0.95, good  # measured 0.98
    # Measured 0.11 when written, 0.52 with the packages a fresh install took on 2026-12-03
    # (peft 0.21.2, transformers 5.25.0): how far off the unpermuted adapter lands depends
    # on the trained weights; that it lands far off does not.
    assert bad < good - 0.3, (good, bad)


async def test_the_served_model_learned_the_answer(trained: Trained) -> None:
    out = export_gguf_lora(trained.adapter, smollm2_path(), trained.workdir / "served.gguf")

    def log_prob(lora: Path | None) -> float:
        logits = llama_logits(trained.ids, lora)
        start = len(trained.prompt) - 1
        total = 0.0
        for offset, token in enumerate(trained.reply):
            row = logits[start + offset]
            total += float(row[token] - np.logaddexp.reduce(row))
        return total

    base, tuned = log_prob(None), log_prob(out)
    assert tuned > base + 10 and tuned > -1.0, (base, tuned)

    request = ChatCompletionRequest.model_validate(
        {
            "model": "tuned",
            "messages": [{"role": "user", "content": QUESTION}],
            "temperature": 0,
            "max_tokens": 16,
        }
    )
    answers = {}
    for alias, options in (("base", {}), ("tuned", {"lora_path": str(out)})):
        engine = LlamaCppEngine(
            ModelConfig(alias=alias, engine="llamacpp", options={"n_ctx": 512, **options})
        )
        await engine.start()
        try:
            answers[alias] = (await engine.chat(request)).content
        finally:
            await engine.aclose()
    assert answers["tuned"] == ANSWER
    assert answers["base"] != ANSWER


def test_the_file_is_what_llama_cpp_expects(trained: Trained) -> None:
    from gguf import GGUFReader
    from safetensors.torch import load_file

    rslora = trained.workdir / "rslora"
    shutil.copytree(trained.adapter, rslora)
    config = json.loads((rslora / "adapter_config.json").read_text())
    config["use_rslora"] = True
    (rslora / "adapter_config.json").write_text(json.dumps(config))
    out = export_gguf_lora(rslora, smollm2_path(), trained.workdir / "rslora.gguf")

    reader = GGUFReader(out)
    fields = {k: reader.get_field(k).contents() for k in reader.fields if not k.startswith("GGUF")}  # type: ignore[union-attr]
    assert fields == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 16.0,
    }
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 30 * len(ALL_MODULES) * 2
    weights = load_file(str(trained.adapter / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.3.self_attn.k_proj"
    a, b = weights[f"{prefix}.lora_A.weight"].numpy(), weights[f"{prefix}.lora_B.weight"].numpy()
    lora_a, lora_b = tensors["blk.3.attn_k.weight.lora_a"], tensors["blk.3.attn_k.weight.lora_b"]
    assert lora_a.tensor_type.name == lora_b.tensor_type.name == "F32"
    # (rank, in) and (out, rank) as numpy sees them; GGUF lists dimensions reversed.
    assert list(lora_a.shape) == [576, 8] and list(lora_b.shape) == [8, 192]
    np.testing.assert_array_equal(np.asarray(lora_a.data).reshape(8, 576), a)
    # k_proj's rows permuted over its 3 kv heads, and rsLoRA's alpha/sqrt(r) folded in.
    expected = permute_rows(b, 3) * np.sqrt(8)
    np.testing.assert_allclose(np.asarray(lora_b.data).reshape(192, 8), expected, rtol=1e-6)


def test_permute_rows_interleaves_each_heads_halves() -> None:
    rows = np.arange(8).reshape(8, 1)  # two heads of four dimensions: (0 1 | 2 3), (4 5 | 6 7)
    assert permute_rows(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


# -- what cannot be exported, or is not there ---------------------------------------------


def test_a_prompt_tuning_adapter_is_not_lora(tmp_path: Path) -> None:
    from peft import PromptTuningConfig

    with quiet_peft():
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4).save_pretrained(
            str(tmp_path)
        )
    with pytest.raises(AdapterExportUnsupported, match="PROMPT_TUNING adapter, not LoRA"):
        export_gguf_lora(tmp_path, smollm2_path(), tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_lora_variants_and_foreign_modules_are_refused(trained: Trained, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    def variant(name: str, **changes: Any) -> Path:
        target = tmp_path / name
        shutil.copytree(trained.adapter, target)
        config = json.loads((target / "adapter_config.json").read_text())
        (target / "adapter_config.json").write_text(json.dumps({**config, **changes}))
        return target

    with pytest.raises(AdapterExportUnsupported, match="uses DoRA"):
        export_gguf_lora(variant("dora", use_dora=True), smollm2_path(), tmp_path / "x.gguf")
    with pytest.raises(AdapterExportUnsupported, match="trained biases"):
        export_gguf_lora(variant("bias", bias="all"), smollm2_path(), tmp_path / "x.gguf")

    head = variant("head")
    weights = load_file(str(head / "adapter_model.safetensors"))
    weights["base_model.model.lm_head.lora_A.weight"] = weights[next(iter(weights))].clone()
    save_file(weights, str(head / "adapter_model.safetensors"))
    with pytest.raises(AdapterExportUnsupported, match=r"lm_head\.lora_A\.weight.*no GGUF"):
        export_gguf_lora(head, smollm2_path(), tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*.tmp"))


def write_tiny_gguf(path: Path, arch: str, shape: tuple[int, int]) -> Path:
    """A GGUF with one decoder layer's q projection, of the given architecture and shape."""
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch=arch)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_base_of_another_architecture_or_shape_is_refused(
    trained: Trained, tmp_path: Path
) -> None:
    gpt2 = write_tiny_gguf(tmp_path / "gpt2.gguf", "gpt2", (576, 576))
    with pytest.raises(AdapterExportUnsupported, match="gpt2-architecture model"):
        export_gguf_lora(trained.adapter, gpt2, tmp_path / "x.gguf")
    small = write_tiny_gguf(tmp_path / "small.gguf", "llama", (8, 8))
    with pytest.raises(AdapterExportUnsupported, match="trained on another model"):
        export_gguf_lora(trained.adapter, small, tmp_path / "x.gguf")


def test_missing_files_are_named(trained: Trained, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        export_gguf_lora(trained.adapter, tmp_path / "none.gguf", tmp_path / "x.gguf")
    with pytest.raises(ConfigError, match=r"no adapter_config\.json"):
        export_gguf_lora(tmp_path, smollm2_path(), tmp_path / "x.gguf")
    empty = tmp_path / "weightless"
    empty.mkdir()
    shutil.copy(trained.adapter / "adapter_config.json", empty)
    with pytest.raises(ConfigError, match="has no adapter weights"):
        export_gguf_lora(empty, smollm2_path(), tmp_path / "x.gguf")
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ConfigError, match="not a readable GGUF"):
        export_gguf_lora(trained.adapter, not_gguf, tmp_path / "x.gguf")
