"""A worker killed mid-training loses at most the steps since its last checkpoint (RELIABILITY 19).

A real LoRA job trains in a real worker process, which is SIGKILLed after its
first checkpoints. The job stays ``running`` until its heartbeat is stale (no
other process may take it meanwhile); then ``resume`` continues from the newest
checkpoint and finishes with the whole loss curve, and the store is intact.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from powertrain.config import Config
from powertrain.errors import Conflict
from powertrain.flywheel.jobs import FineTuneRequest
from powertrain.flywheel.worker import spawn
from powertrain.store import finetune as finetune_store
from tests.classifier_helpers import needs_data
from tests.flywheel_helpers import intents_config, service

pytestmark = [needs_data, pytest.mark.model, pytest.mark.timeout(600)]

STEPS = 6


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return intents_config(tmp_path)


def test_a_killed_worker_resumes_from_its_last_checkpoint(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway, jobs = service(config)
    job = jobs.create(
        FineTuneRequest(
            task="intents",
            dataset="intents-data",
            method="lora",
            settings={"max_steps": STEPS, "batch_size": 2, "checkpoint_every": 1, "rank": 4},
            score=False,
        )
    )
    pid = spawn(job, jobs.workdir(job), config.path, score=False)
    checkpoints = jobs.workdir(job) / "checkpoints"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        saved = [p for p in checkpoints.glob("step-*") if (p / "state.pt").is_file()]
        if len(saved) >= 2:
            break
        assert jobs.get(job.id).status in ("queued", "running"), jobs.get(job.id).error
        time.sleep(0.2)
    else:
        pytest.fail("the worker saved no checkpoint in time")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)

    killed = jobs.get(job.id)
    assert killed.status == "running"  # nobody told the store: only the heartbeat stops
    with pytest.raises(Conflict, match="running in another process"):
        jobs.run(job.id, resume=True)  # its heartbeat is fresh: it may still be alive

    monkeypatch.setattr(finetune_store, "STALE_AFTER_S", 0.0)  # as if two minutes passed
    done = jobs.run(job.id, resume=True)
    assert done.status == "succeeded", done.error
    assert done.metrics["steps"] == STEPS
    steps = [int(point[0]) for point in done.curves["loss"]]
    assert steps == list(range(1, STEPS + 1))  # the steps before the kill are kept
    assert done.model_alias == "smollm2+intents-v1"
    assert Path(done.workdir or "", "adapter.gguf").is_file()
    gateway.database.dispose()
