"""Who may read and write the cache: the policy, narrowed by the request's own wishes."""

from __future__ import annotations

from typing import Any

import pytest

from powertrain.cache import CacheDecision, CachePolicy, header_value, request_directives
from powertrain.errors import InvalidRequest


def decide(
    policy: CachePolicy | None = None,
    *,
    temperature: float | None = 0.0,
    seed: int | None = None,
    headers: dict[str, str] | None = None,
    option: Any = None,
) -> CacheDecision:
    return (policy or CachePolicy()).decide(
        temperature=temperature, seed=seed, headers=headers, option=option
    )


def test_deterministic_requests_are_read_and_written() -> None:
    d = decide()
    assert (d.read, d.write, d.semantic, d.reason) == (True, True, False, None)
    assert header_value(None, d) == "miss"


def test_sampled_requests_bypass_unless_configured() -> None:
    for temperature in (0.7, None):  # unset: the upstream's default, which samples
        d = decide(temperature=temperature)
        assert (d.read, d.write, d.reason) == (False, False, "sampled")
        assert header_value(None, d) == "bypass"
    assert decide(temperature=0.7, seed=42).read  # a seed makes a sample repeatable
    assert decide(CachePolicy(cache_sampled=True), temperature=0.7).write
    assert decide(CachePolicy(unset_temperature=0), temperature=None).read


def test_semantic_only_at_low_temperature_unless_configured() -> None:
    policy = CachePolicy(semantic=True)
    assert decide(policy, temperature=0).semantic
    assert not decide(policy, temperature=0.7, seed=1).semantic
    assert not decide(CachePolicy(semantic=True, cache_sampled=True), temperature=0.7).semantic
    warm = CachePolicy(semantic=True, cache_sampled=True, semantic_max_temperature=0.8)
    assert decide(warm, temperature=0.7).semantic
    assert not decide(CachePolicy(), temperature=0).semantic  # semantic is opt-in


def test_disabled_policy_bypasses() -> None:
    d = decide(CachePolicy(enabled=False))
    assert (d.read, d.write, d.reason) == (False, False, "disabled")


@pytest.mark.parametrize(
    ("headers", "option", "read", "write"),
    [
        ({"Cache-Control": "no-cache"}, None, False, True),
        ({"cache-control": "no-store"}, None, True, False),
        ({"Cache-Control": "no-cache, no-store"}, None, False, False),
        ({"Cache-Control": "max-age=0"}, None, False, True),
        ({"Cache-Control": "private, max-age=60"}, None, True, True),
        ({"X-Powertrain-Cache": "bypass"}, None, False, False),
        ({"x-powertrain-cache": "REFRESH"}, None, False, True),
        ({}, False, False, False),
        ({}, "bypass", False, False),
        ({}, "refresh", False, True),
        ({}, True, True, True),
        ({"Cache-Control": "no-store"}, "refresh", False, False),  # the stricter wins
    ],
)
def test_request_directives(headers: dict[str, str], option: Any, read: bool, write: bool) -> None:
    d = decide(headers=headers, option=option)
    assert (d.read, d.write) == (read, write)


def test_max_age_limits_the_age_of_what_may_be_served() -> None:
    assert decide(headers={"Cache-Control": "max-age=60"}).max_age == 60
    assert decide(headers={"Cache-Control": "max-age=nonsense"}).max_age is None


def test_reasons_name_what_the_caller_asked() -> None:
    assert decide(headers={"x-powertrain-cache": "refresh"}).reason == "refresh"
    assert request_directives({"Cache-Control": "no-cache"}, "bypass").reason == "no-cache,bypass"


@pytest.mark.parametrize("value", ["skip", "hit", ""])
def test_unknown_header_values_are_refused_with_the_accepted_ones(value: str) -> None:
    with pytest.raises(InvalidRequest, match="bypass or refresh"):
        decide(headers={"x-powertrain-cache": value})


@pytest.mark.parametrize("option", ["nope", 0, {"read": False}])
def test_unknown_body_options_are_refused(option: Any) -> None:
    with pytest.raises(InvalidRequest, match="cache") as caught:
        decide(option=option)
    assert caught.value.param == "cache"


def test_policy_refuses_unknown_and_invalid_settings() -> None:
    with pytest.raises(ValueError, match="ttl"):
        CachePolicy(ttl=0)
    with pytest.raises(ValueError, match="semantic_threshold"):
        CachePolicy(semantic_threshold=1.5)
    with pytest.raises(ValueError, match="colour"):
        CachePolicy.model_validate({"colour": "blue"})
