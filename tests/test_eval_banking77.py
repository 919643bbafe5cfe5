"""The Banking77 eval suite on the bundled model: a small slice, both variants, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from powertrain.cli import main
from powertrain.evals import load_suite
from tests.test_example_banking77 import DATA, EXAMPLE, needs_data, prepare


def _example_copy(tmp_path: Path, rows: int) -> Path:
    for name in ("eval.yaml", "powertrain.toml", "intent.schema.json"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    heldout = prepare.load_split(DATA).heldout[:rows]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "heldout.jsonl").write_text(
        "".join(json.dumps(row.record()) + "\n" for row in heldout), encoding="utf-8"
    )
    return tmp_path / "eval.yaml"


@needs_data
def test_suite_reads_the_heldout_file(tmp_path: Path) -> None:
    loaded = load_suite(_example_copy(tmp_path, 5))
    assert loaded.suite.target_ids() == ["task:banking77@zero_shot", "task:banking77@few_shot"]
    first = loaded.cases[0]
    assert set(first.vars) == {"text"} and isinstance(first.expected, str)


@needs_data
@pytest.mark.model
def test_eval_compares_variants_on_the_bundled_model(tmp_path: Path) -> None:
    suite = _example_copy(tmp_path, 8)
    args = ["eval", "run", str(suite), "--config", str(tmp_path / "powertrain.toml")]
    # A 135M model is not perfect on 77 intents, so the gate at 100 % fails the run.
    result = CliRunner().invoke(main, [*args, "--json", "--report", "r.html", "--fail-under", "1"])
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["results"] == 16
    by_target = {t["target"]: t for t in body["targets"]}
    assert set(by_target) == {"task:banking77@zero_shot", "task:banking77@few_shot"}
    for summary in by_target.values():
        assert summary["results"] == 8 and summary["errors"] == 0  # the grammar keeps JSON valid
    assert body["pass_rate"] < 1 and "<svg" in (tmp_path / "r.html").read_text()
