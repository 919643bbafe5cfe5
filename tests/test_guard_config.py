"""Guardrails from config: built-ins and plugin types through one hook, one-line errors."""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from powertrain.errors import ConfigError
from powertrain.guard import (
    Action,
    GuardrailBlocked,
    GuardrailsConfig,
    InjectionGuardrail,
    Match,
    Options,
    PiiGuardrail,
    guardrail_types,
)
from powertrain.guard.base import Guardrail
from powertrain.guard.builtin import BUILTIN_TYPES
from powertrain.plugins import DEFAULT_PLUGINS, hookimpl, plugin_manager

CONFIG = """
[guardrails.pii]
type = "pii"
action = "redact"
stages = ["input", "output"]
categories = ["email", "card", "iban", "secret"]

[guardrails.injection]
type = "injection"
threshold = 0.6

[guardrails.no_competitors]
type = "banned_terms"
terms = ["acme corp"]
action = "block"
global = false

[guardrails.limits]
type = "size"
max_messages = 50
max_chars = 100000

[guardrails.shape]
type = "schema"
schema = { type = "object", required = ["answer"] }
global = false
"""


def parse(text: str, **kwargs: Any) -> GuardrailsConfig:
    return GuardrailsConfig.parse(tomllib.loads(text).get("guardrails"), **kwargs)


def test_builtins_register_through_the_hook() -> None:
    assert "powertrain.guard.builtin" in DEFAULT_PLUGINS
    types = guardrail_types()
    assert {cls.type_name for cls in BUILTIN_TYPES} <= set(types)
    assert types["pii"] is PiiGuardrail


def test_config_builds_global_and_task_pipelines() -> None:
    config = parse(CONFIG)
    assert config.global_names == ("pii", "injection", "limits")
    assert [g.name for g in config.pipeline().guardrails] == ["pii", "injection", "limits"]
    task = config.pipeline(["!injection", "no_competitors", "shape"])
    assert [g.name for g in task.guardrails] == ["pii", "limits", "no_competitors", "shape"]
    pii = config.guardrails["pii"]
    assert isinstance(pii, PiiGuardrail) and pii.action is Action.REDACT
    assert pii.categories == {"email", "card", "iban", "secret"}
    injection = config.guardrails["injection"]
    assert isinstance(injection, InjectionGuardrail) and injection.threshold == 0.6
    with pytest.raises(GuardrailBlocked, match="no_competitors"):
        task.check_input([{"role": "user", "content": "Is ACME Corp cheaper?"}])
    assert GuardrailsConfig.parse(None).pipeline().guardrails == ()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[guardrails.x]\ntype = "nope"',
            r"guardrails\.x\.type: no guardrail type 'nope' \(known:",
        ),
        ('[guardrails.x]\ntype = "pii"\naction = "delete"', r"guardrails\.x\.action: 'delete' is"),
        (
            '[guardrails.x]\ntype = "size"\nmax_chars = 5\naction = "redact"',
            r"guardrails\.x\.action: a size guardrail cannot redact \(choose: block, flag\)",
        ),
        ('[guardrails.x]\ntype = "pii"\nstages = ["middle"]', r"guardrails\.x\.stages: 'middle'"),
        (
            '[guardrails.x]\ntype = "schema"\nschema = {}\nstages = ["input"]',
            r"guardrails\.x\.stages: 'input' is not a stage of a schema guardrail",
        ),
        (
            '[guardrails.x]\ntype = "pii"\ncategorie = ["email"]',
            r"guardrails\.x\.categorie: unknown field for a pii guardrail \(fields: .*categories",
        ),
        (
            '[guardrails.x]\ntype = "pii"\ncategories = ["mail"]',
            r"guardrails\.x\.categories: 'mail'",
        ),
        (
            '[guardrails.x]\ntype = "pii"\ncategories = "email"\nglobal = 1',
            r"guardrails\.x\.global",
        ),
        (
            '[guardrails.x]\ntype = "injection"\nthreshold = 2',
            r"guardrails\.x\.threshold: must be at",
        ),
        (
            '[guardrails.x]\ntype = "injection"\nthreshold = "hi"',
            r"guardrails\.x\.threshold: must be a",
        ),
        (
            '[guardrails.x]\ntype = "injection"\nclassifier = "no_such_module_here:f"',
            r"guardrails\.x\.classifier: cannot import 'no_such_module_here'",
        ),
        (
            '[guardrails.x]\ntype = "banned_terms"\nterms = [1]',
            r"guardrails\.x\.terms: must be a list",
        ),
        (
            '[guardrails.x]\ntype = "banned_terms"\npatterns = ["("]',
            r"guardrails\.x\.patterns: '\('",
        ),
        ('[guardrails.x]\ntype = "banned_terms"', r"guardrails\.x: give at least one term"),
        ('[guardrails.x]\ntype = "banned_topics"\ntopics = []', r"guardrails\.x\.topics: must be"),
        (
            '[guardrails.x]\ntype = "size"\nmax_chars = 0',
            r"guardrails\.x\.max_chars: must be at least",
        ),
        (
            '[guardrails.x]\ntype = "size"\nmax_chars = 1.5',
            r"guardrails\.x\.max_chars: must be an int",
        ),
        ('[guardrails.x]\ntype = "schema"', r"guardrails\.x\.schema: give either schema"),
        (
            '[guardrails.x]\ntype = "schema"\nschema = { type = 5 }',
            r"guardrails\.x: not a valid JSON Schema",
        ),
        ("[guardrails]\nx = 3", r"guardrails\.x: must be a table"),
    ],
)
def test_config_errors_are_one_line_and_name_the_field(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(toml)
    assert re.search(message, info.value.message), info.value.message
    assert "\n" not in info.value.message


def test_task_list_errors() -> None:
    config = parse(CONFIG)
    with pytest.raises(ConfigError, match=r"tasks\.t\.guardrails: no guardrail named 'ghost'"):
        config.pipeline(["ghost"], where="tasks.t.guardrails")
    with pytest.raises(ConfigError, match="not global"):
        config.pipeline(["!shape"], where="tasks.t.guardrails")
    with pytest.raises(ConfigError, match="must be a list"):
        config.check_names("pii", where="tasks.t.guardrails")


def test_type_defaults_to_the_table_name_and_files_resolve(tmp_path: Path) -> None:
    (tmp_path / "shape.json").write_text('{"type": "array"}')
    (tmp_path / "my_classifier.py").write_text("def score(text):\n    return 0.99\n")
    config = parse(
        '[guardrails.pii]\n[guardrails.s]\ntype = "schema"\nschema_file = "shape.json"\n'
        '[guardrails.i]\ntype = "injection"\naction = "flag"\nclassifier = "my_classifier:score"\n',
        base_dir=tmp_path,
    )
    assert isinstance(config.guardrails["pii"], PiiGuardrail)
    assert config.pipeline().check_output("[1]").findings == []
    outcome = config.pipeline().check_input([{"role": "user", "content": "hello"}])
    assert [f.detail for f in outcome.findings] == ["classifier"]
    with pytest.raises(ConfigError, match=r"guardrails\.s\.schema_file: cannot read JSON"):
        parse('[guardrails.s]\ntype = "schema"\nschema_file = "missing.json"', base_dir=tmp_path)


# ---------------------------------------------------------------------------- plugins


class ShoutingGuardrail(Guardrail):
    """A third-party guardrail type: too many capital letters."""

    type_name: ClassVar[str] = "shouting"
    actions = frozenset({Action.BLOCK, Action.FLAG, Action.REDACT})

    def __init__(self, name: str, *, max_ratio: float = 0.5, **common: Any):
        super().__init__(name, **common)
        self.max_ratio = max_ratio

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        ratio = options.number("max_ratio", default=0.5, minimum=0, maximum=1)
        return cls(name, max_ratio=ratio, **options.common())

    def check(self, text: str) -> Sequence[Match]:
        letters = [c for c in text if c.isalpha()]
        if not letters or sum(c.isupper() for c in letters) / len(letters) <= self.max_ratio:
            return []
        return [
            Match("shouting", m.span(), reason="too loud") for m in re.finditer(r"[A-Z]{2,}", text)
        ]


class ShoutingPlugin:
    @hookimpl
    def register_guardrails(self, register: Callable[[type[Guardrail]], None]) -> None:
        register(ShoutingGuardrail)


@pytest.fixture
def shouting_plugin() -> Iterator[None]:
    pm = plugin_manager()
    plugin = ShoutingPlugin()
    pm.register(plugin, name="shouting-test-plugin")
    yield
    pm.unregister(plugin)


@pytest.mark.usefixtures("shouting_plugin")
def test_a_plugin_guardrail_type_is_configured_like_a_builtin() -> None:
    assert guardrail_types()["shouting"] is ShoutingGuardrail
    config = parse('[guardrails.calm]\ntype = "shouting"\naction = "redact"\nmax_ratio = 0.2')
    outcome = config.pipeline().check_input([{"role": "user", "content": "pls STOP NOW"}])
    assert outcome.messages == [{"role": "user", "content": "pls [SHOUTING_1] [SHOUTING_2]"}]
    blocking = parse('[guardrails.calm]\ntype = "shouting"')
    with pytest.raises(GuardrailBlocked) as info:
        blocking.pipeline().check_input([{"role": "user", "content": "NOOOO"}])
    assert "'calm'" in info.value.message and "'shouting'" in info.value.message
    assert "too loud" in info.value.message
    with pytest.raises(ConfigError, match=r"guardrails\.calm\.max_ratio: must be at most 1"):
        parse('[guardrails.calm]\ntype = "shouting"\nmax_ratio = 3')


def test_plugin_type_is_unknown_without_the_plugin() -> None:
    with pytest.raises(ConfigError, match="no guardrail type 'shouting'"):
        parse('[guardrails.calm]\ntype = "shouting"')


def test_two_plugins_cannot_claim_one_type() -> None:
    class Clash:
        @hookimpl
        def register_guardrails(self, register: Callable[[type[Guardrail]], None]) -> None:
            class Other(ShoutingGuardrail):
                type_name = "pii"

            register(Other)

    pm = plugin_manager()
    plugin = Clash()
    pm.register(plugin, name="clash-test-plugin")
    try:
        with pytest.raises(ConfigError, match="two plugins register a guardrail type named 'pii'"):
            guardrail_types()
    finally:
        pm.unregister(plugin)


# ---------------------------------------------------------------------------- speed


def test_hostile_inputs_finish_quickly() -> None:
    """Long runs of the characters the patterns care about must not backtrack badly."""
    pipeline = parse(CONFIG).pipeline()
    hostile = [
        "1" * 20000,
        "1 " * 10000,
        "1-" * 10000,
        "a@" * 10000,
        "a." * 10000,
        "A1" * 10000,
        ":" * 20000,
        "a:" * 10000,
        "+1 " * 7000,
        "sk-" + "a" * 20000,
        "password = " * 2000,
        "-----BEGIN RSA PRIVATE KEY-----" + "A" * 20000,
        "eyJ" + "a" * 20000 + ".eyJ" + "b" * 100,
        "ignore " * 4000,
        "i g n o r e " * 2000,
        "QUJD" * 5000,
        "a " * 10000,
        "a.b." * 5000 + "@",
        "a@" + "a." * 10000,
        "(" * 20000,
        "0 " * 10000,
        "DE89 " * 4000,
    ]
    for text in hostile:
        started = time.perf_counter()
        pipeline.check_input([{"role": "user", "content": text}], raise_on_block=False)
        assert time.perf_counter() - started < 2.0, text[:20]


def test_a_4kb_prompt_is_checked_in_milliseconds() -> None:
    pipeline = parse(CONFIG).pipeline()
    prompt = (
        "Hello! Please review the paragraph below about our quarterly results, the roadmap "
        "for 2025 (v2.3 ships in March) and the 12 open issues; reply in 3 bullet points. "
    ) * 24
    messages = [{"role": "user", "content": prompt[:4096]}]
    pipeline.check_input(messages)  # warm up
    runs = 20
    started = time.perf_counter()
    for _ in range(runs):
        pipeline.check_input(messages)
    per_call_ms = (time.perf_counter() - started) / runs * 1000
    # Typically about 1 ms on one core; the bound leaves room for a busy machine.
    assert per_call_ms < 25, per_call_ms


def test_every_builtin_type_and_the_hook_are_documented() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "guardrails.md").read_text()
    for cls in BUILTIN_TYPES:
        assert f"| `{cls.type_name}` |" in docs, cls.type_name
    assert "register_guardrails" in docs
