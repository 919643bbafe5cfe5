"""``--method classifier``: a logistic-regression head on frozen embeddings.

For a task whose output is one label among known ones (``{"intent": <enum>}``)
a language model is an expensive way to choose: the label is a function of the
message, and a linear head on a sentence embedding learns it from a few
thousand examples in seconds on one core. The result is served by the
``classifier`` engine (``engines/classifier.py``), which also owns the file
format written here.

The steps, all deterministic for a given ``plan.seed``:

1. the last user message of each rendered example (what the engine will see)
   is embedded with ``plan.encoder``, in batches;
2. ``C`` is chosen on the train split by k-fold cross-validation over a small
   grid (unless set), whose out-of-fold logits also fit the calibration
   temperature, so the test split is never looked at until the end;
3. the head is refitted on the whole train split and scored on the test split:
   accuracy, macro-F1, log loss and ECE, before and after calibration.

Labels with no train example cannot be predicted; they are counted, and their
test rows score as wrong.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from powertrain.engines.classifier import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ClassifierHead,
    ClassifierManifest,
    encoder_entry,
    save_classifier,
    softmax,
)
from powertrain.engines.registry import engine_classes
from powertrain.errors import ConfigError, InvalidRequest
from powertrain.flywheel.base import (
    LabelChoice,
    Progress,
    ProgressFn,
    TrainedModel,
    Trainer,
    TrainerSettings,
    TrainingExample,
    TrainingPlan,
)
from powertrain.plugins import hookimpl

T = TypeVar("T")

C_GRID = (1.0, 4.0, 16.0, 64.0)  # ascending: each fold's fits warm-start from the last
DEFAULT_C = 16.0  # when the train split is too small to cross-validate
FOLDS = 5
ECE_BINS = 15
OUTPUT_DIR = "classifier"


class ClassifierSettings(TrainerSettings):
    """``--set`` values of the classifier method."""

    C: float | None = Field(
        default=None, gt=0, description="Inverse regularisation; default: cross-validated."
    )
    max_iter: int = Field(default=1000, ge=1, le=100_000)
    class_weight: Literal["balanced"] | None = None
    calibration: Literal["temperature", "none"] = "temperature"
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per embedding call.")


@dataclass(frozen=True)
class _Rows:
    """One split as the head sees it: the texts and their labels, in order."""

    texts: list[str]
    labels: list[str]
    skipped: int  # rows without a valid label


@dataclass(frozen=True)
class _Fit:
    head: ClassifierHead
    C: float
    cv_accuracy: float | None
    folds: int
    converged: bool


class ClassifierTrainer(Trainer):
    name: ClassVar[str] = "classifier"
    description: ClassVar[str] = (
        "a calibrated logistic-regression head on frozen embeddings, for tasks whose output "
        "is one label of an enum; served in one step by the classifier engine"
    )
    settings_model: ClassVar[type[TrainerSettings]] = ClassifierSettings
    generates_tokens: ClassVar[bool] = False

    def applicable(self, plan: TrainingPlan) -> str | None:
        if plan.label_choice is None:
            return (
                "the task's output schema is not one property chosen among labels "
                '(an object with a single required string enum, like {"intent": <enum>})'
            )
        return None

    def train(
        self, plan: TrainingPlan, workdir: Path, progress: ProgressFn, *, resume: bool = False
    ) -> TrainedModel:
        """Embed, fit, calibrate, score and write ``workdir/classifier``; keeps no checkpoint,
        so ``resume`` starts over (it takes seconds)."""
        settings: ClassifierSettings = self.settings(plan)
        choice = plan.label_choice
        if choice is None:
            raise InvalidRequest(
                f"the classifier method cannot train task {plan.task!r}: {self.applicable(plan)}"
            )
        train, test = _rows(plan.train, choice), _rows(plan.test, choice)
        present = set(train.labels)
        known = [label for label in choice.labels if label in present]  # the schema's order
        if len(known) < 2:
            raise InvalidRequest(
                f"the classifier method needs train examples of at least two labels; the "
                f"train split has {len(train.texts)} labelled rows of {len(known)} label(s)"
            )
        started = time.perf_counter()
        vectors = _run(lambda: _embed(plan, train.texts + test.texts, settings, progress))
        embed_seconds = time.perf_counter() - started
        x_train, x_test = vectors[: len(train.texts)], vectors[len(train.texts) :]
        index = {label: i for i, label in enumerate(known)}
        y_train = np.array([index[label] for label in train.labels])
        y_test = np.array([index.get(label, -1) for label in test.labels], dtype=np.int64)
        started = time.perf_counter()
        fit = _fit(x_train, y_train, len(known), settings, plan.seed, progress)
        fit_seconds = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "train_examples": len(train.texts),
            "test_examples": len(test.texts),
            "skipped_rows": train.skipped + test.skipped,
            "labels": len(known),
            "labels_absent_from_train": [x for x in choice.labels if x not in index],
            "test_rows_with_unseen_label": int((y_test < 0).sum()),
            "C": fit.C,
            "cv_folds": fit.folds,
            "cv_accuracy": fit.cv_accuracy,
            "temperature": fit.head.temperature,
            "converged": fit.converged,
            "train_loss": _log_loss(fit.head.probabilities(x_train), y_train),
            **_scores(fit.head, x_test, y_test, known, test.labels),
            "embed_seconds": round(embed_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
        }
        progress(Progress(step=1, total=1, phase="eval", metrics=_numbers(metrics)))
        directory = workdir / OUTPUT_DIR
        manifest = ClassifierManifest(
            task=plan.task,
            task_version=plan.task_version,
            variant=plan.variant,
            property=choice.property,
            labels=known,
            dimensions=int(vectors.shape[1]),
            encoder=encoder_entry(plan.encoder),
            input=(
                f"the last user message, as task {plan.task!r} version {plan.task_version} "
                f"(variant {plan.variant!r}) renders it"
            ),
            settings=settings.model_dump(),
            metrics=metrics,
        )
        save_classifier(directory, manifest, fit.head)
        return TrainedModel(
            engine="classifier",
            model=str(directory),
            options={},
            context_window=plan.encoder.context_window,
            metrics=metrics,
            files=[directory / WEIGHTS_FILE, directory / MANIFEST_FILE],
        )


def _rows(examples: list[TrainingExample], choice: LabelChoice) -> _Rows:
    texts, labels, skipped = [], [], 0
    for example in examples:
        label = choice.label_of(example.reference)
        if label is None:
            skipped += 1
            continue
        texts.append(example.user_text)
        labels.append(label)
    return _Rows(texts, labels, skipped)


# -- embedding ------------------------------------------------------------------------------


def _run(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from blocking code, whether or not this thread
    already runs an event loop (then it runs on a thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pt-classifier") as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


async def _embed(
    plan: TrainingPlan, texts: list[str], settings: ClassifierSettings, progress: ProgressFn
) -> np.ndarray:
    encoder = plan.encoder
    classes = engine_classes()
    if encoder.engine not in classes:
        raise ConfigError(
            f"encoder {encoder.alias!r} uses engine {encoder.engine!r}, which no plugin "
            f"provides (known: {', '.join(sorted(classes))})"
        )
    engine = classes[encoder.engine](encoder)
    await engine.start()
    # Batches of texts of about the same length pad little: measured a third less CPU
    # than batches in dataset order (3,000 Banking77 messages, MiniLM, one thread).
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors: list[list[float]] = [[] for _ in texts]
    size = settings.batch_size
    try:
        batches = max(1, -(-len(texts) // size))
        for step in range(batches):
            positions = order[step * size : (step + 1) * size]
            if positions:
                result = await engine.embed([texts[i] for i in positions])
                for i, vector in zip(positions, result.vectors, strict=True):
                    vectors[i] = vector
            progress(Progress(step=step + 1, total=batches, phase="embed"))
    finally:
        await engine.aclose()
    return np.asarray(vectors, dtype=np.float32)


# -- fitting --------------------------------------------------------------------------------


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold per row, stratified: each label's rows are shuffled and dealt round the folds,
    continuing where the last label stopped, so rare labels spread over folds too."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    dealt = 0
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        fold[rows] = (dealt + np.arange(len(rows))) % k
        dealt += len(rows)
    return fold


def _fit(
    x: np.ndarray,
    y: np.ndarray,
    n_labels: int,
    settings: ClassifierSettings,
    seed: int,
    progress: ProgressFn,
) -> _Fit:
    from threadpoolctl import threadpool_limits

    grid = (settings.C,) if settings.C is not None else C_GRID
    k = min(FOLDS, len(y) // 2)
    # One BLAS thread: measured 10x faster than two threads on a shared 2-core machine,
    # and the sums come out in the same order every run.
    with threadpool_limits(limits=1):
        oof: dict[float, np.ndarray] = {}
        held: np.ndarray = np.zeros(len(y), dtype=bool)
        total, step = (len(grid) * k if k >= 2 else 0) + 1, 0
        if k >= 2:
            fold = _folds(y, k, seed)
            oof = {c: np.full((len(y), n_labels), -np.inf) for c in grid}
            for f in range(k):
                inside = fold != f
                seen = np.unique(y[inside])
                model = _model(settings, grid[0], warm=True)
                for c in grid:
                    step += 1
                    if len(seen) >= 2:
                        model.set_params(C=c)
                        _quiet_fit(model, x[inside], y[inside])
                        rows = np.flatnonzero(~inside)
                        oof[c][np.ix_(rows, seen)] = _logits(model, x[rows])
                    progress(Progress(step=step, total=total, phase="fit"))
                # A held-out row whose label its fold's model never saw says nothing about
                # calibration (its probability is 0 by construction): leave it out.
                if len(seen) >= 2:
                    held |= ~inside & np.isin(y, seen)
        cv_accuracy = None
        chosen = settings.C if settings.C is not None else DEFAULT_C
        if held.any():
            scored = {
                c: (
                    float((oof[c][held].argmax(1) == y[held]).mean()),
                    -_log_loss_of(oof[c], y, held),
                )
                for c in grid
            }
            chosen = max(grid, key=lambda c: scored[c])  # accuracy, then calibrated loss
            cv_accuracy = scored[chosen][0]
        temperature = 1.0
        if settings.calibration == "temperature" and held.any():
            temperature = _temperature(oof[chosen][held], y[held])
        model = _model(settings, chosen, warm=False)
        converged = _quiet_fit(model, x, y)
        progress(Progress(step=total, total=total, phase="fit"))
    coef, intercept = _weights(model, n_labels)
    head = ClassifierHead(coef=coef, intercept=intercept, temperature=temperature)
    return _Fit(head, chosen, cv_accuracy, k if k >= 2 else 0, converged)


def _model(settings: ClassifierSettings, c: float, *, warm: bool) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, max_iter=settings.max_iter, class_weight=settings.class_weight, warm_start=warm
    )


def _quiet_fit(model: Any, x: np.ndarray, y: np.ndarray) -> bool:
    """Fit; whether it converged (lbfgs warns when it stops at ``max_iter``)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return bool(np.all(model.n_iter_ < model.max_iter))


def _logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits in the model's class order; a two-class model's single score made symmetric
    (``softmax([-z/2, z/2])`` is ``sigmoid(z)``)."""
    scores = np.asarray(model.decision_function(x), dtype=np.float64)
    if scores.ndim == 1:
        return np.stack([-scores / 2, scores / 2], axis=1)
    return scores


def _weights(model: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    coef, intercept = np.asarray(model.coef_), np.asarray(model.intercept_)
    if n_labels == 2 and coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])
    return coef.astype(np.float32), intercept.astype(np.float32)


def _temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the log loss of ``softmax(logits / T)`` (Guo et al., 2017)."""
    from scipy.optimize import minimize_scalar

    def loss(log_t: float) -> float:
        return _log_loss(softmax(logits, float(np.exp(log_t))), y)

    found = minimize_scalar(loss, bounds=(-4.0, 4.0), method="bounded")
    return float(np.exp(found.x))


# -- scores ---------------------------------------------------------------------------------


def _log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    picked = probabilities[np.arange(len(y)), y]
    return float(-np.log(np.clip(picked, 1e-15, 1.0)).mean())


def _log_loss_of(logits: np.ndarray, y: np.ndarray, rows: np.ndarray) -> float:
    return _log_loss(softmax(logits[rows], _temperature(logits[rows], y[rows])), y[rows])


def expected_calibration_error(
    probabilities: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
) -> float:
    """|accuracy - confidence| averaged over equal-width confidence bins, weighted by size."""
    confidence = probabilities.max(axis=1)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            gap = abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
            total += gap * int(inside.sum()) / len(confidence)
    return total


def _scores(
    head: ClassifierHead, x: np.ndarray, y: np.ndarray, labels: list[str], truth: list[str]
) -> dict[str, Any]:
    """Test-split scores; rows of a label train never saw count as wrong (and are left out
    of the log loss, where their probability is 0 by construction)."""
    if len(y) == 0:
        return {}
    from sklearn.metrics import f1_score

    uncalibrated = ClassifierHead(head.coef, head.intercept, 1.0).probabilities(x)
    calibrated = head.probabilities(x)
    predicted = calibrated.argmax(axis=1)
    correct = predicted == y
    names = [labels[i] for i in predicted]
    seen = y >= 0
    out: dict[str, Any] = {
        "test_accuracy": float(correct.mean()),
        "test_macro_f1": float(
            f1_score(
                truth, names, average="macro", labels=sorted({*truth, *names}), zero_division=0
            )
        ),
        "test_ece": expected_calibration_error(calibrated, correct),
        "test_ece_uncalibrated": expected_calibration_error(uncalibrated, correct),
    }
    if seen.any():
        out["test_log_loss"] = _log_loss(calibrated[seen], y[seen])
        out["test_log_loss_uncalibrated"] = _log_loss(uncalibrated[seen], y[seen])
        out["eval_loss"] = out["test_log_loss"]
    return out


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


@hookimpl
def register_trainers(register: Callable[[type[Trainer]], None]) -> None:
    register(ClassifierTrainer)
