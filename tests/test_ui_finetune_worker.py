"""A fine-tune started from the web UI trains for real: the start form checks it through
``FineTuning.create``, a detached worker process trains a classifier on MiniLM embeddings
of 60 short reviews and scores it beside the base variant; the job page, the methods
compared and a canary from the job page follow. Resume starts a worker too.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from powertrain.datasets import Datasets, row_from_object
from powertrain.store.finetune import FineTuneStore, JobRecord
from powertrain.store.splits import SplitStore
from tests.ui_helpers import Browser, job_record, sentiment_rows, sentiment_ui

# The base variant (a fake hosted model) always answers "negative".
REPLY = '{"sentiment": "negative"}'


async def _until(
    web: Browser, job_id: str, done: str, *, within: float = 300, leaving: str | None = None
) -> JobRecord:
    """The job once its status is ``done`` (and, for a success, once it is scored);
    ``leaving``: the status it had before, not yet an answer."""
    store = FineTuneStore(web.app.gateway.database)
    deadline = asyncio.get_running_loop().time() + within
    while True:
        job = await asyncio.to_thread(store.get_job, job_id)
        assert job is not None
        if job.status == done and (done != "succeeded" or "eval_run" in job.metrics):
            return job
        if job.finished and job.status not in (done, leaving):
            raise AssertionError(f"job {job_id} ended {job.status}: {job.error}")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} is still {job.status} after {within:g} s")
        await asyncio.sleep(0.5)


async def test_a_job_started_from_the_form_trains_is_compared_and_promoted(
    tmp_path: Path,
) -> None:
    async with sentiment_ui(tmp_path, reply=REPLY) as web:
        gateway = web.app.gateway
        rows = [row_from_object(r, "row") for r in sentiment_rows()]
        datasets = Datasets(gateway.database, gateway.tasks.registry)
        datasets.create("", "reviews", rows, test_fraction=0.25, seed=1)
        _version, test_rows = datasets.iter_rows("", "reviews", split="test")
        labels = [row.output["sentiment"] for row in test_rows]  # type: ignore[index]
        base_accuracy = labels.count("negative") / len(labels)
        status, page, _ = await web.get("/ui/finetunes")
        assert status == 200 and '<option value="reviews@1">' in page
        assert '<option value="classifier"' in page

        form = {"task": "sentiment", "dataset": "reviews", "method": "classifier", "score": "on"}
        refusals = [
            ({**form, "settings": "{epochs: 2"}, "settings are not valid JSON"),
            ({**form, "settings": "[1]"}, "settings must be a JSON object"),
            ({**form, "method": "magic"}, "unknown fine-tuning method &#39;magic&#39;"),
            ({**form, "dataset": "reviews@7"}, "version 7"),
            ({**form, "settings": '{"C": -1}'}, "classifier setting C"),
            ({**form, "limit": "many"}, "limit must be a whole number"),
        ]
        for fields, message in refusals:
            status, page, _ = await web.post("/ui/finetunes", fields)
            assert status in (400, 404), (fields, page[:300])
            assert message in page.split('id="start-error">')[1].split("</p>")[0], fields
            assert f'value="{fields["dataset"]}"' in page  # the form keeps what was typed
        assert FineTuneStore(gateway.database).list_jobs() == []

        status, _, headers = await web.post("/ui/finetunes", form)
        assert status == 303, _
        job_id = headers["Location"].rsplit("/", 1)[1]
        status, page, _ = await web.get(headers["Location"])
        assert status == 200 and f'data-poll="/ui/finetunes/{job_id}/progress"' in page

        job = await _until(web, job_id, "succeeded")
        assert job.model_alias == "classifier:sentiment-v1" and job.variant == "classifier-v1"
        status, page, _ = await web.get(f"/ui/finetunes/{job_id}")
        assert status == 200 and 'id="progress"' not in page
        assert "classifier:sentiment-v1" in page
        assert f'href="/ui/evals/{job.metrics["eval_run"]}"' in page
        # The classifier measures its loss once, on the test split: a number, not a curve.
        assert re.search(
            r'<p id="loss-once">eval loss <span class="mono">[0-9.e-]+</span> at step 1<', page
        )
        assert "<svg viewBox" not in page.split('id="loss"')[1].split("</section>")[0]
        scoring = page.split('id="scoring"')[1].split("</section>")[0]
        assert "calls/s" in scoring and f"{base_accuracy:.1%}" in scoring
        assert job.metrics["variant base_accuracy"] == base_accuracy
        assert job.metrics["test_accuracy"] > 0.8, job.metrics

        status, page, _ = await web.get("/ui/finetunes/compare?task=sentiment")
        assert status == 200
        assert 'Recommended: <b class="mono">classifier-v1</b>' in page
        assert "the most accurate" in page and '<tr class="base">' in page

        status, page, _ = await web.get(f"/ui/finetunes/{job_id}")
        assert 'id="promote-job"' in page
        canary = {"variant": "classifier-v1", "share": "20%", "action": "canary"}
        status, _, headers = await web.post("/ui/tasks/sentiment/promote", canary)
        assert status == 303, _
        [record] = SplitStore(gateway.database).history("sentiment")
        assert record.weights == {"base": 0.8, "classifier-v1": 0.2}
        _, page, _ = await web.get(headers["Location"])
        assert "classifier-v1</span> 20.0%" in page.split('id="split-history"')[1]


async def test_resume_starts_a_worker_that_continues_the_job(tmp_path: Path) -> None:
    async with sentiment_ui(tmp_path, reply=REPLY) as web:
        # A cancelled job whose dataset is gone: the resumed worker claims it (only a
        # resume may claim a cancelled job), then records why it cannot go on.
        job = job_record(web, status="cancelled", dataset="gone")
        await web.get(f"/ui/finetunes/{job.id}")
        status, _, headers = await web.post(f"/ui/finetunes/{job.id}/resume", {})
        assert status == 303 and headers["Location"] == f"/ui/finetunes/{job.id}?resumed=1"
        _, page, _ = await web.get(headers["Location"])
        box = page.split('id="progress"')[1].split("</section>")[0]
        assert 'data-status="cancelled"' in box and "a new worker is starting" in box
        failed = await _until(web, job.id, "failed", within=120, leaving="cancelled")
        assert failed.error is not None and "gone" in failed.error
        assert failed.started_at is not None  # it was claimed: the worker ran it
        _, page, _ = await web.get(f"/ui/finetunes/{job.id}")
        assert "worker.log" in page and 'id="resume-job"' in page
