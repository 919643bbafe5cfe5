"""The UI's pages with data behind them: playground calls are traces, eval runs compared
(regressions first), task version diffs, costs charts, datasets from feedback, paging."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp

from powertrain.schemas.trace import Trace
from powertrain.store import EvalResultRecord, EvalStore
from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, Api, keyed_config
from tests.ui_helpers import Browser, browsing


def result(run_id: str, case: int, status: str, trace_id: str | None = None) -> EvalResultRecord:
    return EvalResultRecord(
        run_id=run_id,
        case_idx=case,
        target="model:cheap",
        rep=0,
        case_key=f"case-{case}",
        vars={"q": f"question {case}"},
        expected="yes",
        status=status,
        score=1.0 if status == "pass" else 0.0,
        output=f"answer {case} from {run_id[-4:]}",
        error=None,
        latency_ms=10.0,
        cost_usd=0.0,
        trace_id=trace_id,
        assertions=[
            {"type": "equals", "status": status, "detail": "" if status == "pass" else "no"}
        ],
    )


async def signed_in(web: Browser) -> None:
    await web.sign_in(ADMIN)


async def test_playground_runs_are_traces_of_the_signed_in_key(tmp_path: Path) -> None:
    async with FakeOpenAI(reply="Bonjour.") as upstream:
        async with browsing(keyed_config(tmp_path, upstream.url)) as web:
            async with aiohttp.ClientSession() as http:
                api = Api(http, web.url, web.app)
                key_id, secret = await api.new_key("player", models=["cheap", "paid"])
            await web.sign_in(secret)
            status, page, _ = await web.get("/ui/playground")
            assert status == 200
            assert '<option value="cheap"' in page and '<option value="emb"' not in page
            body = {
                "runs": [{"target": "cheap"}, {"target": "paid"}],
                "system": "Be brief.",
                "user": "Say hello",
                "max_tokens": 5,
                "temperature": 0,
            }
            status, text, _ = await web.post("/ui/playground/run", json=body)
            assert status == 200, text
            results = json.loads(text)["results"]
            assert [r["output"] for r in results] == ["Bonjour.", "Bonjour."]
            await web.app.gateway.traces.flush()
            for item in results:
                trace = web.app.gateway.trace_store.get(item["trace_id"])
                assert trace is not None
                assert trace.metadata["source"] == "ui" and trace.api_key_id == key_id
                assert trace.request["messages"][0] == {"role": "system", "content": "Be brief."}
            assert results[1]["cost_usd"] > 0  # "paid" is priced
            # A model the key may not use is refused, and that refusal is a trace too.
            status, text, _ = await web.post(
                "/ui/playground/run", json={"runs": [{"target": "emb"}], "user": "x"}
            )
            assert status == 200
            refused = json.loads(text)["results"][0]
            assert "may not use model" in refused["error"] and refused["trace_id"]
            status, text, _ = await web.post(
                "/ui/playground/run",
                json={"runs": [{"target": "cheap"}, {"target": "task:x"}], "user": "x"},
            )
            assert status == 400 and "not one of each" in text


async def test_eval_runs_compare_with_regressions_first(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, browsing(keyed_config(tmp_path, upstream.url)) as web:
        store = EvalStore(web.app.gateway.database)
        config = {"targets": ["model:cheap"]}
        a = store.create_run(suite="s", suite_hash="h" * 64, suite_path=None, config=config)
        b = store.create_run(suite="s", suite_hash="h" * 64, suite_path=None, config=config)
        for case, (before, after) in enumerate(
            [("pass", "fail"), ("fail", "pass"), ("pass", "pass")]
        ):
            store.add_result(result(a.id, case, before))
            store.add_result(result(b.id, case, after, trace_id=f"tr_cell{case}"))
        await signed_in(web)
        status, page, _ = await web.get("/ui/evals")
        assert status == 200 and a.id in page and "66.7%" in page
        status, page, _ = await web.get(f"/ui/evals/{b.id}")
        assert status == 200
        matrix = page.split('id="matrix"')[1]
        assert matrix.count('class="cell pass"') == 2 and matrix.count('class="cell fail"') == 1
        assert matrix.index("question 0") < matrix.index("question 1")  # failing cases first
        assert 'href="/ui/traces/tr_cell0"' in matrix
        status, page, _ = await web.get(f"/ui/evals/{b.id}?against={a.id}")
        assert status == 200
        changes = re.findall(r'class="pill ch-(\w+)"', page)
        assert changes == ["regression", "improvement"]
        assert (await web.get("/ui/evals/ev_nope"))[0] == 404


async def test_task_versions_diff_and_traffic_split(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, browsing(keyed_config(tmp_path, upstream.url)) as web:
        async with aiohttp.ClientSession() as http:
            api = Api(http, web.url, web.app)
            task = {
                "name": "greet",
                "user": "Greet {{ name }}",
                "variables": {"name": "string"},
                "model": "cheap",
                "variants": {"a": {"weight": 1}, "b": {"weight": 3, "model": "paid"}},
            }
            status, body, _ = await api.call("POST", "/api/tasks", task)
            assert status == 201, body
            version = {"user": "Greet {{ name }} warmly", "variables": {"name": "string"}}
            status, body, _ = await api.call("POST", "/api/tasks/greet/versions", version)
            assert status == 201, body
        await signed_in(web)
        status, page, _ = await web.get("/ui/tasks")
        assert status == 200 and 'href="/ui/tasks/greet"' in page
        status, page, _ = await web.get("/ui/tasks/greet")
        assert status == 200
        assert '<span class="d-del">-Greet {{ name }}</span>' in page
        assert '<span class="d-add">+Greet {{ name }} warmly</span>' in page
        assert "25.0%" in page and "75.0%" in page
        assert (await web.get("/ui/tasks/greet?a=9"))[0] == 400
        assert (await web.get("/ui/tasks/nope"))[0] == 404


async def test_costs_traces_paging_and_datasets(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream, browsing(keyed_config(tmp_path, upstream.url)) as web:
        store = web.app.gateway.trace_store
        batch = [
            Trace(
                model="paid" if i % 2 else "cheap",
                request={"messages": [{"role": "user", "content": f"q{i}"}]},
                output=f"a{i}",
                cost_usd=0.001 * (i % 2),
                latency_ms=float(i),
                api_key_id="admin",
            )
            for i in range(60)
        ]
        store.insert_many(batch)
        await signed_in(web)
        status, page, _ = await web.get("/ui/traces")
        assert status == 200 and page.count('class="mono" href="/ui/traces/tr_') == 50
        older = re.search(r'href="/ui/traces(\?cursor=[^"]+)" id="older"', page)
        assert older is not None
        status, page, _ = await web.get("/ui/traces" + older.group(1).replace("&amp;", "&"))
        assert page.count('class="mono" href="/ui/traces/tr_') == 10
        status, page, _ = await web.get("/ui/traces?model=paid&q=a1")
        shown = set(re.findall(r'href="/ui/traces/(tr_\w+)"', page))
        assert shown == {t.id for t in batch if t.model == "paid" and "a1" in (t.output or "")}
        assert (await web.get("/ui/traces?status=weird"))[0] == 400

        status, page, _ = await web.get("/ui/costs?range=24h&by=model")
        # 2 models in 5 charts; these traces have no time to first token, so that one is empty.
        assert status == 200 and page.count("<polyline") == 10
        assert page.count("Nothing recorded in this range.") == 1
        assert ">paid<" in page and "$0.03" in page
        assert (await web.get("/ui/costs?range=2y"))[0] == 400

        status, page, _ = await web.post("/ui/datasets", {"name": "liked", "feedback": "up"})
        assert status == 400 and "no trace of yours" in page
        for t in batch[:5]:
            status, _, _ = await web.post(f"/ui/traces/{t.id}/feedback", {"thumb": "up"})
            assert status == 303
        status, _, headers = await web.post(
            "/ui/datasets", {"name": "liked", "feedback": "up", "test_fraction": "0.4"}
        )
        assert status == 303 and headers["Location"] == "/ui/datasets/liked?version=1"
        status, page, _ = await web.get("/ui/datasets/liked")
        linked = set(
            re.findall(r'class="mono small source-trace" href="/ui/traces/(tr_\w+)"', page)
        )
        assert linked == {t.id for t in batch[:5]}
        status, train, _ = await web.get("/ui/datasets/liked?split=train")
        status, test, _ = await web.get("/ui/datasets/liked?split=test")
        assert train.count("source-trace") + test.count("source-trace") == 5
        assert "split-test" not in train and "split-train" not in test
