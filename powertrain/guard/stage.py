"""Guardrails as a stage of the request path: the request before the engine, the answer after.

``GuardStage.check_request`` runs the input guardrails on a call's messages
before the cache or an engine sees them: a ``block`` refuses the call (traced);
a ``redact`` rewrites the messages the engine receives *and* the request the
trace stores, so a redacted value never leaves for a hosted engine nor reaches
the database. The call then carries a ``GuardSlot`` that checks the answer: a
whole answer at once, a stream through ``StreamGuard`` (see its docstring for
when text is held back). Every finding lands in the trace under
``metadata.guardrails`` as counts, never values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from powertrain.errors import ConfigError, InvalidRequest
from powertrain.guard.base import GuardrailBlocked, Stage
from powertrain.guard.config import GuardrailsConfig
from powertrain.guard.pipeline import GuardOutcome, GuardPipeline, Placeholders
from powertrain.schemas import ChatChunk, ChatResult

if TYPE_CHECKING:
    from powertrain.calls import Call


def _record(call: Call, outcome: GuardOutcome) -> None:
    events = outcome.as_trace_events()
    if events:
        call.trace.metadata.setdefault("guardrails", []).extend(events)


class GuardSlot:
    """The output half of a call's guardrails, with the input half's placeholders."""

    def __init__(self, pipeline: GuardPipeline, placeholders: Placeholders):
        self.pipeline = pipeline
        self.placeholders = placeholders

    def objection(self, text: str) -> str | None:
        """Why the output guardrails would block ``text`` (a cascade escalates), or None."""
        outcome = self.pipeline.check_output(
            text, placeholders=self.placeholders, raise_on_block=False
        )
        blocked = outcome.blocked_by
        return None if blocked is None else f"{blocked.guardrail}: {blocked.category}"

    def check_result(self, call: Call, result: ChatResult) -> ChatResult:
        """The answer as the caller may see it; raises ``GuardrailBlocked``."""
        outcome = self.pipeline.check_output(
            result.content, placeholders=self.placeholders, raise_on_block=False
        )
        _record(call, outcome)
        if outcome.blocked_by is not None:
            raise GuardrailBlocked(outcome.blocked_by, outcome)
        if outcome.text is not None and outcome.text != result.content:
            return result.model_copy(update={"content": outcome.text})
        return result

    async def guard_stream(
        self, call: Call, chunks: AsyncIterator[ChatChunk]
    ) -> AsyncIterator[ChatChunk]:
        """The engine's chunks with their text checked; the last chunk (finish reason,
        usage) waits until the text held back for checking has gone out."""
        guard = self.pipeline.stream(placeholders=self.placeholders)
        last: ChatChunk | None = None
        try:
            async for chunk in chunks:
                text = guard.feed(chunk.delta) if chunk.delta else ""
                if chunk.finish_reason is not None or chunk.usage is not None:
                    last = chunk.model_copy(update={"delta": text})
                    continue
                if text:
                    yield chunk.model_copy(update={"delta": text})
            tail, outcome = guard.finish()
        except GuardrailBlocked as blocked:  # from feed (window mode) or finish
            _record(call, blocked.outcome)
            raise
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        _record(call, outcome)
        if last is not None:
            yield last.model_copy(update={"delta": last.delta + tail})
        elif tail:
            yield ChatChunk(delta=tail)


class GuardStage:
    def __init__(self, config: GuardrailsConfig):
        self.config = config
        self.pipeline = config.pipeline()  # the global guardrails, in file order
        self._pipelines: dict[tuple[str, ...], GuardPipeline] = {(): self.pipeline}

    def pipeline_for(self, names: Sequence[str] = ()) -> GuardPipeline:
        """The global guardrails adjusted by a task's list (``"!name"`` opts out)."""
        key = tuple(names)
        pipeline = self._pipelines.get(key)
        if pipeline is None:
            try:
                pipeline = self.config.pipeline(list(key))
            except ConfigError as exc:  # a task made over the API may name one that is gone
                raise InvalidRequest(exc.message, param="guardrails") from None
            self._pipelines[key] = pipeline
        return pipeline

    def check_request(self, call: Call, names: Sequence[str] = ()) -> None:
        """Input guardrails on ``call.request`` (redacted in place); raises on a block."""
        pipeline = self.pipeline_for(names)
        request = call.request
        if not pipeline or request is None:
            return
        placeholders = Placeholders()
        if pipeline.for_stage(Stage.INPUT):
            outcome = pipeline.check_input(
                request.messages, placeholders=placeholders, raise_on_block=False
            )
            _record(call, outcome)
            if outcome.blocked_by is not None:
                raise GuardrailBlocked(outcome.blocked_by, outcome)
            if outcome.redacted and outcome.messages is not None:
                message_type = type(request.messages[0])
                redacted = [message_type.model_validate(m) for m in outcome.messages]
                call.request = request.model_copy(update={"messages": redacted})
                # The trace keeps what was sent on, not what the caller typed.
                call.trace.request = {**call.trace.request, "messages": outcome.messages}
        if pipeline.for_stage(Stage.OUTPUT):
            call.guard = GuardSlot(pipeline, placeholders)
