"""Fine-tuning jobs: from a task and a dataset to a registered model and a new variant.

``FineTuning.create`` checks everything a job needs before any work is spent on
it (task, dataset version, method, base model) and records the job.
``FineTuning.run`` claims it, renders the dataset's rows with the task's prompt,
hands them to the method's ``Trainer`` in this process (blocking), and on
success registers the result as a catalog model and as a variant of the task
with no traffic (``promote`` gives it some). Progress, losses and a heartbeat
reach the job record as training goes, so another process (the server, the UI,
``powertrain finetune show``) can follow it and a job whose process died can be
resumed from its last checkpoint.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from powertrain.catalog import ModelConfig
from powertrain.config import Config
from powertrain.datasets.service import Datasets, parse_ref
from powertrain.engines._local_worker import run_on_compute_lane
from powertrain.errors import Conflict, InvalidRequest, NotFound, PowertrainError
from powertrain.flywheel.base import Progress, ProgressFn, TrainedModel, Trainer, TrainingPlan
from powertrain.flywheel.examples import render_rows, training_variant
from powertrain.flywheel.registry import trainer
from powertrain.flywheel.scoring import Scoreboard, score_variants
from powertrain.store.datasets import ADMIN_OWNER
from powertrain.store.db import Database
from powertrain.store.finetune import HEARTBEAT_S, FineTuneStore, JobRecord
from powertrain.store.splits import SplitStore, VariantExists
from powertrain.store.times import utc_now
from powertrain.tasks.definition import VariantSpec
from powertrain.tasks.registry import LoadedTask, TaskRegistry

if TYPE_CHECKING:
    from powertrain.gateway import Gateway

_PROGRESS_WRITE_S = 2.0  # the job row is updated at most this often while training
_MAX_CURVE_POINTS = 2000


class JobNotFound(NotFound):
    error_type = "finetune_job_not_found"


class JobCancelled(PowertrainError):
    """Raised inside a trainer's progress report when its job was cancelled."""

    status_code = 409
    error_type = "finetune_job_cancelled"


@dataclass(frozen=True)
class FineTuneRequest:
    """What ``powertrain finetune`` and ``POST /api/finetune/jobs`` ask for."""

    task: str
    dataset: str  # NAME or NAME@VERSION (latest when no version)
    method: str = "lora"
    base: str | None = None  # catalog alias; default: the training variant's model
    variant: str | None = None  # whose prompt the examples are rendered with
    encoder: str = "minilm"  # the embedding model of methods that embed
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # the method's hyperparameters
    limit: int | None = None  # at most this many training rows (the first, by row order)
    owner: str = ADMIN_OWNER  # whose dataset
    score: bool = True  # whether the one who runs it scores it (recorded for onlookers)


@dataclass(frozen=True)
class CheckedRequest:
    task: str
    variant: str
    method: str
    dataset: str
    dataset_version: int
    base: str
    encoder: str


class FineTuning:
    """Jobs over one store. Blocking methods: call them from a thread in async code."""

    def __init__(self, config: Config, database: Database, registry: TaskRegistry):
        self.config = config
        self.store = FineTuneStore(database)
        self.splits = SplitStore(database)
        self.registry = registry
        self.datasets = Datasets(database, registry)

    @classmethod
    def of(cls, gateway: Gateway) -> FineTuning:
        return cls(gateway.config, gateway.database, gateway.tasks.registry)

    async def score(
        self,
        gateway: Gateway,
        job: JobRecord,
        variants: list[str] | None = None,
        *,
        limit: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Scoreboard:
        """Serve ``variants`` (default: the job's beside the one it was trained from) on
        the test split and keep the scores on the job. Starts ``gateway`` and closes it,
        in this event loop, which its trace writer and engines then belong to."""
        wanted = list(dict.fromkeys(variants or [job.variant or "", job.params["variant"]]))
        await gateway.start()
        try:
            board = await score_variants(gateway, job, wanted, limit=limit, progress=progress)
        finally:
            await gateway.aclose()
        self.record_score(job.id, board)
        return board

    def record_score(self, job_id: str, board: Scoreboard) -> JobRecord:
        """Keep the job's own score (and the base's, when scored beside it) on the job."""
        job = self.get(job_id)
        metrics = dict(job.metrics)
        metrics["eval_run"] = board.run_id
        price = self.config.settings.compute_price_per_hour
        for variant, score in board.variants.items():
            prefix = "test" if variant == job.variant else f"variant {variant}"
            metrics[f"{prefix}_accuracy"] = score.accuracy
            if variant == job.variant:
                metrics["test_cases"] = score.cases
                metrics["served"] = score.to_json(price)
        self.store.update_job(job_id, metrics=metrics)
        return self.get(job_id)

    # -- creating ----------------------------------------------------------------------

    def create(self, request: FineTuneRequest) -> JobRecord:
        """Check the request and record a queued job (nothing is trained yet)."""
        checked = self.check(request)
        return self.store.create_job(
            task=checked.task,
            owner=request.owner,
            dataset=checked.dataset,
            dataset_version=checked.dataset_version,
            method=checked.method,
            base_model=checked.base,
            params={
                "variant": checked.variant,
                "encoder": checked.encoder,
                "seed": request.seed,
                "settings": request.settings,
                "limit": request.limit,
                "score": request.score,
            },
        )

    def check(self, request: FineTuneRequest) -> CheckedRequest:
        """Everything a job needs, checked before any work is spent (raises to refuse)."""
        task = self.registry.get(request.task)
        variant = training_variant(task, request.variant)
        method = trainer(request.method)
        name, version = parse_ref(request.dataset)
        dataset = self.datasets.version(request.owner, name, version)
        base = self._base(task, variant, request.base)
        encoder = self._model(request.encoder, "encoder")
        if request.limit is not None and request.limit < 1:
            raise InvalidRequest("limit must be at least 1", param="limit")
        plan = self._plan_shell(task, variant, base, encoder, request, method)
        reason = method.applicable(plan)
        if reason is not None:
            raise InvalidRequest(f"method {method.name!r} cannot tune task {task.name!r}: {reason}")
        method.settings(plan)  # unknown or invalid hyperparameters: refused now, not later
        return CheckedRequest(
            task=task.name,
            variant=variant,
            method=method.name,
            dataset=name,
            dataset_version=dataset.version,
            base=base.alias,
            encoder=encoder.alias,
        )

    def _model(self, alias: str, what: str) -> ModelConfig:
        try:
            return self.config.catalog.get(alias)
        except PowertrainError as exc:
            raise InvalidRequest(f"{what}: {exc.message}", param=what) from None

    def _base(self, task: LoadedTask, variant: str, base: str | None) -> ModelConfig:
        spec = task.settings.effective_variants()[variant]
        alias = base or spec.model or task.settings.model or self.config.settings.default_model
        return self._model(alias, "base")

    def _plan_shell(
        self,
        task: LoadedTask,
        variant: str,
        base: ModelConfig,
        encoder: ModelConfig,
        request: FineTuneRequest,
        method: Trainer,
    ) -> TrainingPlan:
        """A plan without examples: enough for ``applicable`` and the settings check."""
        number, version = self._version(task, variant)
        return TrainingPlan(
            job_id="",
            task=task.name,
            task_version=number,
            variant=variant,
            base=base,
            encoder=encoder,
            train=[],
            test=[],
            output_schema=version.output_schema,
            seed=request.seed,
            settings=dict(request.settings),
        )

    @staticmethod
    def _version(task: LoadedTask, variant: str) -> tuple[int, Any]:
        selector = task.settings.effective_variants()[variant].version
        if isinstance(selector, str) and selector not in task.labels:
            selector = "latest"
        return task.resolve(selector)

    # -- reading -----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(f"no fine-tuning job {job_id!r} (see `powertrain finetune list`)")
        return job

    def list(self, *, task: str | None = None, limit: int = 100) -> list[JobRecord]:
        return self.store.list_jobs(task=task, limit=limit)

    def workdir(self, job: JobRecord) -> Path:
        return self.config.settings.home / "finetune" / job.id

    # -- running -----------------------------------------------------------------------

    def plan(self, job: JobRecord) -> tuple[TrainingPlan, dict[str, Any]]:
        """The job's examples, rendered now, and what was left out of them."""
        task = self.registry.get(job.task)
        params = job.params
        variant = params["variant"]
        _version, rows = self.datasets.iter_rows(job.owner, job.dataset, job.dataset_version)
        rendered = render_rows(rows, self.registry, job.task, variant)
        train = rendered.train
        if params.get("limit"):
            train = train[: int(params["limit"])]
        if not train:
            detail = f" (first: {rendered.reasons[0]})" if rendered.reasons else ""
            raise InvalidRequest(
                f"dataset {job.dataset_ref!r} has no usable training rows for task "
                f"{job.task!r}: {rendered.skipped} left out{detail}"
            )
        number, version = self._version(task, variant)
        plan = TrainingPlan(
            job_id=job.id,
            task=job.task,
            task_version=number,
            variant=variant,
            base=self._model(job.base_model, "base"),
            encoder=self._model(params.get("encoder", "minilm"), "encoder"),
            train=train,
            test=rendered.test,
            output_schema=version.output_schema,
            seed=int(params.get("seed", 0)),
            settings=dict(params.get("settings") or {}),
        )
        data = {
            "train_examples": len(train),
            "test_examples": len(rendered.test),
            "skipped_rows": rendered.skipped,
            "skipped": rendered.reasons,
        }
        return plan, data

    def run(
        self, job_id: str, *, progress: ProgressFn | None = None, resume: bool = False
    ) -> JobRecord:
        """Train, register and record the job, here and now (blocking).

        Any failure is recorded on the job and re-raised; a cancelled or interrupted job
        keeps its checkpoints, so ``resume=True`` continues it.
        """
        job = self.get(job_id)
        if not self.store.claim_job(job.id, resume=resume):
            raise Conflict(_unclaimable(job, resume))
        started = time.monotonic()
        reporter = _Reporter(self.store, job.id, progress)
        try:
            plan, data = self.plan(job)
            self.store.update_job(job.id, metrics=data)
            method = trainer(job.method)
            workdir = self.workdir(job)
            workdir.mkdir(parents=True, exist_ok=True)
            self.store.update_job(job.id, workdir=str(workdir))
            # On the compute lane, where the models it is then scored with will run too:
            # training on another thread would slow them down (see _local_worker).
            trained = run_on_compute_lane(
                lambda: method.train(plan, workdir, reporter, resume=resume),
                interrupted=reporter.interrupt,
            )
            alias, variant = self._register(job, plan, method, trained)
        except BaseException as exc:
            status = "cancelled" if isinstance(exc, JobCancelled | KeyboardInterrupt) else "failed"
            self._finish(job.id, started, status, reporter, error=_describe(exc))
            raise
        metrics = {**data, **trained.metrics}
        curves = {name: _thin(points) for name, points in trained.curves.items()} or reporter.curves
        self._finish(
            job.id,
            started,
            "succeeded",
            reporter,
            metrics=metrics,
            curves=curves,
            model_alias=alias,
            variant=variant,
        )
        return self.get(job.id)

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job ends now; a running one stops at its next progress report."""
        job = self.get(job_id)
        if job.finished:
            raise Conflict(f"job {job_id!r} has already ended ({job.status})")
        status = "cancelling" if job.status == "running" else "cancelled"
        self.store.update_job(job_id, status=status)
        return self.get(job_id)

    def _finish(
        self, job_id: str, started: float, status: str, reporter: _Reporter, **values: Any
    ) -> None:
        values.setdefault("curves", reporter.curves)
        job = self.store.get_job(job_id)
        previous = (job.duration_s or 0.0) if job else 0.0
        self.store.update_job(
            job_id,
            status=status,
            finished_at=utc_now(),
            duration_s=previous + (time.monotonic() - started),
            progress=reporter.last,
            **values,
        )

    # -- registering -------------------------------------------------------------------

    def _register(
        self, job: JobRecord, plan: TrainingPlan, method: Trainer, trained: TrainedModel
    ) -> tuple[str, str]:
        """The trained model as a catalog entry and a variant of its task (weight 0)."""
        base = plan.base
        task = self.registry.get(job.task)
        spec = task.settings.effective_variants()[plan.variant]
        config = {
            "engine": trained.engine,
            "model": trained.model,
            "options": trained.options,
            "context_window": trained.context_window,
            "params": {**base.params, **trained.params},
        }
        for number in range(self._next_number(job.task), 10_000):
            if method.generates_tokens:
                alias = f"{base.alias}+{job.task}-v{number}"
            else:
                alias = f"{method.name}:{job.task}-v{number}"
            variant = f"{method.name}-v{number}"
            if variant in task.settings.effective_variants():
                continue
            ModelConfig.model_validate({**config, "alias": alias})  # a clear error, not a bad row
            if not self.store.register_model(alias, config, task=job.task, job_id=job.id):
                continue
            variant_spec = VariantSpec(
                model=alias,
                version=plan.task_version,
                params=spec.params,
                examples=spec.examples,
                weight=0,
            )
            try:
                self.splits.add_variant(
                    job.task, variant, variant_spec.model_dump(mode="json"), source=job.id
                )
            except VariantExists:
                self.store.unregister_model(alias)
                continue
            self.registry.invalidate(job.task)
            return alias, variant
        raise Conflict(f"task {job.task!r} has no free fine-tune number left")  # pragma: no cover

    def _next_number(self, task: str) -> int:
        numbers = [0]
        for variant in self.splits.variants(task):
            found = re.search(r"-v(\d+)$", variant.name)
            if found:
                numbers.append(int(found.group(1)))
        return max(numbers) + 1


class _Reporter:
    """A trainer's progress: to the caller's callback, the job row, and the curves."""

    def __init__(self, store: FineTuneStore, job_id: str, forward: ProgressFn | None):
        self.store = store
        self.job_id = job_id
        self.forward = forward
        self.curves: dict[str, list[list[float]]] = {}
        self.last: dict[str, Any] = {}
        self._written = 0.0
        self._phase: str | None = None
        self._interrupted = False

    def interrupt(self) -> None:
        """Ctrl-C while the trainer runs on another thread: stop at its next report."""
        self._interrupted = True

    def __call__(self, progress: Progress) -> None:
        if self._interrupted:
            raise KeyboardInterrupt
        for name, value in progress.metrics.items():
            if name in ("loss", "eval_loss"):
                self.curves.setdefault(name, []).append([progress.step, float(value)])
        self.last = {
            "step": progress.step,
            "total": progress.total,
            "phase": progress.phase,
            "metrics": dict(progress.metrics),
        }
        if self.forward is not None:
            self.forward(progress)
        now = time.monotonic()
        due = now - self._written >= min(_PROGRESS_WRITE_S, HEARTBEAT_S)
        if due or progress.phase != self._phase or progress.step >= progress.total:
            self._write(now)
            self._phase = progress.phase

    def _write(self, now: float) -> None:
        self._written = now
        job = self.store.get_job(self.job_id)
        if job is not None and job.status == "cancelling":
            raise JobCancelled(f"job {self.job_id} was cancelled")
        self.store.update_job(
            self.job_id,
            progress=self.last,
            curves={name: _thin(points) for name, points in self.curves.items()},
            heartbeat_at=utc_now(),
        )


def _thin(points: list[list[float]]) -> list[list[float]]:
    """At most ``_MAX_CURVE_POINTS`` points, evenly spaced, the last always kept."""
    if len(points) <= _MAX_CURVE_POINTS:
        return points
    step = len(points) / _MAX_CURVE_POINTS
    kept = [points[int(i * step)] for i in range(_MAX_CURVE_POINTS - 1)]
    return [*kept, points[-1]]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, PowertrainError):
        return exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; resume it with `powertrain finetune resume JOB`"
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(frame[0].filename).name}:{frame[0].lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _unclaimable(job: JobRecord, resume: bool) -> str:
    if job.status == "succeeded":
        return f"job {job.id} has already succeeded (model {job.model_alias})"
    if job.status == "running":
        return f"job {job.id} is running in another process (last heartbeat {job.heartbeat_at})"
    if not resume:
        return (
            f"job {job.id} is {job.status}; continue it with `powertrain finetune resume {job.id}`"
        )
    return f"job {job.id} is {job.status} and cannot be resumed"
