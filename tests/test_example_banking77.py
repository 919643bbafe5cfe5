"""The Banking77 example: its config, its schema, its split and its few-shot examples.

Tests that read the dataset itself skip when ``../shared/data/banking77`` is not
next to the checkout; the split logic is also tested on a small synthetic set.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
from jsonschema import Draft202012Validator

from powertrain import AsyncClient
from powertrain.config import load_config
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "banking77"
CONFIG = EXAMPLE / "powertrain.toml"
DATA = REPO.parent / "shared" / "data" / "banking77"

needs_data = pytest.mark.skipif(
    not (DATA / "train.csv").is_file(), reason=f"the Banking77 data is not in {DATA}"
)


def _load_prepare() -> ModuleType:
    name = "banking77_prepare"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


prepare = _load_prepare()


def _schema() -> dict[str, object]:
    return json.loads((EXAMPLE / "intent.schema.json").read_text(encoding="utf-8"))


def test_config_loads_with_both_variants() -> None:
    config = load_config(CONFIG)
    task = config.tasks["banking77"]
    assert task.version.input == "text"
    assert list(task.version.variables) == ["text"]
    assert task.settings.params["temperature"] == 0
    assert task.version.output_schema == _schema()
    variants = task.settings.variants
    assert set(variants) == {"zero_shot", "few_shot"}
    assert variants["zero_shot"].examples == 0
    assert variants["few_shot"].examples is None and variants["few_shot"].weight == 0
    assert len(task.version.examples) == 77


def test_schema_has_exactly_the_77_labels() -> None:
    schema = _schema()
    labels = schema["properties"]["intent"]["enum"]  # type: ignore[index]
    assert len(labels) == 77 and len(set(labels)) == 77
    assert schema == prepare.schema_for(labels)
    Draft202012Validator.check_schema(schema)


def test_few_shot_examples_cover_every_intent_and_validate() -> None:
    schema = _schema()
    validator = Draft202012Validator(schema)
    examples = load_config(CONFIG).tasks["banking77"].version.examples
    for example in examples:
        assert not list(validator.iter_errors(example.output)), example
    intents = [e.output["intent"] for e in examples]
    assert sorted(intents) == sorted(schema["properties"]["intent"]["enum"])  # type: ignore[index]


def _synthetic(directory: Path, labels: list[str], per_label: int) -> Path:
    directory.mkdir()
    (directory / "categories.json").write_text(json.dumps(labels), encoding="utf-8")
    with (directory / "train.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        for label in labels:
            for i in range(per_label):
                writer.writerow([f"message {i} about {label},\nsecond line", label])
    return directory


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_is_deterministic_disjoint_and_stratified(tmp_path: Path) -> None:
    labels = ["card_arrival", "age_limit", "top_up_failed"]
    data = _synthetic(tmp_path / "data", labels, per_label=9)
    out = tmp_path / "out"
    out.mkdir()
    (out / "powertrain.toml").write_text(
        "[tasks.banking77]\nuser = '{{ text }}'\nvariables = { text = 'string' }\n"
        "[tasks.banking77.output]\nschema_file = 'intent.schema.json'\n"
    )
    assert prepare.main(["--data", str(data), "--out", str(out)]) == 0
    first = _outputs(out)
    assert prepare.main(["--data", str(data), "--out", str(out)]) == 0
    assert _outputs(out) == first  # idempotent, byte for byte

    heldout = _jsonl(out / "data" / "heldout.jsonl")
    train = _jsonl(out / "data" / "train.jsonl")
    assert [r["intent"] for r in heldout[:3]] == labels  # rounds of one per intent
    for label in labels:
        assert sum(r["intent"] == label for r in heldout) == 5
    held_rows = {r["row"] for r in heldout}
    assert held_rows.isdisjoint(r["row"] for r in train)
    assert held_rows | {r["row"] for r in train} == set(range(27))
    rows_file = (out / "data" / "heldout_rows.txt").read_text().split()
    assert [int(x) for x in rows_file] == [r["row"] for r in heldout]

    config = (out / "powertrain.toml").read_text()
    assert config.count(prepare.BEGIN) == 1 and config.count("[[tasks.banking77.examples]]") == 3
    shots = load_config(out / "powertrain.toml").tasks["banking77"].version.examples
    train_texts = {r["text"] for r in train}
    assert {s.variables["text"] for s in shots} <= train_texts  # the multi-line text survives

    # Another seed gives another split.
    assert prepare.main(["--data", str(data), "--out", str(out), "--seed", "1"]) == 0
    assert _outputs(out)["data/heldout_rows.txt"] != first["data/heldout_rows.txt"]


@needs_data
def test_committed_files_are_what_prepare_writes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(CONFIG, out / "powertrain.toml")
    assert prepare.main(["--data", str(DATA), "--out", str(out)]) == 0
    for name in ("intent.schema.json", "powertrain.toml", "data/heldout_rows.txt"):
        assert (out / name).read_bytes() == (EXAMPLE / name).read_bytes(), name
    labels = json.loads((DATA / "categories.json").read_text(encoding="utf-8"))
    assert _schema()["properties"]["intent"]["enum"] == labels  # type: ignore[index]


@needs_data
def test_real_split_has_5_per_intent_and_examples_only_from_train() -> None:
    split = prepare.load_split(DATA)
    assert len(split.heldout) == 385 and len(split.heldout) + len(split.train) == 10_003
    per_intent: dict[str, int] = {}
    for row in split.heldout:
        per_intent[row.intent] = per_intent.get(row.intent, 0) + 1
    assert per_intent == dict.fromkeys(split.labels, 5)
    held = {r.row for r in split.heldout}
    assert held.isdisjoint(r.row for r in split.train)
    assert prepare.load_split(DATA) == split  # deterministic

    train = {r.text: r.intent for r in split.train}
    held_texts = {r.text for r in split.heldout}
    for example in load_config(CONFIG).tasks["banking77"].version.examples:
        text = example.variables["text"]
        assert text not in held_texts
        assert train[text] == example.output["intent"]


@needs_data
@pytest.mark.model
async def test_zero_shot_gives_valid_intents() -> None:
    labels = set(_schema()["properties"]["intent"]["enum"])  # type: ignore[index]
    rows = prepare.load_split(DATA).heldout[:3]
    async with AsyncClient(load_config(CONFIG)) as client:
        for row in rows:
            result = await client.run_task("banking77", {"text": row.text}, variant="zero_shot")
            assert result.variant == "zero_shot"
            assert result.output["intent"] in labels  # valid; accuracy is not asserted
            trace = await client.trace(result.trace_id)
            assert trace is not None and trace.task == "banking77"
