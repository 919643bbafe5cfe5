"""``[routes.<name>]``: what parses, and the one-line error for each mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from powertrain.catalog import Catalog
from powertrain.errors import ConfigError
from powertrain.routing import RetryPolicy, RouteConfig, parse_routes
from powertrain.routing.breaker import BreakerSettings

MODELS = """
[models.gpt-4o-mini]
engine = "openai"
model = "gpt-4o-mini"
price_input = 0.15
price_output = 0.60
context_window = 128000

[models.gpt-4o]
engine = "openai"
model = "gpt-4o"
price_input = 2.5
price_output = 10.0
context_window = 128000
"""

EXAMPLE = """
[routes.support]
strategy = "fallback"
models = ["gpt-4o-mini", "smollm2"]
fallback_on = ["error", "timeout"]
retries = 1
attempt_timeout = 20

[routes.ab]
strategy = "split"
weights = { "gpt-4o-mini" = 90, "smollm2" = 10 }
sticky = "user"

[routes.cheap_first]
strategy = "cascade"
models = ["smollm2", "gpt-4o-mini", "gpt-4o"]
escalate_on = ["schema", "confidence"]
min_confidence = 0.7
failure_threshold = 3
cooldown = 60

[routes.triage]
strategy = "semantic"
threshold = 0.5
default = "smollm2"
[routes.triage.routes.billing]
model = "gpt-4o-mini"
examples = ["I was charged twice", "refund my order"]
"""


def catalog() -> Catalog:
    return Catalog.from_config(tomllib.loads(MODELS)["models"])


def parse(text: str) -> Any:
    return parse_routes(tomllib.loads(text).get("routes"), catalog())


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = info.value.message
    assert "\n" not in message
    return message


def test_the_documented_example_parses() -> None:
    config = parse(EXAMPLE)
    assert set(config.routes) == {"support", "ab", "cheap_first", "triage"}
    support = config.routes["support"]
    assert support.models == ["gpt-4o-mini", "smollm2"]
    assert support.fallback_on == ["error", "timeout"]
    assert support.retry_policy == RetryPolicy(retries=1)
    assert support.attempt_timeout == 20
    ab = config.routes["ab"]
    assert ab.weights == {"gpt-4o-mini": 90, "smollm2": 10} and ab.sticky == "user"
    assert ab.candidates == ["gpt-4o-mini", "smollm2"]
    cascade = config.routes["cheap_first"]
    assert cascade.escalate_on == ["schema", "confidence"] and cascade.min_confidence == 0.7
    triage = config.routes["triage"]
    assert triage.routes["billing"].model == "gpt-4o-mini"
    assert triage.candidates == ["gpt-4o-mini", "smollm2"]
    assert triage.embedding_model == "minilm" and triage.top_k == 1
    assert "support" in config and "gpt-4o" not in config


def test_defaults() -> None:
    route = parse('[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]').routes["r"]
    assert route.fallback_on == ["error", "timeout", "rate_limit", "context_overflow"]
    assert route.retries == 2 and route.when_all_open == "try_oldest"
    assert route.breaker == BreakerSettings(failure_threshold=5, cooldown=30.0)
    assert route.timeout is None and route.attempt_timeout is None


def test_no_routes_table_is_no_routes() -> None:
    assert len(parse_routes(None, catalog())) == 0
    assert len(parse("")) == 0


def test_a_model_shared_by_routes_gets_the_most_cautious_breaker() -> None:
    config = parse(EXAMPLE)
    # cheap_first (threshold 3, cooldown 60) and support/ab (5, 30) all use gpt-4o-mini.
    assert config.breaker_settings("gpt-4o-mini") == BreakerSettings(3, 60.0)
    assert config.breaker_settings("gpt-4o") == BreakerSettings(3, 60.0)
    assert config.breaker_settings("not-routed") == BreakerSettings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[routes.r]\nstrategy = "roundrobin"',
            "routes.r.strategy: 'roundrobin' is not a strategy",
        ),
        ("[routes.r]\nmodels = []", "routes.r.strategy: None is not a strategy"),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\ncolour = "red"',
            "routes.r.colour: unknown field",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\nweights = { smollm2 = 1 }',
            "routes.r.weights: not a field of a fallback route",
        ),
        (
            '[routes.r]\nstrategy = "split"\nmodels = ["smollm2"]',
            "routes.r.models: not a field of a split route",
        ),
        ('[routes.r]\nstrategy = "fallback"\nmodels = []', "routes.r.models: list at least one"),
        ('[routes.r]\nstrategy = "fallback"', "routes.r.models: list at least one"),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["gpt-5"]',
            "routes.r.models: 'gpt-5' is not a model in the catalog (known: ",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2", "smollm2"]',
            "routes.r.models: a model is listed twice",
        ),
        (
            '[routes.r]\nstrategy = "split"\nweights = { smollm2 = -1, gpt-4o = 2 }',
            "routes.r.weights.smollm2: -1 is negative",
        ),
        (
            '[routes.r]\nstrategy = "split"\nweights = { smollm2 = 0 }',
            "routes.r.weights: at least one weight must be above 0",
        ),
        ('[routes.r]\nstrategy = "split"', "routes.r.weights: give each model a weight"),
        (
            '[routes.r]\nstrategy = "split"\nweights = { nope = 1 }',
            "routes.r.weights: 'nope' is not a model in the catalog",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\nfallback_on = ["oops"]',
            "routes.r.fallback_on.0: Input should be 'error', 'timeout', 'rate_limit' or "
            "'context_overflow'",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\nretries = -1',
            "routes.r.retries: Input should be greater than or equal to 0",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\nbackoff_base = 4\n'
            "backoff_max = 1",
            "routes.r.backoff_max: 1 is below backoff_base 4",
        ),
        (
            '[routes.r]\nstrategy = "fallback"\nmodels = ["smollm2"]\ncooldown = 0',
            "routes.r.cooldown: Input should be greater than 0",
        ),
        (
            '[routes.r]\nstrategy = "cascade"\nmodels = ["gpt-4o", "gpt-4o-mini"]',
            "routes.r.models: 'gpt-4o' ($12.5 per 1M in+out) comes before the cheaper "
            "'gpt-4o-mini' ($0.75); a cascade runs cheapest first, so list them as "
            '["gpt-4o-mini", "gpt-4o"]',
        ),
        (
            '[routes.r]\nstrategy = "cascade"\nmodels = ["smollm2"]\nmin_confidence = 2',
            "routes.r.min_confidence: Input should be less than or equal to 1",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\ndefault = "smollm2"',
            "routes.r.routes: add at least one [routes.r.routes.<target>]",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\n[routes.r.routes.a]\nmodel = "smollm2"\n'
            'examples = ["x"]',
            "routes.r.default: name the model",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\ndefault = "smollm2"\n[routes.r.routes.a]\n'
            'model = "gpt-9"\nexamples = ["x"]',
            "routes.r.routes.a.model: 'gpt-9' is not a model in the catalog",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\ndefault = "smollm2"\n[routes.r.routes.a]\n'
            'model = "smollm2"\nexamples = []',
            "routes.r.routes.a.examples: List should have at least 1 item",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\ndefault = "smollm2"\n[routes.r.routes.a]\n'
            'model = "smollm2"\nexamples = ["x"]\nweight = 3',
            "routes.r.routes.a.weight: Extra inputs are not permitted",
        ),
        (
            '[routes.r]\nstrategy = "semantic"\ndefault = "smollm2"\nembedding_model = "e5"\n'
            '[routes.r.routes.a]\nmodel = "smollm2"\nexamples = ["x"]',
            "routes.r.embedding_model: 'e5' is not a model in the catalog",
        ),
        (
            '[routes.gpt-4o]\nstrategy = "fallback"\nmodels = ["smollm2"]',
            "routes.gpt-4o: 'gpt-4o' is already a model alias in [models]",
        ),
        (
            '[routes."a b"]\nstrategy = "fallback"\nmodels = ["smollm2"]',
            "routes.a b: a route name must be letters",
        ),
        ('[routes.r]\nstrategy = "fallback"\nmodels = "smollm2"', "routes.r.models: Input should"),
        ('routes = ["x"]', "[routes] must be a table"),
        ("[routes]\nr = 3", "routes.r must be a table"),
    ],
)
def test_mistakes_are_one_line_naming_the_field(text: str, expected: str) -> None:
    assert expected in error(text)


def test_equal_prices_are_a_valid_cascade() -> None:
    text = """
[models.local2]
engine = "llamacpp"
[routes.r]
strategy = "cascade"
models = ["smollm2", "local2", "gpt-4o-mini"]
"""
    models = tomllib.loads(MODELS + text)
    config = parse_routes(models["routes"], Catalog.from_config(models["models"]))
    assert config.routes["r"].models == ["smollm2", "local2", "gpt-4o-mini"]


def test_every_route_field_is_documented() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "routing.md").read_text()
    for name in RouteConfig.model_fields:
        if name != "name":
            assert f"`{name}`" in text, name
