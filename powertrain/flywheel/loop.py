"""The training loop shared by the PEFT methods (LoRA, prompt tuning).

A method hands the loop an ``Adaptation`` — its trainable parameters and a
batch loss — and the loop does the rest the same way for each: a seeded data
order per epoch, AdamW with warmup and a cosine or linear decay, gradient
clipping, a ``Progress`` report per step, the eval loss on the test split
before training and after every epoch, and checkpoints that make a resumed job
end with the same weights as an uninterrupted one.

A checkpoint (``checkpoints/step-N/state.pt``) holds the trainable weights, the
optimizer, the scheduler, the torch RNG state (LoRA dropout draws from it),
the step, the epoch's data order and the curves so far, plus a fingerprint of
the data, settings and seed: resuming with anything else is refused rather
than silently mixing two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from powertrain.engines.torch_gguf import set_torch_threads
from powertrain.errors import InvalidRequest
from powertrain.flywheel.base import Progress, ProgressFn, TrainerSettings
from powertrain.flywheel.loop_settings import LoopSettings
from powertrain.flywheel.sequences import BatchLoss, TokenSequence, order_batches

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


class Adaptation(Protocol):
    """What a method gives the loop: the weights it trains and how a batch scores."""

    def trainable(self) -> dict[str, torch.nn.Parameter]: ...

    def batch_loss(self, batch: Sequence[TokenSequence], *, backward: bool) -> BatchLoss:
        """The batch's mean loss; with ``backward``, its gradients are added to the weights'."""
        ...

    def train_mode(self, training: bool) -> None: ...


@dataclass
class LoopResult:
    steps: int
    epochs: float  # epochs completed, fractional when max_steps stops mid-epoch
    curves: dict[str, list[list[float]]]
    metrics: dict[str, Any]
    checkpoints: list[Path] = field(default_factory=list)


@dataclass
class _State:
    """Everything that moves during training, as a checkpoint stores it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    order: list[list[int]] = field(default_factory=list)
    curves: dict[str, list[list[float]]] = field(
        default_factory=lambda: {"loss": [], "lr": [], "eval_loss": []}
    )
    eval_due: bool = True  # the base's eval loss comes first
    tokens: int = 0
    computed_tokens: int = 0
    seconds: float = 0.0  # in training steps
    eval_seconds: float = 0.0


def plan_steps(settings: LoopSettings, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for ``n_train`` examples."""
    per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    total = settings.max_steps or per_epoch * settings.epochs
    return per_epoch, total


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier for optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    left = max(1, total - warmup)
    done = min(1.0, (step - warmup) / left)
    if schedule == "linear":
        return max(0.0, 1.0 - done)
    return 0.5 * (1.0 + math.cos(math.pi * done))


def mean_loss(adaptation: Adaptation, sequences: Sequence[TokenSequence], batch_size: int) -> float:
    """Mean loss per target token over ``sequences``, without gradients (dropout off)."""
    if not sequences:
        return float("nan")
    adaptation.train_mode(False)
    order = sorted(range(len(sequences)), key=lambda i: sequences[i].prompt)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [sequences[i] for i in order[start : start + batch_size]]
            result = adaptation.batch_loss(batch, backward=False)
            total += float(result.loss) * result.target_tokens
            count += result.target_tokens
    return total / max(1, count)


def fingerprint(sequences: Sequence[TokenSequence], settings: TrainerSettings, seed: int) -> str:
    """A hash of what decides the result; a checkpoint resumes only the same run."""
    digest = hashlib.sha256()
    kept = settings.model_dump(
        exclude={"threads", "checkpoint_every", "eval_batch_size", "max_seconds", "micro_batch"}
    )
    digest.update(json.dumps({"seed": seed, "settings": kept}, sort_keys=True).encode())
    for s in sequences:
        digest.update(json.dumps([s.row, s.prompt, s.target]).encode())
    return digest.hexdigest()


class TrainingLoop:
    """One run of the loop over ``train``, measured on ``test``, checkpointing in ``workdir``."""

    def __init__(
        self,
        adaptation: Adaptation,
        train: Sequence[TokenSequence],
        test: Sequence[TokenSequence],
        settings: LoopSettings,
        *,
        seed: int,
        workdir: Path,
        progress: ProgressFn,
    ):
        if not train:
            raise InvalidRequest("there are no training examples", param="dataset")
        self.adaptation = adaptation
        self.train = list(train)
        self.test = list(test)
        self.settings = settings
        self.seed = seed
        self.directory = workdir / CHECKPOINTS
        self.progress = progress
        self.per_epoch, self.total = plan_steps(settings, len(self.train))
        self.warmup = round(settings.warmup_ratio * self.total)
        self.params = adaptation.trainable()
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._factor)
        self.fingerprint = fingerprint(self.train, settings, seed)
        self.deadline: float | None = None
        self.out_of_time = False
        self.state = _State()

    def _factor(self, step: int) -> float:
        return lr_factor(step, self.total, self.warmup, self.settings.schedule)

    # -- running ---------------------------------------------------------------

    def run(self, *, resume: bool = False) -> LoopResult:
        """Train to the end (or resume from the newest checkpoint) and measure."""
        set_torch_threads(self.settings.threads)
        torch.manual_seed(self.seed)
        self.deadline, self.out_of_time = None, False
        if self.settings.max_seconds is not None:
            self.deadline = time.monotonic() + self.settings.max_seconds
        if resume:
            self._resume()
        state = self.state
        while state.eval_due or (state.step < self.total and not self.out_of_time):
            if state.eval_due:
                self._evaluate()
                if state.step:
                    self._save()
                continue
            if not state.order:
                rng = random.Random(f"{self.seed}/{state.epoch}")
                state.order = order_batches(self.train, self.settings.batch_size, rng)
            self._step([self.train[i] for i in state.order[state.batch_in_epoch]])
            if not state.eval_due and state.step % self.settings.checkpoint_every == 0:
                self._save()
        return self._result()

    def _step(self, batch: list[TokenSequence]) -> None:
        state = self.state
        started = time.perf_counter()
        self.adaptation.train_mode(True)
        result = self.adaptation.batch_loss(batch, backward=True)
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.settings.max_grad_norm)
        lr = float(self.scheduler.get_last_lr()[0])
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.batch_in_epoch += 1
        if state.batch_in_epoch == len(state.order):
            state.epoch, state.batch_in_epoch, state.order = state.epoch + 1, 0, []
        self.out_of_time = self.deadline is not None and time.monotonic() >= self.deadline
        state.eval_due = state.batch_in_epoch == 0 or state.step == self.total or self.out_of_time
        state.tokens += result.tokens
        state.computed_tokens += result.computed_tokens
        state.seconds += time.perf_counter() - started
        loss = float(result.loss.detach())
        state.curves["loss"].append([state.step, loss])
        state.curves["lr"].append([state.step, lr])
        self._report(Progress(state.step, self.total, "train", {"loss": loss, "lr": lr}))

    def _evaluate(self) -> None:
        state = self.state
        state.eval_due = False
        if not self.test:
            return
        started = time.perf_counter()
        value = mean_loss(self.adaptation, self.test, self.settings.eval_batch_size)
        state.eval_seconds += time.perf_counter() - started
        state.curves["eval_loss"].append([state.step, value])
        self._report(Progress(state.step, self.total, "eval", {"eval_loss": value}))

    def _report(self, report: Progress) -> None:
        """Tell the caller; when it stops the job (cancel, Ctrl-C), keep a checkpoint of here.

        Every report is made where the state is whole (the step applied, the
        epoch moved on), so resuming from that checkpoint loses no work.
        """
        try:
            self.progress(report)
        except BaseException:
            self._save()
            raise

    def _result(self) -> LoopResult:
        state = self.state
        curves = state.curves
        evals = curves["eval_loss"]
        last_epoch = [v for s, v in curves["loss"] if s > state.step - self.per_epoch]
        metrics: dict[str, Any] = {
            "train_loss": sum(last_epoch) / len(last_epoch) if last_epoch else None,
            "base_eval_loss": evals[0][1] if evals and evals[0][0] == 0 else None,
            "eval_loss": evals[-1][1] if evals else None,
            "steps": state.step,
            "planned_steps": self.total,
            "stopped_by_max_seconds": self.out_of_time,
            "epochs": round(state.step / self.per_epoch, 3),
            "train_examples": len(self.train),
            "test_examples": len(self.test),
            "train_tokens": state.tokens,
            "computed_tokens": state.computed_tokens,
            "shared_prefix_tokens_saved": state.tokens - state.computed_tokens,
            "seconds": round(state.seconds, 2),
            "eval_seconds": round(state.eval_seconds, 2),
            "seconds_per_step": round(state.seconds / state.step, 3) if state.step else None,
        }
        return LoopResult(
            steps=state.step,
            epochs=metrics["epochs"],
            curves={k: v for k, v in curves.items() if k != "lr"},
            metrics=metrics,
            checkpoints=self.checkpoints(),
        )

    # -- checkpoints -----------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Checkpoint directories, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            p
            for p in self.directory.iterdir()
            if p.is_dir()
            and p.name.startswith("step-")
            and p.name[5:].isdigit()
            and (p / "state.pt").is_file()
        ]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def _save(self) -> None:
        state = self.state
        target = self.directory / f"step-{state.step}"
        partial = self.directory / f".step-{state.step}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        torch.save(
            {
                "fingerprint": self.fingerprint,
                "weights": {k: p.detach().clone() for k, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "state": dataclasses.asdict(state),
            },
            partial / "state.pt",
        )
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)

    def _resume(self) -> bool:
        """Load the newest checkpoint; False when there is none."""
        found = self.checkpoints()
        if not found:
            return False
        saved = torch.load(found[-1] / "state.pt", weights_only=True)
        if saved["fingerprint"] != self.fingerprint:
            raise InvalidRequest(
                f"the checkpoint in {found[-1]} was made with other data, settings or seed; "
                "start the job over without resume",
                param="resume",
            )
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(saved["weights"][name])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"])
        self.state = _State(**saved["state"])
        return True
