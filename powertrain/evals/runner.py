"""Running a suite: every case x target x repeat through the real gateway, stored as it ends.

Each model call is an ordinary traced call (its trace's ``source`` is
``eval:<run id>``, and the result row keeps its trace id). Cases run
concurrently under a semaphore, each under the suite's timeout. A result is
written the moment its case finishes, so an interrupted run keeps its work:
running the same suite again resumes the latest unfinished run of the same
content (or the run named by ``resume``) and runs only what is missing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from powertrain.cache.policy import REQUEST_HEADER
from powertrain.calls import CallContext
from powertrain.errors import PowertrainError
from powertrain.evals.assertions import (
    BoundAssertion,
    CheckInput,
    Outcome,
    bind_assertions,
    score_case,
)
from powertrain.evals.suite import Case, LoadedSuite, SuiteError, TargetSpec
from powertrain.schemas import ChatCompletionRequest
from powertrain.schemas.embeddings import EmbeddingRequest
from powertrain.store.evals import EvalResultRecord, EvalRunRecord, EvalStore
from powertrain.tasks.template import render

if TYPE_CHECKING:
    from powertrain.gateway import Gateway

OnResult = Callable[[EvalResultRecord], None]


@dataclass(frozen=True)
class Target:
    """One column of the matrix: a task variant, or a model with a prompt."""

    id: str
    spec: TargetSpec
    variant: str | None = None


def expand_targets(loaded: LoadedSuite) -> list[Target]:
    out: list[Target] = []
    for spec in loaded.suite.targets:
        if spec.task is not None and spec.variants:
            out.extend(Target(f"task:{spec.task}@{v}", spec, v) for v in spec.variants)
        else:
            out.append(Target(spec.ids()[0], spec))
    ids = [t.id for t in out]
    if len(set(ids)) != len(ids):
        raise SuiteError(f"{loaded.path or 'suite'}: targets: a target is listed twice")
    return out


class GatewayServices:
    """The gateway calls the model-backed assertions make (all traced)."""

    def __init__(self, gateway: Gateway, source: str):
        self.gateway = gateway
        self.source = source

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        request = EmbeddingRequest(model=model, input=texts)
        _, result = await self.gateway.embed(request, CallContext(source=self.source))
        return result.vectors

    async def judge(self, model: str | None, system: str, prompt: str) -> tuple[str, str]:
        request = ChatCompletionRequest.model_validate(
            {
                "model": model or self.gateway.config.settings.default_model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": prompt},
                ],
                "temperature": 0,
            }
        )
        call, result = await self.gateway.chat(request, CallContext(source=self.source))
        return result.content, call.trace_id

    async def retrieved(self, trace_id: str) -> list[dict[str, Any]] | None:
        await self.gateway.traces.flush()
        trace = await asyncio.to_thread(self.gateway.trace_store.get, trace_id)
        if trace is None:
            return None
        chunks = (trace.metadata.get("retrieval") or {}).get("chunks")
        return list(chunks) if chunks else None


class EvalRunner:
    """``await EvalRunner(gateway, store).run(load_suite("suite.yaml"))`` → the run's id."""

    def __init__(self, gateway: Gateway, store: EvalStore, *, allow_python: bool = False):
        self.gateway = gateway
        self.store = store
        self.allow_python = allow_python

    async def check(self, loaded: LoadedSuite) -> list[BoundAssertion]:
        """Refuse, before anything runs, a suite whose assertions, tasks, variants or models
        do not exist (a :class:`SuiteError`)."""
        where = str(loaded.path or "suite")
        checks = bind_assertions(
            loaded.suite.assertions,
            base_dir=loaded.base_dir,
            allow_python=self.allow_python,
            where=where,
        )
        for i, spec in enumerate(loaded.suite.targets):
            try:
                if spec.task is not None:
                    task = await self.gateway.tasks.registry.aget(spec.task)
                    known = task.settings.effective_variants()
                    for variant in spec.variants or []:
                        if variant not in known:
                            raise SuiteError(
                                f"{where}: targets[{i}]: task {spec.task!r} has no variant "
                                f"{variant!r} (known: {', '.join(sorted(known))})"
                            )
                elif spec.model is not None and spec.model not in self.gateway.router:
                    await self.gateway.model(spec.model)
            except SuiteError:
                raise
            except PowertrainError as exc:
                raise SuiteError(f"{where}: targets[{i}]: {exc.message}") from None
        return checks

    async def open_run(
        self, loaded: LoadedSuite, *, resume: str | None = None, auto_resume: bool = True
    ) -> EvalRunRecord:
        """The run to fill: the one named, the latest unfinished one of this suite, or new."""
        await self.check(loaded)
        digest = loaded.content_hash
        if resume is not None:
            run = await asyncio.to_thread(self.store.get_run, resume)
            if run is None:
                raise SuiteError(f"no eval run {resume!r} (see `powertrain eval list`)")
            if run.suite_hash != digest:
                raise SuiteError(
                    f"run {resume!r} was made from a different suite or different cases; "
                    "resume it with the same suite file, or start a new run"
                )
            return run
        if auto_resume:
            run = await asyncio.to_thread(self.store.latest_unfinished, digest)
            if run is not None:
                return run
        targets = expand_targets(loaded)
        suite = loaded.suite
        config = {
            "targets": [t.id for t in targets],
            "cases": len(loaded.cases),
            "repeat": suite.repeat,
            "threshold": suite.threshold,
            "assertions": [a.model_dump(exclude_none=True) for a in suite.assertions],
        }
        return await asyncio.to_thread(
            self.store.create_run,
            suite=suite.name,
            suite_hash=digest,
            suite_path=str(loaded.path) if loaded.path else None,
            config=config,
        )

    async def run(
        self,
        loaded: LoadedSuite,
        *,
        run: EvalRunRecord | None = None,
        concurrency: int | None = None,
        on_result: OnResult | None = None,
    ) -> EvalRunRecord:
        """Run what the run is missing; mark it finished when nothing is."""
        checks = await self.check(loaded)
        targets = expand_targets(loaded)
        run = run or await self.open_run(loaded)
        done = {r.key for r in await asyncio.to_thread(self.store.results, run.id)}
        # Target by target: consecutive calls share their prompt's prefix (a local engine
        # reuses it), where interleaving targets would re-evaluate it on every call.
        jobs = [
            (case, target, rep)
            for target in targets
            for case in loaded.cases
            for rep in range(loaded.suite.repeat)
            if (case.idx, target.id, rep) not in done
        ]
        limit = asyncio.Semaphore(concurrency or loaded.suite.concurrency)
        services = GatewayServices(self.gateway, f"eval:{run.id}")
        assert run is not None
        run_id = run.id

        async def one(case: Case, target: Target, rep: int) -> None:
            async with limit:
                record = await self._case(run_id, loaded, checks, services, case, target, rep)
                await asyncio.to_thread(self.store.add_result, record)
            if on_result is not None:
                on_result(record)

        async with asyncio.TaskGroup() as group:
            for case, target, rep in jobs:
                group.create_task(one(case, target, rep))
        await asyncio.to_thread(self.store.finish_run, run_id)
        finished = await asyncio.to_thread(self.store.get_run, run_id)
        assert finished is not None
        return finished

    async def _case(
        self,
        run_id: str,
        loaded: LoadedSuite,
        checks: list[BoundAssertion],
        services: GatewayServices,
        case: Case,
        target: Target,
        rep: int,
    ) -> EvalResultRecord:
        started = time.perf_counter()
        error: str | None = None
        outcome: Outcome | None = None
        trace_id: str | None = None
        try:
            async with asyncio.timeout(loaded.suite.timeout):
                outcome = await self._call(target, case, self._context(run_id, loaded))
                outcome.latency_ms = (time.perf_counter() - started) * 1000
                trace_id = outcome.trace_id
                verdicts = [
                    await c.check(CheckInput(c.spec, case, outcome, services)) for c in checks
                ]
        except TimeoutError:
            error = f"timed out after {loaded.suite.timeout:g} s (suite timeout)"
        except PowertrainError as exc:
            error, trace_id = exc.message, exc.trace_id or trace_id
        except Exception as exc:  # a case's failure never stops the run
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            verdicts = []
            status, score = "error", 0.0
        else:
            status, score = score_case(verdicts, loaded.suite.threshold)
        return EvalResultRecord(
            run_id=run_id,
            case_idx=case.idx,
            target=target.id,
            rep=rep,
            case_key=case.key,
            vars=case.vars,
            expected=case.expected,
            status=status,
            score=score,
            output=outcome.text if outcome is not None else None,
            error=error,
            latency_ms=outcome.latency_ms
            if outcome is not None
            else (time.perf_counter() - started) * 1000,
            cost_usd=outcome.cost_usd if outcome is not None else 0.0,
            trace_id=trace_id,
            assertions=[v.as_dict() for v in verdicts],
        )

    @staticmethod
    def _context(run_id: str, loaded: LoadedSuite) -> CallContext:
        # An eval measures the model: by default no case is answered from the cache
        # (repeats and duplicate cases call the model too).
        headers = {} if loaded.suite.cache else {REQUEST_HEADER: "bypass"}
        return CallContext(source=f"eval:{run_id}", headers=headers)

    async def _call(self, target: Target, case: Case, ctx: CallContext) -> Outcome:
        spec = target.spec
        if spec.task is not None:
            result = await self.gateway.tasks.run(
                spec.task, case.vars, ctx, variant=target.variant, version=spec.version
            )
            value = result.output if not isinstance(result.output, str) else None
            return Outcome(result.text, value, cost_usd=result.cost, trace_id=result.trace_id)
        assert spec.model is not None and spec.prompt is not None
        where = f"target {target.id}"
        messages = [{"role": "user", "content": render(spec.prompt, case.vars, where=where)}]
        if spec.system is not None:
            system = render(spec.system, case.vars, where=where)
            messages.insert(0, {"role": "system", "content": system})
        request = ChatCompletionRequest.model_validate(
            {"model": spec.model, "messages": messages, **spec.params}
        )
        call, answer = await self.gateway.chat(request, ctx)
        inner = getattr(call, "call", call)
        trace = getattr(inner, "trace", None)
        cost = float(trace.cost_usd) if trace is not None else 0.0
        return Outcome(answer.content, None, cost_usd=cost, trace_id=call.trace_id)
