"""Running a job in its own process: ``python -m powertrain.flywheel.worker JOB_ID``.

The server starts one per job it is asked for, detached from itself, so training
never shares the event loop, the memory or the lifetime of the gateway: a server
restart leaves the job running, and a job that dies leaves its checkpoints for
``resume``. The child reads the same config file and environment as its parent
and writes everything it has to say to the job record (and to ``worker.log`` in
the job's directory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

from powertrain.config import load_config
from powertrain.errors import PowertrainError
from powertrain.flywheel.jobs import FineTuning
from powertrain.gateway import Gateway
from powertrain.store.finetune import JobRecord

# The children this process started, kept so they are reaped (``poll``) rather than left
# as zombies, and so a handle is never collected while its child still runs.
_children: set[subprocess.Popen[bytes]] = set()


def spawn(
    job: JobRecord,
    workdir: Path,
    config_path: Path | None,
    *,
    resume: bool = False,
    score: bool = True,
    score_limit: int | None = None,
) -> int:
    """Start the worker for ``job`` in a new session; its process id."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "powertrain.flywheel.worker", job.id]
    if config_path is not None:
        command += ["--config", str(config_path)]
    if resume:
        command.append("--resume")
    if not score:
        command.append("--no-score")
    if score_limit is not None:
        command += ["--score-limit", str(score_limit)]
    with open(workdir / "worker.log", "ab") as log:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to the server's group does not reach it
            env=dict(os.environ),
        )
    _children.difference_update({c for c in _children if c.poll() is not None})
    _children.add(child)
    return child.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m powertrain.flywheel.worker")
    parser.add_argument("job_id")
    parser.add_argument("--config", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-score", dest="score", action="store_false")
    parser.add_argument("--score-limit", type=int, default=None)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    gateway = Gateway(config)
    try:
        gateway.tasks.registry.sync_config()
        service = FineTuning.of(gateway)
        job = service.run(args.job_id, resume=args.resume)
        if args.score and job.variant:
            try:
                asyncio.run(service.score(gateway, job, limit=args.score_limit))
            except PowertrainError as exc:
                print(f"not scored: {exc.message}", flush=True)
    except PowertrainError as exc:
        print(f"job {args.job_id}: {exc.message}", flush=True)
        return 1
    finally:
        gateway.database.dispose()
    print(f"job {args.job_id}: succeeded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
