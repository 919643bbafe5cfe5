"""The fine-tuning pages from job records: the list, a job (loss chart, metrics, actions),
the methods compared with the recommendation, and promotion from the task page.

Jobs here are rows written through ``FineTuneStore`` (what a worker writes as it trains),
so every rendering check is exact; ``test_ui_finetune_worker.py`` trains a real one.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from powertrain.flywheel.auto import MethodOutcome, recommend
from powertrain.flywheel.compare import compare_methods
from powertrain.flywheel.scoring import Scoreboard, VariantScore
from powertrain.store.finetune import FineTuneStore, JobRecord
from powertrain.store.splits import SplitStore
from powertrain.store.times import utc_now
from tests.keys_helpers import Api
from tests.ui_helpers import job_record, second_browser
from tests.ui_helpers import sentiment_ui as admin_ui

XSS = "<script>window.__pwned=1</script><img src=x onerror=alert(1)>"


def served(variant: str, accuracy: float, cost_per_1k: float, cases: int = 20) -> dict[str, Any]:
    """``metrics["served"]`` as scoring writes it, costing exactly ``cost_per_1k`` (no
    machine time, so the price per hour does not matter)."""
    score = VariantScore(
        variant=variant,
        model=f"model-of-{variant}",
        cases=cases,
        passed=round(accuracy * cases),
        errors=0,
        accuracy=accuracy,
        compute_seconds=0.0,
        completion_tokens=0,
        cost_usd=cost_per_1k * cases / 1000,
        p50_latency_ms=12.0,
    )
    return score.to_json(0.5)


LOSS = [[step, 2.0 / step] for step in range(1, 11)]
EVAL_LOSS = [[0, 2.5], [5, 0.9], [10, 0.6]]


async def test_the_list_and_a_job_page_show_the_record(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        done = job_record(
            web,
            variant="lora-v1",
            model_alias="cheap+sentiment-v1",
            duration_s=125.0,
            curves={"loss": LOSS, "eval_loss": EVAL_LOSS},
            metrics={
                "train_examples": 45,
                "skipped_rows": 2,
                "skipped": ["row 3: has no reference output", "row 9: has no variables"],
                "test_accuracy": 0.85,
                "eval_loss": 0.6,
                "eval_run": "ev_0123abcd",
                "variant base_accuracy": 0.5,
                "served": served("lora-v1", 0.85, 0.02),
            },
        )
        failed = job_record(web, status="failed", method="classifier", error="encoder exploded")

        status, listing, _ = await web.get("/ui/finetunes")
        assert status == 200
        assert 'href="/ui/finetunes"' in listing.split("<nav>")[1]  # in the navigation
        rows = listing.split('id="jobs"')[1].split("</table>")[0]
        assert rows.index(failed.id) < rows.index(done.id)  # newest first
        assert '<span class="pill st-succeeded">succeeded</span>' in rows
        assert '<span class="pill st-failed">failed</span>' in rows
        assert "reviews@1" in rows and "cheap+sentiment-v1" in rows and "85.0%" in rows
        assert "2 min 05 s" in rows
        _, only_failed, _ = await web.get("/ui/finetunes?status=failed")
        assert failed.id in only_failed and done.id not in only_failed
        _, other_task, _ = await web.get("/ui/finetunes?task=nope")
        assert done.id not in other_task and "No job matches" in other_task
        assert (await web.get("/ui/finetunes?status=bogus"))[0] == 400

        status, page, _ = await web.get(f"/ui/finetunes/{done.id}")
        assert status == 200
        svg = page.split('id="loss"')[1].split("</svg>")[0]
        # Train loss: one line through every step, no markers; eval loss: a marker a point.
        lines = re.findall(r'<polyline class="line s(\d)" points="([^"]+)"', svg)
        assert [color for color, _ in lines] == ["0", "1"]
        train = [tuple(map(float, p.split(","))) for p in lines[0][1].split()]
        assert len(train) == len(LOSS)
        assert [x for x, _ in train] == sorted(x for x, _ in train)
        assert train[0][1] < train[-1][1]  # the loss falls: drawn lower (SVG y grows down)
        dots = re.findall(r"<title>(eval loss · step [^<]+)</title>", svg)
        assert dots == [
            "eval loss · step 0 · 2.5",
            "eval loss · step 5 · 0.9",
            "eval loss · step 10 · 0.6",
        ]
        assert "<title>train loss ·" not in svg
        assert "train loss (10 points)" in page and "eval loss (3 points)" in page
        assert 'href="/ui/evals/ev_0123abcd"' in page and 'href="/ui/tasks/sentiment"' in page
        assert "row 9: has no variables" in page and "Rows left out (2)" in page
        scoring = page.split('id="scoring"')[1].split("</section>")[0]
        assert "85.0%" in scoring and "50.0%" in scoring and "$0.02<" in scoring
        assert re.search(
            r"<th class=\"mono\">train_examples</th><td><span class=\"mono\">45<", page
        )
        assert "&#34;epochs&#34;: 2" in page  # the method's settings, as JSON text (escaped)
        assert 'id="promote-job"' not in page  # its variant is not one of the task's (yet)
        assert 'id="progress"' not in page  # nothing to follow on a finished job

        _, failed_page, _ = await web.get(f"/ui/finetunes/{failed.id}")
        assert "encoder exploded" in failed_page and 'id="resume-job"' in failed_page
        assert "No loss recorded." in failed_page
        assert (await web.get("/ui/finetunes/ft_000000000000deadbeef"))[0] == 404


async def test_a_running_job_page_polls_for_its_progress(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        progress = {"step": 3, "total": 12, "phase": "train", "metrics": {"loss": 1.23456}}
        job = job_record(web, status="running", progress=progress, curves={"loss": LOSS[:3]})
        status, page, headers = await web.get(f"/ui/finetunes/{job.id}")
        assert status == 200
        box = page.split('id="progress"')[1].split("</section>")[0]
        assert f'data-poll="/ui/finetunes/{job.id}/progress"' in box
        assert 'data-status="running"' in box and 'data-points="3"' in box
        assert "3 / 12" in box and "loss 1.235" in box
        assert 'width="25.00"' in box  # the bar: 3 of 12
        assert 'id="cancel-job"' in page
        assert "<script>" not in page.split("<main>")[1]  # the poller is app.js, not inline
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        status, body, _ = await web.get(
            f"/ui/finetunes/{job.id}/progress", Accept="application/json"
        )
        assert status == 200
        data = json.loads(body)
        assert data["status"] == "running" and data["progress"] == progress
        assert data["points"] == 3 and data["finished"] is False


async def test_a_job_just_trained_waits_for_its_score(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        now = utc_now()
        fresh = job_record(web, variant="lora-v1", finished_at=now, metrics={"eval_loss": 0.5})
        old = job_record(web, finished_at=now - timedelta(hours=2), metrics={"eval_loss": 0.5})
        _, page, _ = await web.get(f"/ui/finetunes/{fresh.id}")
        box = page.split('id="progress"')[1].split("</section>")[0]
        assert 'data-scored="0"' in box and "<h2>Scoring</h2>" in box
        _, body, _ = await web.get(f"/ui/finetunes/{fresh.id}/progress", Accept="application/json")
        assert json.loads(body)["scored"] is False
        _, page, _ = await web.get(f"/ui/finetunes/{old.id}")
        assert 'id="progress"' not in page and "Not scored: it was started without" in page


async def test_hostile_text_in_a_job_is_shown_as_text(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        job = job_record(
            web,
            status="failed",
            error=XSS,
            model_alias=XSS,
            settings={XSS: XSS},
            metrics={XSS: XSS, "skipped": [XSS], "skipped_rows": 1, "note": {"a": XSS}},
            progress={"phase": XSS, "step": 1, "total": 2, "metrics": {}},
        )
        for path in (f"/ui/finetunes/{job.id}", "/ui/finetunes"):
            status, page, _ = await web.get(path)
            assert status == 200, path
            main = page.split("<main>")[1]
            assert "<script>window" not in main and "<img" not in main, path
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in main, path
        _, page, _ = await web.get(f"/ui/finetunes/{job.id}")
        assert page.count("&lt;script&gt;window.__pwned=1&lt;/script&gt;") >= 5


async def test_every_new_action_needs_the_csrf_token_and_changes_nothing_without_it(
    tmp_path: Path,
) -> None:
    async with admin_ui(tmp_path) as web:
        queued = job_record(web, status="queued")
        job_record(web, variant="lora-v1", model_alias="cheap", add_variant=True)
        cancelled = job_record(web, status="cancelled")
        await web.get("/ui/finetunes")
        start = {"task": "sentiment", "dataset": "reviews", "method": "classifier"}
        posts = [
            ("/ui/finetunes", start),
            (f"/ui/finetunes/{queued.id}/cancel", {}),
            (f"/ui/finetunes/{cancelled.id}/resume", {}),
            ("/ui/tasks/sentiment/promote", {"action": "full", "variant": "lora-v1"}),
            ("/ui/tasks/sentiment/promote", {"action": "rollback"}),
        ]
        for path, fields in posts:
            for kwargs in (
                {"token": ""},
                {"token": "0" * 43},
                {"origin": "http://evil.example"},
            ):
                status, body, _ = await web.post(path, fields, **kwargs)  # type: ignore[arg-type]
                assert status == 403, (path, kwargs, body[:200])
                assert "csrf" in body.lower() or "cross-site" in body.lower()
        store = FineTuneStore(web.app.gateway.database)
        assert len(store.list_jobs()) == 3  # no job started
        assert store.get_job(queued.id).status == "queued"  # type: ignore[union-attr]
        assert store.get_job(cancelled.id).status == "cancelled"  # type: ignore[union-attr]
        assert not (tmp_path / "home" / "finetune" / cancelled.id).exists()  # no worker
        assert SplitStore(web.app.gateway.database).history("sentiment") == []


async def test_a_virtual_key_gets_403_on_the_fine_tuning_pages(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        job = job_record(web, variant="lora-v1", model_alias="cheap", add_variant=True)
        async with aiohttp.ClientSession() as http:
            _id, secret = await Api(http, web.url, web.app).new_key("tenant")
        async with second_browser(web) as tenant:
            await tenant.sign_in(secret)
            _, traces, _ = await tenant.get("/ui/traces")
            assert 'href="/ui/finetunes"' not in traces  # not in a key's navigation
            for path in (
                "/ui/finetunes",
                f"/ui/finetunes/{job.id}",
                f"/ui/finetunes/{job.id}/progress",
                "/ui/finetunes/compare?task=sentiment",
            ):
                assert (await tenant.get(path))[0] == 403, path
            for path, fields in (
                (f"/ui/finetunes/{job.id}/cancel", {}),
                ("/ui/finetunes", {"task": "sentiment", "dataset": "x", "method": "lora"}),
                ("/ui/tasks/sentiment/promote", {"action": "full", "variant": "lora-v1"}),
            ):
                assert (await tenant.post(path, fields))[0] == 403, path
            # The task page still shows a key the split and its history, without the forms.
            status, page, _ = await tenant.get("/ui/tasks/sentiment")
            assert status == 200 and 'id="split-history"' in page
            assert 'id="promote"' not in page and "/ui/finetunes/" not in page
            assert "fine-tuned" in page
        assert SplitStore(web.app.gateway.database).history("sentiment") == []


async def test_promote_and_roll_back_from_the_task_page(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        job = job_record(web, variant="lora-v1", model_alias="cheap", add_variant=True)
        registry = web.app.gateway.tasks.registry

        def served_split() -> dict[str, float]:
            variants = registry.get("sentiment").settings.effective_variants()
            return {name: spec.weight for name, spec in variants.items()}

        status, page, _ = await web.get("/ui/tasks/sentiment")
        assert status == 200 and 'id="promote"' in page
        variants = page.split('id="traffic-split"')[1].split("</table>")[0]
        assert "fine-tuned" in variants and f'href="/ui/finetunes/{job.id}"' in variants
        assert "nothing was promoted yet" in page

        # A canary from the job page's buttons (they post to the task's promote action).
        _, job_page, _ = await web.get(f"/ui/finetunes/{job.id}")
        assert 'id="promote-job"' in job_page and "0.0% of traffic" in job_page
        form = {"variant": "lora-v1", "share": "25%", "action": "canary", "note": "try it"}
        status, _, headers = await web.post("/ui/tasks/sentiment/promote", form)
        assert status == 303 and headers["Location"] == "/ui/tasks/sentiment#split-history"
        assert served_split() == {"base": 0.75, "lora-v1": 0.25}

        status, _, _ = await web.post("/ui/tasks/sentiment/promote", {"action": "full"})
        assert status == 303 and served_split() == {"base": 0.0, "lora-v1": 1.0}
        status, _, _ = await web.post(
            "/ui/tasks/sentiment/promote", {"action": "rollback", "note": "worse on refunds"}
        )
        assert status == 303 and served_split() == {"base": 1.0, "lora-v1": 0.0}

        status, page, _ = await web.get("/ui/tasks/sentiment")
        history = page.split('id="split-history"')[1].split("</table>")[0]
        actions = re.findall(r'<span class="pill act-(\w+)">', history)
        assert actions == ["rollback", "full", "canary"]  # newest first
        canary_row = history.split("<tr>")[-1]
        assert "lora-v1</span> 25.0%" in canary_row and "base</span> 75.0%" in canary_row
        assert "ui:admin" in canary_row and "try it" in canary_row
        assert "worse on refunds" in history

        # The library's refusals, on the page, with their status; nothing recorded.
        refusals = [
            ({"action": "rollback"}, 409, "has no promotion to roll back"),
            ({"action": "canary", "variant": "lora-v1", "share": "150%"}, 400, "below 100%"),
            ({"action": "canary", "variant": "lora-v1"}, 400, "needs its share"),
            ({"action": "full", "variant": "nope"}, 400, "no variant &#39;nope&#39;"),
            ({"action": "bogus"}, 400, "action must be canary, full or rollback"),
        ]
        for fields, code, message in refusals:
            status, page, _ = await web.post("/ui/tasks/sentiment/promote", fields)
            assert status == code, (fields, page[:300])
            error = page.split('id="promote-error">')[1].split("</p>")[0]
            assert message in error, (fields, error)
        assert len(SplitStore(web.app.gateway.database).history("sentiment")) == 3
        assert (await web.post("/ui/tasks/ghost/promote", {"action": "full"}))[0] == 404


async def test_cancel_and_resume_refusals_are_shown_on_the_job_page(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        queued = job_record(web, status="queued")
        done = job_record(web)
        await web.get(f"/ui/finetunes/{queued.id}")
        status, _, headers = await web.post(f"/ui/finetunes/{queued.id}/cancel", {})
        assert status == 303 and headers["Location"] == f"/ui/finetunes/{queued.id}"
        store = FineTuneStore(web.app.gateway.database)
        assert store.get_job(queued.id).status == "cancelled"  # type: ignore[union-attr]
        status, page, _ = await web.post(f"/ui/finetunes/{queued.id}/cancel", {})
        assert status == 409 and "has already ended (cancelled)" in page
        status, page, _ = await web.post(f"/ui/finetunes/{done.id}/resume", {})
        assert status == 409 and "only a failed or cancelled job resumes" in page
        assert not (tmp_path / "home" / "finetune" / done.id).exists()  # no worker started


async def test_the_methods_compared_recommend_by_the_auto_rule(tmp_path: Path) -> None:
    async with admin_ui(tmp_path) as web:
        base = {"variant base_accuracy": 0.5, "eval_run": "ev_scoring1"}

        def scored(method: str, variant: str, accuracy: float, cost: float) -> JobRecord:
            metrics = {**base, "test_accuracy": accuracy, "served": served(variant, accuracy, cost)}
            return job_record(
                web, method=method, variant=variant, model_alias=f"m-{variant}", metrics=metrics
            )

        # Within one point of the best (LoRA, 90.5%), the classifier is far cheaper.
        clf = scored("classifier", "classifier-v1", 0.90, 0.01)
        lora = scored("lora", "lora-v2", 0.905, 0.50)
        weak = scored("prompt-tuning", "prompt-tuning-v3", 0.80, 0.001)
        unscored = job_record(
            web, dataset_version=2, method="lora", variant="lora-v4", metrics={"test_accuracy": 0.7}
        )
        failed = job_record(web, status="failed", method="lora")

        status, page, _ = await web.get("/ui/finetunes/compare?task=sentiment")
        assert status == 200
        assert failed.id not in page
        groups = re.findall(r'data-dataset="([^"]+)"', page)
        assert groups == ["reviews@2", "reviews@1"]  # the newest dataset version first
        first = page.split('data-dataset="reviews@1"')[1]
        assert 'Recommended: <b class="mono">classifier-v1</b>' in first
        assert "the cheapest to serve of the 2 within 1% of the best" in first
        recommended = re.findall(
            r'<tr class="recommended">\s*<td><a class="mono small" href="/ui/finetunes/(\w+)"',
            first,
        )
        assert recommended == [clf.id]
        assert lora.id in first and weak.id in first
        assert "+40.0 pt" in first and "+30.0 pt" in first  # against the base's 50%
        assert ">$0.01<" in first and ">$0.5<" in first and ">$0.001<" in first  # per 1k calls
        assert '<tr class="base">' in first and "50.0%" in first
        assert 'href="/ui/evals/ev_scoring1"' in first
        second = page.split('data-dataset="reviews@2"')[1].split("</section>")[0]
        assert unscored.id in second and "none is recommended" in second
        assert "(trainer, not scored)" in second

        # The same rule as ``powertrain finetune --method auto``.
        jobs = [clf, lora, weak]
        board = Scoreboard(
            "ev_scoring1",
            "test",
            {
                j.variant or "": VariantScore(
                    **{
                        k: v
                        for k, v in j.metrics["served"].items()
                        if k in VariantScore.__dataclass_fields__
                    }
                )
                for j in jobs
            },
        )
        outcomes = [MethodOutcome(j.method, "succeeded", job=j) for j in jobs]
        chosen = recommend(outcomes, board, price_per_hour=0.5)
        assert chosen is not None and chosen.variant == "classifier-v1"
        group = compare_methods(jobs, 0.5)[0]
        assert group.recommendation is not None
        assert group.recommendation.why == chosen.why
