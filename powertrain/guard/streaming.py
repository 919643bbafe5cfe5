"""Output guardrails over a streamed answer.

How a stream is checked depends on the output guardrails that can change it
(``block`` or ``redact``):

- none (only ``flag``): *passthrough* — every delta goes out at once and the
  guardrails run on the final text, for the trace;
- all of them find local spans (``pii``, ``banned_terms``): *window* — text goes
  out once it is ``hold`` characters behind the newest text, checked and
  redacted; a match still being written is held back whole, and text is only
  cut at whitespace, so a key or token is never split across the line;
- any needs the whole answer (``schema``, ``injection``, ``banned_topics``,
  ``size``): *buffer* — nothing goes out until the stream ends, then the whole
  answer is checked like a non-streamed one. The caller sees the answer late
  (time to first token becomes the full generation time), but never unchecked.

A ``block`` in window mode raises ``GuardrailBlocked`` from ``feed``: what was
already sent stays sent (it passed every check), the rest never goes out.
"""

from __future__ import annotations

import time
from typing import Literal

from powertrain.guard.base import Action, Guardrail, Match, Stage
from powertrain.guard.pipeline import (
    GuardOutcome,
    GuardPipeline,
    Placeholders,
    act,
    add_time,
    finished,
    redact,
)

StreamMode = Literal["passthrough", "window", "buffer"]


class StreamGuard:
    """Feed it the deltas of one answer; send what ``feed`` returns; end with ``finish``."""

    def __init__(
        self,
        pipeline: GuardPipeline,
        *,
        placeholders: Placeholders | None = None,
        hold: int = 256,
        step: int = 64,
    ):
        self.pipeline = pipeline
        self.hold = hold
        self.step = step
        guardrails = pipeline.for_stage(Stage.OUTPUT)
        acting = [g for g in guardrails if g.action is not Action.FLAG]
        self.mode: StreamMode = (
            "passthrough"
            if not acting
            else "window"
            if all(g.streamable for g in acting)
            else "buffer"
        )
        self._spans = [g for g in guardrails if g.streamable]
        self._whole = [g for g in guardrails if not g.streamable]
        self._text = ""
        self._sent = 0
        self._next_try = hold + step
        self._out: list[str] = []
        self.outcome = GuardOutcome(Stage.OUTPUT, placeholders or Placeholders(), text="")

    def feed(self, delta: str) -> str:
        """Add a delta; returns the text that may be sent now (often empty)."""
        self._text += delta
        if self.mode == "passthrough":
            self._out.append(delta)
            self._sent = len(self._text)
            return delta
        if self.mode == "buffer" or len(self._text) < self._next_try:
            return ""
        released = self._release(final=False)
        pending = len(self._text) - self._sent
        # When nothing could be released (one long word, an unfinished key), wait for the
        # pending text to double before scanning again, so a long blob costs O(n log n).
        self._next_try = len(self._text) + (self.step if released else max(self.step, pending))
        return released

    def finish(self) -> tuple[str, GuardOutcome]:
        """The text still to send, and the outcome for the whole answer (``outcome.text`` is
        everything the caller received). Raises ``GuardrailBlocked`` like ``check_output``."""
        if self.mode != "window":
            already = "".join(self._out)
            outcome = self.pipeline.check_output(
                self._text,
                placeholders=self.outcome.placeholders,
                raise_on_block=self.mode == "buffer",
            )
            self.outcome = outcome
            if self.mode == "passthrough":
                outcome.text = already
                return "", outcome
            return outcome.text or "", outcome
        tail = self._release(final=True)
        text = "".join(self._out)
        for guardrail in self._whole:  # only flags reach here: actors force buffer mode
            started = time.perf_counter()
            matches = list(guardrail.check(text))
            self._record(guardrail, matches, started)
        self.outcome.text = text
        return tail, self.outcome

    def _release(self, *, final: bool) -> str:
        end = len(self._text)
        cut = end if final else end - self.hold
        scan_from = max(0, self._sent - self.hold)  # left context for the patterns
        region = self._text[scan_from:]
        found: list[tuple[Guardrail, list[Match]]] = []
        for guardrail in self._spans:
            started = time.perf_counter()
            matches = [
                Match(m.category, (m.span[0] + scan_from, m.span[1] + scan_from), m.detail,
                      m.score, m.reason)
                for m in guardrail.check(region)
                if m.span is not None and m.span[0] + scan_from >= self._sent
            ]  # fmt: skip
            self._time(guardrail, started)
            found.append((guardrail, matches))
        if not final:
            cut = self._safe_cut(cut, [m for _g, ms in found for m in ms])
        if cut <= self._sent:
            return ""
        piece_start = self._sent
        piece = self._text[piece_start:cut]
        to_redact: list[Match] = []
        for guardrail, matches in found:
            inside = [m for m in matches if m.span is not None and m.span[1] <= cut]
            if not inside:
                continue
            local = [
                Match(m.category, (m.span[0] - piece_start, m.span[1] - piece_start), m.detail,
                      m.score, m.reason)
                for m in inside
                if m.span is not None
            ]  # fmt: skip
            act(guardrail, self.outcome, local, piece, None, offset=piece_start)
            if self.outcome.blocked_by is not None:
                finished(self.outcome, raise_on_block=True)
            if guardrail.action is Action.REDACT:
                to_redact.extend(local)
        released = redact(piece, to_redact, self.outcome.placeholders) if to_redact else piece
        self._out.append(released)
        self._sent = cut
        return released

    def _safe_cut(self, cut: int, matches: list[Match]) -> int:
        # Never cut through a match (it may still grow) ...
        for m in matches:
            if m.span is not None and m.span[0] < cut < m.span[1] + 1:
                cut = min(cut, m.span[0])
        # ... nor through a word: an unfinished key or token may not match anything yet.
        if cut < len(self._text) and not self._text[cut].isspace():
            space = max(self._text.rfind(c, self._sent, cut) for c in (" ", "\n", "\t"))
            cut = space + 1 if space >= 0 else self._sent
        return cut

    def _record(self, guardrail: Guardrail, matches: list[Match], started: float) -> None:
        if matches:
            act(guardrail, self.outcome, matches, None, None)
        self._time(guardrail, started)

    def _time(self, guardrail: Guardrail, started: float) -> None:
        add_time(self.outcome, guardrail, started)
