"""Suite files: the three dataset forms, path safety, and one-line errors naming the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from powertrain.evals import SuiteError, load_suite, load_suite_text

BASE = """
name: s
targets:
  - task: intent
    variants: [zero_shot, few_shot]
  - model: smollm2
    prompt: "Classify: {{ text }}"
assert:
  - type: json-path
    path: $.intent
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_inline_cases_targets_and_defaults(tmp_path: Path) -> None:
    text = BASE + "dataset:\n  cases:\n    - vars: {text: hi}\n      expected: greeting\n"
    loaded = load_suite(write(tmp_path, text))
    suite = loaded.suite
    assert suite.target_ids() == ["task:intent@zero_shot", "task:intent@few_shot", "model:smollm2"]
    assert suite.concurrency == 4 and suite.repeat == 1 and suite.threshold is None
    assert loaded.cases[0].vars == {"text": "hi"} and loaded.cases[0].expected == "greeting"
    assert loaded.content_hash == load_suite(write(tmp_path, text)).content_hash


def test_jsonl_and_csv_files_relative_to_the_suite(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cases.jsonl").write_text(
        '{"text": "a", "intent": "x", "row": 1}\n\n{"vars": {"text": "b"}, "expected": "y"}\n',
        encoding="utf-8",
    )
    (tmp_path / "data" / "cases.csv").write_text("text,intent\nc,z\nd,w\n", encoding="utf-8")
    jsonl = load_suite(
        write(tmp_path, BASE + "dataset: {file: data/cases.jsonl, expected: intent, vars: [text]}")
    )
    assert [(c.vars, c.expected) for c in jsonl.cases] == [
        ({"text": "a"}, "x"),
        ({"text": "b"}, "y"),
    ]
    csv = load_suite(
        write(tmp_path, BASE + "dataset: {file: data/cases.csv, expected: intent, limit: 1}")
    )
    assert [(c.vars, c.expected) for c in csv.cases] == [({"text": "c"}, "z")]


@pytest.mark.parametrize(
    "name", ["../outside.jsonl", "/etc/passwd.jsonl", "a/%2e%2e/%2e%2e/x.jsonl", "x\x00.jsonl"]
)
def test_case_files_stay_inside_the_suite_directory(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    inner = tmp_path / "inner"
    inner.mkdir()
    text = BASE + f"dataset: {{file: {name!r}}}\n"
    with pytest.raises(SuiteError, match=r"dataset\.file"):
        load_suite(write(inner, text))


def test_symlink_out_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(SuiteError, match="leaves the suite's directory"):
        load_suite(write(inner, BASE + "dataset: {file: link.jsonl}\n"))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("name: s\ntargets: [{task: t}]\n", "dataset: Field required"),
        (BASE + "dataset: {cases: []}\nconcurrency: 0\n", "concurrency: Input should be greater"),
        (
            BASE.replace("task: intent", "task: intent\n    prompt: hi") + "dataset: {cases: [{}]}",
            "targets[0]: a task target uses",
        ),
        (
            "name: s\ndataset: {cases: [{}]}\ntargets: [{model: m}]\n",
            "targets[0]: model target 'm' needs a prompt",
        ),
        (BASE + "dataset: {cases: [{}], file: x.jsonl}\n", "dataset: give exactly one of"),
        (BASE + "dataset: {cases: [{}]}\nbogus: 1\n", "bogus: Extra inputs are not permitted"),
        (
            BASE + "dataset: {cases: [{}]}\nassert: [{type: equals, weight: -1}]\n",
            "assert[0].weight",
        ),
        ("name: [unclosed\n", "YAML syntax error (line"),
        ("- just a list\n", "expected a mapping"),
        (BASE + "dataset: {cases: []}\n", "has no cases"),
        (BASE + "dataset: {file: missing.jsonl}\n", "cannot read 'missing.jsonl'"),
        (BASE + "dataset: intents@2\n", "a stored dataset ('intents@2') needs the store"),
    ],
)
def test_config_errors_are_one_line_naming_the_path(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(SuiteError) as info:
        load_suite_text(text, base_dir=tmp_path, where="suite.yaml")
    message = str(info.value)
    assert message.startswith("suite.yaml: ") and "\n" not in message
    assert words in message, message


def test_content_hash_follows_the_suite_as_written_and_its_cases(tmp_path: Path) -> None:
    cases = "dataset:\n  cases:\n    - vars: {text: hi}\n      expected: greeting\n"
    first = load_suite(write(tmp_path, BASE + cases)).content_hash
    reordered = cases + "# a comment\n" + BASE  # same content, other key order
    assert load_suite(write(tmp_path, reordered)).content_hash == first
    other_case = cases.replace("hi", "hello")
    assert load_suite(write(tmp_path, BASE + other_case)).content_hash != first
    stricter = BASE + cases + "threshold: 0.5\n"
    assert load_suite(write(tmp_path, stricter)).content_hash != first
