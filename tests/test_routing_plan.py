"""Plans: the ordered candidates of every strategy, and why each model is (or is not) there."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from powertrain.errors import ConfigError, ModelNotFound
from powertrain.routing import RequestInfo, Router, RouteUnavailable
from powertrain.routing.plan import split_order, unit_interval
from powertrain.routing.retry import FailureKind
from powertrain.routing.semantic import SemanticRouter, Target, target_scores, unit_rows
from powertrain.schemas import ChatCompletionRequest
from tests.routing_helpers import FakeClock, FakeEmbedder, breakers, catalog, routes

ROUTES = """
[routes.support]
strategy = "fallback"
models = ["mini", "small", "big"]
fallback_on = ["error", "timeout"]

[routes.ab]
strategy = "split"
weights = { mini = 90, small = 10, big = 0 }

[routes.sticky]
strategy = "split"
weights = { mini = 50, small = 50 }
sticky = "user"

[routes.cheap_first]
strategy = "cascade"
models = ["small", "mini", "big"]
min_confidence = 0.7

[routes.triage]
strategy = "semantic"
threshold = 0.8
default = "small"
embedding_model = "embedder"
[routes.triage.routes.billing]
model = "mini"
examples = ["an unexpected charge", "charge refund"]
[routes.triage.routes.cards]
model = "big"
examples = ["my card is lost", "new card please"]

[routes.strict]
strategy = "fallback"
models = ["mini", "small"]
when_all_open = "fail"
"""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def router(clock: FakeClock, embedder: FakeEmbedder) -> Router:
    return Router(
        routes(ROUTES),
        catalog(),
        breakers=breakers(clock),
        embedder=lambda alias: embedder,
        rng=random.Random(1),
    )


def trip(router: Router, alias: str) -> None:
    breaker = router.breakers.get(alias)
    while breaker.available():
        permit = breaker.acquire()
        assert permit is not None
        permit.failure()


async def test_fallback_orders_models_as_listed(router: Router) -> None:
    plan = await router.plan("support")
    assert plan.models == ["mini", "small", "big"]
    assert [c.reason for c in plan.candidates] == ["primary", "fallback", "fallback"]
    assert plan.fallback_on == {FailureKind.ERROR, FailureKind.TIMEOUT}
    assert plan.strategy == "fallback" and plan.skipped == ()
    assert plan.candidates[0].engine == "openai" and plan.candidates[0].context_window == 16000
    assert plan.describe()["candidates"][0] == {"model": "mini", "reason": "primary"}


async def test_a_plain_model_alias_is_a_route_of_one(router: Router) -> None:
    plan = await router.plan("big")
    assert plan.models == ["big"] and plan.strategy == "model"
    assert plan.candidates[0].reason == "primary" and plan.fallback_on == frozenset()
    assert "big" not in router and "support" in router
    with pytest.raises(ModelNotFound, match="not in the catalog"):
        await router.plan("nope")


async def test_open_breakers_are_skipped_with_the_reason(router: Router) -> None:
    trip(router, "mini")
    plan = await router.plan("support")
    assert plan.models == ["small", "big"]
    assert plan.candidates[0].reason == "fallback"
    assert plan.skipped[0].model == "mini"
    assert "circuit breaker open (a probe in 10 s)" in plan.skipped[0].why


async def test_a_half_open_breaker_offers_its_probe_to_one_plan(
    router: Router, clock: FakeClock
) -> None:
    trip(router, "mini")
    clock.advance(10)
    assert (await router.plan("support")).models[0] == "mini"
    probe = router.breakers.get("mini").acquire()  # that call's execution takes the probe
    assert probe is not None and probe.probe
    plan = await router.plan("support")
    assert plan.models == ["small", "big"]
    assert "probe already in flight" in plan.skipped[0].why


async def test_when_every_breaker_is_open_the_one_open_longest_is_forced(
    router: Router, clock: FakeClock
) -> None:
    trip(router, "small")
    clock.advance(1)
    trip(router, "mini")
    clock.advance(1)
    trip(router, "big")
    plan = await router.plan("support")
    assert plan.models == ["small"]
    assert plan.candidates[0].forced and plan.candidates[0].reason == "forced"
    assert {s.model for s in plan.skipped} == {"mini", "big"}


async def test_when_all_open_fail_refuses_with_retry_after(
    router: Router, clock: FakeClock
) -> None:
    trip(router, "mini")
    clock.advance(4)
    trip(router, "small")
    with pytest.raises(RouteUnavailable) as info:
        await router.plan("strict")
    assert info.value.status_code == 503 and info.value.retry_after == 6.0
    assert info.value.headers == {"Retry-After": "6"}


async def test_models_whose_window_is_too_small_are_skipped(router: Router) -> None:
    plan = await router.plan("support", RequestInfo(prompt_tokens=10000, max_output_tokens=1000))
    assert plan.models == ["mini", "big"]
    assert plan.skipped[0].model == "small" and "context window 4096 < 11000" in plan.skipped[0].why
    plan = await router.plan("support", RequestInfo(prompt_tokens=20000))
    assert plan.models == ["big"] and plan.needed_tokens == 20000


async def test_when_no_window_fits_the_largest_is_kept_to_give_a_clear_error(
    router: Router,
) -> None:
    plan = await router.plan("support", RequestInfo(prompt_tokens=500000))
    assert plan.models == ["big"]
    assert {s.model for s in plan.skipped} == {"mini", "small"}


def test_split_order_puts_the_chosen_model_first_then_the_rest_by_weight() -> None:
    order = split_order("r", {"a": 1, "b": 5, "c": 3}, rng=random.Random(3))
    assert sorted(m for m, _ in order) == ["a", "b", "c"]
    rest = [m for m, _ in order[1:]]
    assert rest == sorted(rest, key=lambda m: -{"a": 1, "b": 5, "c": 3}[m])


async def test_weighted_split_follows_the_weights(router: Router) -> None:
    n = 4000
    firsts = Counter([(await router.plan("ab")).models[0] for _ in range(n)])
    # Binomial(4000, 0.9): sd = 19; 5 sd either side fails by chance ~1 in 1.7 million.
    assert abs(firsts["mini"] - 0.9 * n) < 5 * (n * 0.9 * 0.1) ** 0.5
    assert firsts["mini"] + firsts["small"] == n
    assert firsts["big"] == 0  # weight 0: a fallback only
    plan = await router.plan("ab")
    assert plan.models[1:] == [m for m in ["mini", "small", "big"] if m != plan.models[0]]
    assert plan.candidates[0].reason == "split"
    assert plan.candidates[0].detail.startswith("weight")


async def test_sticky_split_keeps_a_user_on_one_model(router: Router) -> None:
    seen: dict[str, set[str]] = {}
    for i in range(200):
        user = f"user-{i % 40}"
        plan = await router.plan("sticky", RequestInfo(user=user))
        seen.setdefault(user, set()).add(plan.models[0])
        assert plan.candidates[0].detail.endswith("(sticky)")
    assert all(len(models) == 1 for models in seen.values())
    spread = Counter(next(iter(models)) for models in seen.values())
    assert spread["mini"] > 8 and spread["small"] > 8  # 40 users, split about 50/50
    # No user: a random choice, both models come up
    anonymous = {(await router.plan("sticky")).models[0] for _ in range(50)}
    assert anonymous == {"mini", "small"}


def test_sticky_points_are_stable_and_uniform() -> None:
    assert unit_interval("r\0alice") == unit_interval("r\0alice")
    points = [unit_interval(f"r\0u{i}") for i in range(10000)]
    assert min(points) >= 0 and max(points) < 1
    assert abs(sum(points) / len(points) - 0.5) < 0.01


async def test_cascade_is_cheapest_first_with_its_checks(router: Router) -> None:
    plan = await router.plan("cheap_first")
    assert plan.models == ["small", "mini", "big"]
    assert [c.detail for c in plan.candidates] == ["step 1 of 3", "step 2 of 3", "step 3 of 3"]
    assert plan.escalate_on == {"schema", "guardrail", "confidence"}
    assert plan.min_confidence == 0.7
    check = router.cascade_check(plan, schema={"type": "object"})
    assert check is not None and check.schema == {"type": "object"}
    assert router.cascade_check(await router.plan("support")) is None


async def test_semantic_sends_a_query_to_the_closest_target(
    router: Router, embedder: FakeEmbedder
) -> None:
    plan = await router.plan("triage", RequestInfo(text="why is there a charge on my bill"))
    assert plan.models == ["mini", "small"]
    first = plan.candidates[0]
    assert first.reason == "semantic" and first.similarity is not None
    assert first.similarity > 0.8 and first.detail.startswith("billing ")
    assert plan.candidates[1].reason == "fallback"
    assert set(plan.semantic_scores) == {"billing", "cards"}
    # The examples were embedded once, then one call per query.
    await router.plan("triage", RequestInfo(text="lost card"))
    assert [len(c) for c in embedder.calls] == [4, 1, 1]


async def test_semantic_below_the_threshold_goes_to_the_default(router: Router) -> None:
    plan = await router.plan("triage", RequestInfo(text="what's the weather"))
    assert plan.models == ["small"]
    assert plan.candidates[0].reason == "semantic_default"
    assert "< 0.8" in plan.candidates[0].detail


async def test_semantic_without_a_query_or_an_embedder_uses_the_default(
    router: Router, embedder: FakeEmbedder
) -> None:
    plan = await router.plan("triage", RequestInfo(text=None))
    assert plan.models == ["small"] and "no user message" in plan.candidates[0].detail
    embedder.fail = True
    plan = await router.plan("triage", RequestInfo(text="a charge"))
    assert plan.models == ["small"] and "embedding model failed" in plan.candidates[0].detail


async def test_semantic_routes_need_an_embedder() -> None:
    router = Router(routes(ROUTES), catalog())
    with pytest.raises(ConfigError, match="needs an embedder"):
        await router.plan("triage", RequestInfo(text="a charge"))


def test_request_info_reads_a_chat_request() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "support",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "answer"},
                {"role": "user", "content": "second question"},
            ],
            "max_tokens": 50,
            "user": "alice",
        }
    )
    info = RequestInfo.of(request, api_key_id="key_1")
    assert info.text == "second question" and info.user == "alice"
    assert info.api_key_id == "key_1" and info.max_output_tokens == 50
    assert info.prompt_tokens is not None and info.prompt_tokens > 5
    assert info.needed_tokens == info.prompt_tokens + 50
    assert RequestInfo.of(request, prompt_tokens=7).prompt_tokens == 7


# ------------------------------------------------------------- semantic scoring


def test_target_score_is_max_or_mean_of_top_k() -> None:
    sims = np.array([0.1, 0.9, 0.5, 0.7])
    assert target_scores(sims, 1) == pytest.approx(0.9)
    assert target_scores(sims, 2) == pytest.approx(0.8)
    assert target_scores(sims, 10) == pytest.approx(0.55)
    assert target_scores(np.array([]), 1) == -1.0


async def test_semantic_router_with_known_vectors() -> None:
    vectors = {
        "a1": [1.0, 0.0, 0.0],
        "a2": [0.9, 0.1, 0.0],
        "b1": [0.0, 1.0, 0.0],
        "q": [0.8, 0.6, 0.0],  # cos with a1 = 0.8, with b1 = 0.6
        "far": [0.0, 0.0, 1.0],
    }

    async def embed(texts: list[str]) -> list[list[float]]:
        return [vectors[t] for t in texts]

    router = SemanticRouter(
        [Target("a", "model-a", ("a1", "a2")), Target("b", "model-b", ("b1",))],
        default="fallback-model",
        threshold=0.7,
        embed=embed,
    )
    choice = await router.classify("q")
    assert choice.target == "a" and choice.model == "model-a" and choice.matched
    # the nearest example is a2: (0.8 * 0.9 + 0.6 * 0.1) / |a2|
    assert choice.similarity == pytest.approx(0.78 / np.linalg.norm([0.9, 0.1]), abs=1e-6)
    assert choice.scores["b"] == pytest.approx(0.6)
    far = await router.classify("far")
    assert not far.matched and far.model == "fallback-model" and far.best in {"a", "b"}
    assert unit_rows([0.0, 0.0]).tolist() == [[0.0, 0.0]]
