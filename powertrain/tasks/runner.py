"""Running a task: pick a variant, render, call the engine, validate, repair — one trace.

``TaskRunner.run`` is ``POST /api/tasks/{name}/run`` and the Python API;
``prepare_chat`` is ``/v1/chat/completions`` with ``model="task:<name>"``.
Both open one gateway ``Call``: every engine attempt, repairs included, is one
entry in the same trace, which also records the variant, the version, the
rendered messages and (never in the answer unless asked) the reasoning.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from powertrain.cache import CacheHit, TaskRef
from powertrain.calls import Call, CallContext, CallView
from powertrain.errors import InvalidRequest, OutputInvalid, PowertrainError
from powertrain.rag.answer import CITE_INSTRUCTIONS, NO_SOURCES, sources_block
from powertrain.schemas import ChatChunk, ChatCompletionRequest, ChatResult, Usage
from powertrain.schemas.chat import ChatMessage
from powertrain.schemas.trace import Trace
from powertrain.store.collections import ADMIN_OWNER
from powertrain.tasks.definition import PromptVersion, RetrievalSpec, VariantSpec
from powertrain.tasks.output import OutputContract, OutputRejected, ParsedOutput
from powertrain.tasks.prompt import Grounding, Message, RenderedPrompt, fit_to_window
from powertrain.tasks.registry import LoadedTask, TaskRegistry
from powertrain.tasks.variables import bind_variables
from powertrain.tasks.variants import choose_variant

if TYPE_CHECKING:
    from powertrain.gateway import Gateway

# Chat-completion fields a caller may use to tune a task call.
_CALLER_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed")
# Chat-completion fields that make no sense for a task: it owns its prompt and schema.
_TASK_OWNED = ("tools", "tool_choice", "response_format", "logit_bias")


@dataclass(frozen=True)
class TaskResult:
    output: Any  # the validated JSON value, or text for a task without a schema
    reasoning: str | None
    text: str  # the output as a chat completion carries it
    trace_id: str
    task: str
    variant: str
    version: int
    model: str
    usage: Usage
    cost: float
    attempts: int
    finish_reason: str = "stop"
    # The engine's calibrated confidence and its own response fields (a classifier's).
    confidence: float | None = None
    engine_extra: dict[str, Any] | None = None


@dataclass
class TaskPlan:
    """Everything decided before the first engine call; ``powertrain task render`` shows it."""

    task: LoadedTask
    variant: str
    spec: VariantSpec
    version_number: int
    version: PromptVersion
    model: str
    variables: dict[str, Any]
    contract: OutputContract
    prompt: RenderedPrompt
    request: ChatCompletionRequest
    params: dict[str, Any] = field(default_factory=dict)
    canned: str | None = None  # the answer when retrieval found nothing (no model call)
    cached: CacheHit | None = None  # the answer the cache had for this exact call

    @property
    def messages(self) -> list[Message]:
        return self.prompt.messages


class TaskRunner:
    def __init__(self, gateway: Gateway, registry: TaskRegistry):
        self.gateway = gateway
        self.registry = registry

    # -- planning -------------------------------------------------------------
    async def _plan(
        self,
        call: Call,
        name: str,
        variables: dict[str, Any],
        *,
        variant: str | None,
        version: int | str | None,
        sticky_key: str | None,
        overrides: dict[str, Any],
        chat_input: str | None = None,
    ) -> TaskPlan:
        task = await self.registry.aget(name)
        variants = task.settings.effective_variants()
        chosen = choose_variant(name, variants, pinned=variant, sticky_key=sticky_key)
        spec = variants[chosen]
        number, prompt_version = task.resolve(version if version is not None else spec.version)
        alias = spec.model or task.settings.model or self.gateway.config.settings.default_model
        trace = call.trace
        trace.variant, trace.model = chosen, alias
        trace.metadata["task_version"] = number
        routed = alias in self.gateway.router
        # A route's prompt is fitted to (and budgeted at) its priciest model; each attempt
        # checks its own model's window, and an overflow moves on to a larger one.
        await self.gateway.attach(call, self.gateway.priciest(alias) if routed else alias)
        assert call.engine is not None and call.model is not None
        engine = call.engine
        where = f"task {name!r}"
        if chat_input is not None:
            if prompt_version.input is None:
                raise InvalidRequest(
                    f"{where} has no input variable for the user message; set input = "
                    '"<variable>" in its definition, or pass every variable in "variables"',
                    param="messages",
                )
            variables = {prompt_version.input: chat_input, **variables}
        bound = bind_variables(prompt_version.variables, variables, where=where)
        contract = prompt_version.contract()
        grounding, canned = None, None
        if task.settings.retrieval is not None:
            grounding = await self._retrieve(task.settings.retrieval, prompt_version, bound, trace)
            if not grounding.documents and contract.schema is None and not contract.reasoning:
                canned = task.settings.retrieval.no_match  # nothing to ground an answer in
        params = {**task.settings.params, **spec.params, **overrides}
        response_format = contract.response_format() if engine.capabilities.json_schema else None

        def request_for(messages: list[Message]) -> ChatCompletionRequest:
            body: dict[str, Any] = {"model": alias, "messages": messages, **params}
            if response_format is not None:
                body["response_format"] = response_format
            request = ChatCompletionRequest.model_validate(body)
            return self.gateway.with_defaults(request, call.model)  # type: ignore[arg-type]

        reserve = request_for([{"role": "user", "content": ""}]).max_output_tokens or 0
        prompt = fit_to_window(
            prompt_version,
            bound,
            max_examples=spec.examples,
            count_tokens=lambda messages: engine.count_tokens(request_for(messages)),
            window=engine.context_window,
            reserve=reserve,
            drop_examples=task.settings.context.on_overflow == "drop_examples",
            describe=f"{where} (variant {chosen!r}, version {number}, model {alias!r})",
            grounding=grounding,
        )
        request = request_for(prompt.messages)
        self.gateway.check(request, engine)
        trace.metadata["prompt"] = prompt.messages
        trace.metadata["examples"] = prompt.examples_used
        if prompt.examples_dropped:
            trace.metadata["examples_dropped"] = prompt.examples_dropped
        call.request = request
        if routed:
            await self.gateway.plan_route(call, alias, call.trace.api_key_id)
        return TaskPlan(
            task=task,
            variant=chosen,
            spec=spec,
            version_number=number,
            version=prompt_version,
            model=alias,
            variables=bound,
            contract=contract,
            prompt=prompt,
            request=request,
            params=params,
            canned=canned,
        )

    async def _retrieve(
        self,
        spec: RetrievalSpec,
        version: PromptVersion,
        variables: dict[str, Any],
        trace: Trace,
    ) -> Grounding:
        """Search the task's collection for its input; record what was found on the trace."""
        name = spec.query or version.input
        if name is None or variables.get(name) is None:
            raise InvalidRequest(
                f"task {trace.task!r} retrieves from {spec.collection!r} but has no query "
                "variable; set retrieval.query or the task's input",
                param="variables",
            )
        collections = self.gateway.collections
        record = await asyncio.to_thread(collections.get, ADMIN_OWNER, spec.collection)
        hits = await self.gateway.searcher.search(
            record,
            str(variables[name]),
            k=spec.k,
            mode=spec.mode,
            threshold=spec.threshold,
            mmr=spec.mmr,
            paths=spec.paths,
        )
        trace.metadata["retrieval"] = {
            "collection": spec.collection,
            "chunks": [
                {"id": h.chunk.id, "score": round(h.score, 6), "path": h.chunk.path} for h in hits
            ],
        }
        documents = [{"n": n, **hit.as_dict()} for n, hit in enumerate(hits, 1)]
        appendix = f"{CITE_INSTRUCTIONS}\n\n{sources_block(hits)}" if hits else NO_SOURCES
        return Grounding(documents=documents, appendix=appendix)

    async def open(
        self,
        name: str,
        variables: dict[str, Any],
        ctx: CallContext | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
        sticky_key: str | None = None,
        overrides: dict[str, Any] | None = None,
        stream: bool = False,
        chat_input: str | None = None,
        refused: list[str] | None = None,
    ) -> tuple[Call, TaskPlan]:
        """A call with its plan made; any refusal on the way is traced and raised."""
        ctx = ctx or CallContext()
        raw = ctx.raw_request
        if raw is None:
            raw = {"variables": variables, "variant": variant, "version": version}
            raw = {k: v for k, v in raw.items() if v is not None}
        trace = Trace(
            model=f"task:{name}",
            request=raw,
            task=name,
            stream=stream,
            api_key_id=ctx.api_key_id,
            metadata={"source": ctx.source},
        )
        call = Call(self.gateway, trace)
        try:
            if ctx.key is not None:
                self.gateway.keys.check_task(ctx.key, name)
                await self.gateway.access.count_request(ctx.key)
            if refused:
                raise InvalidRequest(
                    f"{refused[0]!r} cannot be used with task {name!r}: the task defines its "
                    "own prompt and output schema",
                    param=refused[0],
                )
            plan = await self._plan(
                call,
                name,
                variables,
                variant=variant,
                version=version,
                sticky_key=sticky_key,
                overrides=overrides or {},
                chat_input=chat_input,
            )
            # Input guardrails (the global ones, as the task's list adjusts them) read the
            # rendered messages (user and tool roles).
            self.gateway.guard.check_request(call, plan.task.settings.guardrails)
            if call.request is not None:
                plan.request = call.request  # redacted, when a guardrail redacted it
            # A task's own output checks are its schema and repairs; output guardrails
            # apply to model calls (docs/guardrails.md).
            call.guard = None
            if plan.canned is None:
                ref = TaskRef(name, plan.version_number, plan.variant)
                plan.cached = await self.gateway.cache.lookup(call, ctx, task=ref)
                if plan.cached is not None:
                    return call, plan  # nothing will be spent, so no budget is held
            # Output that is validated may be repaired: the budget holds for every attempt.
            repairs = 0 if plan.contract.streamable else plan.task.settings.repairs
            candidates = len(call.route.plan.candidates) if call.route is not None else 1
            await self.gateway.admit(call, ctx, attempts=(repairs + 1) * max(1, candidates))
        except BaseException as exc:
            call.finish(error=exc)
            if isinstance(exc, PowertrainError):
                exc.trace_id = call.trace_id
            raise
        return call, plan

    async def render(
        self,
        name: str,
        variables: dict[str, Any],
        *,
        variant: str | None = None,
        version: int | str | None = None,
    ) -> TaskPlan:
        """The exact request a call would send, without calling the model or tracing."""
        call = Call(self.gateway, Trace(model=f"task:{name}", request={}, task=name))
        call._finished = True  # a dry run records nothing
        return await self._plan(
            call, name, variables, variant=variant, version=version, sticky_key=None, overrides={}
        )

    # -- running --------------------------------------------------------------
    async def run(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        ctx: CallContext | None = None,
        *,
        variant: str | None = None,
        version: int | str | None = None,
        sticky_key: str | None = None,
    ) -> TaskResult:
        call, plan = await self.open(
            name, variables or {}, ctx, variant=variant, version=version, sticky_key=sticky_key
        )
        return await self.complete(call, plan)

    async def complete(self, call: Call, plan: TaskPlan) -> TaskResult:
        """Call the engine until the output holds (or repairs run out); finish the trace."""
        if plan.canned is not None:
            call.engine = None  # no model was called, so the trace lists no attempt
            call.finish(output=plan.canned, finish_reason="stop")
            return self._result(call, plan, ParsedOutput(plan.canned, None, plan.canned), "stop")
        if plan.cached is not None:
            return self._from_cache(call, plan, plan.cached)
        request = plan.request
        rejections: list[str] = []
        text = ""
        try:
            while True:
                result = await call.complete(request)
                text = result.content
                try:
                    parsed: ParsedOutput = plan.contract.parse(text)
                    break
                except OutputRejected as rejected:
                    reason = rejected.reason
                    if result.finish_reason == "length":
                        reason += " (the reply was cut off at max_tokens; raise max_tokens)"
                    rejections.append(reason)
                    if len(rejections) > plan.task.settings.repairs:
                        raise self._invalid(plan, rejections) from None
                    request = self._repair_request(call, plan, request, text, reason)
        except BaseException as exc:
            if rejections:
                call.trace.metadata["rejections"] = rejections
            call.finish(output=text or None, error=exc)
            if isinstance(exc, PowertrainError):
                exc.trace_id = call.trace_id
            raise
        trace = call.trace
        if rejections:
            trace.metadata["rejections"] = rejections
        if parsed.reasoning is not None:
            trace.metadata["reasoning"] = parsed.reasoning
        call.finish(output=parsed.text, finish_reason=result.finish_reason)
        if call.cache_slot is not None:  # the raw reply, so a hit parses it the same way
            stored = ChatResult(content=text, finish_reason=result.finish_reason, usage=call.usage)
            await call.cache_slot.store(call, stored)
        return self._result(
            call, plan, parsed, result.finish_reason, result.confidence, result.extra
        )

    def _from_cache(self, call: Call, plan: TaskPlan, hit: CacheHit) -> TaskResult:
        """A stored answer: it was validated when stored, under this same task version."""
        answer = hit.response.to_result()
        parsed = plan.contract.parse(answer.content)
        call.engine = None  # no model was called, so the trace lists no attempt
        call.trace.metadata["cache"] = hit.trace_metadata()
        call.finish(
            output=parsed.text, finish_reason=answer.finish_reason, usage=Usage(), cost_usd=0.0
        )
        return self._result(call, plan, parsed, answer.finish_reason)

    @staticmethod
    def _result(
        call: Call,
        plan: TaskPlan,
        parsed: ParsedOutput,
        finish: str,
        confidence: float | None = None,
        engine_extra: dict[str, Any] | None = None,
    ) -> TaskResult:
        return TaskResult(
            output=parsed.output,
            reasoning=parsed.reasoning,
            text=parsed.text,
            trace_id=call.trace_id,
            task=plan.task.name,
            variant=plan.variant,
            version=plan.version_number,
            model=plan.model,
            usage=call.usage,
            cost=call.trace.cost_usd,
            attempts=len(call.trace.attempts),
            finish_reason=finish,
            confidence=confidence,
            engine_extra=engine_extra,
        )

    def _repair_request(
        self, call: Call, plan: TaskPlan, request: ChatCompletionRequest, text: str, reason: str
    ) -> ChatCompletionRequest:
        """The conversation so far, the rejected reply, and what was wrong with it."""
        assert call.engine is not None
        repaired = request.model_copy(
            update={
                "messages": [
                    *request.messages,
                    ChatMessage(role="assistant", content=text),
                    ChatMessage(role="user", content=plan.contract.repair_message(reason)),
                ]
            }
        )
        self.gateway.check(repaired, call.engine)  # a repair must fit the window too
        return repaired

    @staticmethod
    def _invalid(plan: TaskPlan, rejections: list[str]) -> OutputInvalid:
        tries = len(rejections)
        return OutputInvalid(
            f"task {plan.task.name!r} (variant {plan.variant!r}, model {plan.model!r}) gave no "
            f"valid output in {tries} attempt{'s' if tries > 1 else ''}; last problem: "
            f"{rejections[-1]}. Raise the task's repairs, simplify the schema, or use a "
            "stronger model"
        )

    # -- /v1/chat/completions with model="task:<name>" -----------------------
    async def prepare_chat(
        self, name: str, request: ChatCompletionRequest, ctx: CallContext | None = None
    ) -> TaskChatCall:
        """The last user message fills the task's input variable; the rest is the task's."""
        ctx = ctx or CallContext()
        if ctx.raw_request is None:
            ctx.raw_request = request.model_dump(exclude_none=True)
        overrides = {
            f: getattr(request, f) for f in _CALLER_PARAMS if getattr(request, f) is not None
        }
        if request.max_completion_tokens:
            overrides["max_tokens"] = request.max_completion_tokens
        users = [m for m in request.messages if m.role == "user"]
        call, plan = await self.open(
            name,
            dict(request.variables or {}),
            ctx,
            variant=request.variant,
            sticky_key=request.user,
            overrides=overrides,
            stream=request.stream,
            chat_input=users[-1].text() if users else None,
            refused=[f for f in _TASK_OWNED if getattr(request, f) is not None],
        )
        return TaskChatCall(self, call, plan, include_reasoning=bool(request.include_reasoning))


class TaskChatCall(CallView):
    """A task call shaped like a gateway ``Call`` for the chat-completions route."""

    def __init__(self, runner: TaskRunner, call: Call, plan: TaskPlan, *, include_reasoning: bool):
        self.runner = runner
        self.call = call
        self.plan = plan
        self.include_reasoning = include_reasoning

    def _extra(self, engine_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            **(engine_extra or {}),
            "task": self.plan.task.name,
            "variant": self.plan.variant,
            "version": self.plan.version_number,
            "model": self.plan.model,
            "trace_id": self.call.trace_id,
        }

    async def result(self) -> ChatResult:
        outcome = await self.runner.complete(self.call, self.plan)
        return ChatResult(
            content=outcome.text,
            finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
            usage=outcome.usage,
            reasoning=outcome.reasoning if self.include_reasoning else None,
            extra=self._extra(outcome.engine_extra),
            confidence=outcome.confidence,
        )

    async def stream(self) -> AsyncIterator[ChatChunk]:
        if self.plan.contract.streamable and self.plan.canned is None and not self.plan.cached:
            # Plain text with nothing to extract or validate streams as it is generated.
            async for chunk in self.call.stream():
                yield chunk
            return
        # Structured output is validated (and maybe repaired) before a byte is sent:
        # a stream cannot take back invalid JSON once the caller has it.
        result = await self.result()
        yield ChatChunk(delta=result.content)
        yield ChatChunk(
            finish_reason=result.finish_reason,
            usage=result.usage,
            confidence=result.confidence,
            # powertrain's fields go on the stream only with a confidence to report.
            extra=result.extra if result.confidence is not None else None,
        )
