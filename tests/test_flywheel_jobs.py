"""Fine-tuning jobs end to end with a real method (the classifier: seconds, not minutes).

A dataset in the store → a job → a registered model and a zero-weight variant →
served through the real server and the official ``openai`` SDK → promoted and
rolled back over HTTP. The CLI and the HTTP API (which trains in a detached
worker process) are exercised the same way a user would.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner
from openai import AsyncOpenAI

from powertrain.cli import main as cli
from powertrain.config import Config
from powertrain.errors import Conflict, InvalidRequest, NotFound, TaskNotFound
from powertrain.flywheel.jobs import FineTuneRequest
from powertrain.store.finetune import FineTuneStore
from tests.classifier_helpers import INTENTS, needs_data
from tests.conftest import running_app
from tests.flywheel_helpers import intents_config, rows
from tests.flywheel_helpers import service as service_of

pytestmark = needs_data


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return intents_config(tmp_path)


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, path, json=body) as response:
        return response.status, await response.json()


def test_a_job_trains_registers_a_model_and_adds_a_variant_with_no_traffic(
    config: Config,
) -> None:
    gateway, service = service_of(config)
    seen: list[str] = []
    job = service.create(
        FineTuneRequest(task="intents", dataset="intents-data", method="classifier")
    )
    assert job.status == "queued" and job.dataset_ref == "intents-data@1"
    assert job.params["variant"] == "llm" and job.base_model == "smollm2"

    done = service.run(job.id, progress=lambda p: seen.append(p.phase))
    assert done.status == "succeeded", done.error
    assert done.model_alias == "classifier:intents-v1" and done.variant == "classifier-v1"
    assert {"embed", "fit"} <= set(seen)
    assert done.metrics["train_examples"] + done.metrics["test_examples"] == len(rows())
    assert done.metrics["test_accuracy"] > 0.5  # chance is 1/12
    assert done.duration_s is not None and done.duration_s > 0 and done.finished_at is not None
    assert Path(done.workdir or "", "classifier", "classifier.json").is_file()

    task = gateway.tasks.registry.get("intents")
    assert task.added_variants == ("classifier-v1",)
    spec = task.settings.effective_variants()["classifier-v1"]
    assert (spec.model, spec.weight, spec.version) == ("classifier:intents-v1", 0.0, 1)
    registered = FineTuneStore(gateway.database).registered_model("classifier:intents-v1")
    assert registered is not None and registered.config["engine"] == "classifier"
    assert registered.job_id == job.id

    with pytest.raises(Conflict, match="already succeeded"):
        service.run(job.id)
    second = service.run(
        service.create(
            FineTuneRequest(task="intents", dataset="intents-data@1", method="classifier")
        ).id
    )
    assert (second.model_alias, second.variant) == ("classifier:intents-v2", "classifier-v2")
    gateway.database.dispose()


def test_requests_a_job_cannot_serve_are_refused_before_any_work(
    config: Config, tmp_path: Path
) -> None:
    gateway, service = service_of(config)

    def refused(**fields: Any) -> str:
        base: dict[str, Any] = {
            "task": "intents",
            "dataset": "intents-data",
            "method": "classifier",
        }
        with pytest.raises((InvalidRequest, NotFound)) as info:
            service.create(FineTuneRequest(**{**base, **fields}))
        return str(info.value)

    assert "unknown fine-tuning method 'magic'" in refused(method="magic")
    assert "no dataset" in refused(dataset="missing").lower()
    assert "version 9" in refused(dataset="intents-data@9")
    assert "no variant 'nope'" in refused(variant="nope")
    assert "classifier setting learning_rate" in refused(settings={"learning_rate": 1})
    assert "not in the catalog" in refused(base="gpt-9")
    with pytest.raises(TaskNotFound):
        service.create(FineTuneRequest(task="ghost", dataset="intents-data", method="classifier"))
    assert FineTuneStore(gateway.database).list_jobs() == []  # nothing was recorded
    gateway.database.dispose()


def test_a_cancelled_job_is_recorded_and_resumes(config: Config) -> None:
    gateway, service = service_of(config)
    job = service.create(
        FineTuneRequest(task="intents", dataset="intents-data", method="classifier")
    )
    assert service.cancel(job.id).status == "cancelled"
    with pytest.raises(Conflict, match="resume"):
        service.run(job.id)
    assert service.run(job.id, resume=True).status == "succeeded"
    with pytest.raises(Conflict, match="already ended"):
        service.cancel(job.id)
    gateway.database.dispose()


def test_a_failing_trainer_leaves_a_failed_job_naming_why(config: Config) -> None:
    gateway, service = service_of(config)
    job = service.create(
        FineTuneRequest(
            task="intents", dataset="intents-data", method="classifier", encoder="smollm2"
        )
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the encoder raises is recorded
        service.run(job.id)
    failed = service.get(job.id)
    assert failed.status == "failed" and failed.error
    assert "does not produce embeddings" in failed.error
    gateway.database.dispose()


async def test_the_tuned_variant_serves_through_the_sdk_and_is_promoted_over_http(
    config: Config,
) -> None:
    # The server starts before the model exists: it finds the registration on its own.
    async with running_app(config) as url, AsyncOpenAI(base_url=f"{url}/v1", api_key="-") as sdk:
        gateway, service = await asyncio.to_thread(service_of, config)
        job = await asyncio.to_thread(
            service.create,
            FineTuneRequest(task="intents", dataset="intents-data", method="classifier"),
        )
        await asyncio.to_thread(service.run, job.id)
        gateway.database.dispose()
        listed = {m.id for m in (await sdk.models.list()).data}
        assert "classifier:intents-v1" in listed  # the server picked up the registration

        plain = await sdk.chat.completions.create(
            model="classifier:intents-v1",
            messages=[{"role": "user", "content": "I still have not received my new card"}],
        )
        assert json.loads(plain.choices[0].message.content or "") == {"intent": "card_arrival"}

        pinned = await sdk.chat.completions.create(
            model="task:intents",
            messages=[{"role": "user", "content": "What exchange rate will I get?"}],
            extra_body={"variant": "classifier-v1"},
        )
        assert json.loads(pinned.choices[0].message.content or "")["intent"] in INTENTS

        async with aiohttp.ClientSession(base_url=url) as http:
            status, canary = await _call(
                http,
                "POST",
                "/api/tasks/intents/promote",
                {"variant": "classifier-v1", "canary": "25%", "author": "test"},
            )
            assert status == 200, canary
            assert canary["weights"] == {"llm": 0.75, "classifier-v1": 0.25}
            await asyncio.sleep(config.settings.task_refresh_interval + 0.1)
            _, detail = await _call(http, "GET", "/api/tasks/intents")
            shares = {v["name"]: v["share"] for v in detail["variants"]}
            assert shares == {"llm": 0.75, "classifier-v1": 0.25}
            assert [v["added"] for v in detail["variants"] if v["name"] == "classifier-v1"] == [
                True
            ]

            promote = "/api/tasks/intents/promote"
            _, full = await _call(http, "POST", promote, {"action": "full"})
            assert full["weights"] == {"llm": 0.0, "classifier-v1": 1.0}
            _, back = await _call(http, "POST", promote, {"action": "rollback"})
            assert back["weights"] == {"llm": 1.0, "classifier-v1": 0.0}
            status, again = await _call(http, "POST", promote, {"action": "rollback"})
            assert status == 409
            assert "no promotion to roll back" in again["error"]["message"]
            _, history = await _call(http, "GET", "/api/tasks/intents/splits")
            assert [h["action"] for h in history["data"]] == ["rollback", "full", "canary"]
            status, bad = await _call(
                http, "POST", promote, {"variant": "classifier-v1", "canary": "150%"}
            )
            assert status == 400 and bad["error"]["type"] == "invalid_request_error"


async def test_the_http_api_trains_in_a_worker_process(config: Config) -> None:
    await asyncio.to_thread(lambda: service_of(config)[0].database.dispose())
    async with running_app(config) as url, aiohttp.ClientSession(base_url=url) as http:
        jobs = "/api/finetune/jobs"
        status, refused = await _call(
            http, "POST", jobs, {"task": "intents", "dataset": "intents-data", "method": "nope"}
        )
        assert status == 400 and "unknown fine-tuning method" in refused["error"]["message"]
        body = {
            "task": "intents",
            "dataset": "intents-data",
            "method": "classifier",
            "score_limit": 4,
        }
        status, started = await _call(http, "POST", jobs, body)
        assert status == 202, started
        job_id = started["id"]
        deadline = time.monotonic() + 240
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            _, job = await _call(http, "GET", f"{jobs}/{job_id}")
            scored = "test_accuracy" in job["metrics"] and "eval_run" in job["metrics"]
            if job["status"] in ("failed", "cancelled") or (
                job["status"] == "succeeded" and scored
            ):
                break
            await asyncio.sleep(0.5)
        assert job["status"] == "succeeded", job
        assert job["model"] == "classifier:intents-v1" and job["curves"]
        assert job["metrics"]["served"]["cases"] == 4
        _, listed = await _call(http, "GET", jobs)
        assert [j["id"] for j in listed["data"]] == [job_id]
        status, _ = await _call(http, "GET", f"{jobs}/ft_000000000000deadbeef")
        assert status == 404
        status, _ = await _call(http, "POST", f"{jobs}/{job_id}/resume")
        assert status == 409


def test_the_cli_trains_lists_shows_and_promotes(config: Config, tmp_path: Path) -> None:
    service_of(config)[0].database.dispose()
    runner = CliRunner()
    assert config.path is not None
    where = ["--config", str(config.path)]

    trained = runner.invoke(
        cli,
        [
            "finetune",
            "--task",
            "intents",
            "--dataset",
            "intents-data",
            "--method",
            "classifier",
            "--no-score",
            "--json",
            *where,
        ],
    )
    assert trained.exit_code == 0, trained.output
    job = json.loads(trained.stdout)
    assert job["status"] == "succeeded" and job["variant"] == "classifier-v1"

    listed = runner.invoke(cli, ["finetune", "list", "--json", *where])
    assert [j["id"] for j in json.loads(listed.stdout)] == [job["id"]]
    shown = runner.invoke(cli, ["finetune", "show", job["id"], *where])
    assert shown.exit_code == 0 and "classifier:intents-v1" in shown.stdout

    canary = runner.invoke(
        cli,
        ["promote", "intents", "--variant", "classifier-v1", "--canary", "10%", "--json", *where],
    )
    assert json.loads(canary.stdout)["weights"] == {"llm": 0.9, "classifier-v1": 0.1}
    history = runner.invoke(cli, ["promote", "intents", "--history", "--json", *where])
    assert [h["action"] for h in json.loads(history.stdout)] == ["canary"]

    wrong = runner.invoke(cli, ["promote", "intents", "--full", "--rollback", *where])
    assert wrong.exit_code == 2 and "cannot be used together" in wrong.output
    missing = runner.invoke(
        cli,
        ["finetune", "--task", "intents", "--dataset", "nope", "--method", "classifier", *where],
    )
    assert missing.exit_code == 1
    assert missing.output.count("\n") == 1 and "nope" in missing.output  # one actionable line
