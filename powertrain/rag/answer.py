"""Grounded answers: retrieve, show the model numbered sources, ask it to cite them.

When nothing relevant is found the answer says so, without a model call: a
small model given no sources would answer from thin air. Sources are data in
the prompt, never template code (RELIABILITY 6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from powertrain.calls import Call, CallContext
from powertrain.rag.search import SearchHit
from powertrain.schemas import ChatCompletionRequest
from powertrain.store.collections import CollectionRecord

if TYPE_CHECKING:
    from powertrain.gateway import Gateway

DEFAULT_THRESHOLD = 0.25  # cosine; below it MiniLM's neighbours are rarely on topic
_CITATION = re.compile(r"\[(\d{1,3})\]")

CITE_INSTRUCTIONS = (
    "Answer using only the numbered sources below. After each claim, cite the source it "
    "comes from as [1], [2], and so on. If the sources do not answer the question, say that "
    "you don't know."
)
NO_SOURCES = "No source in the knowledge base matches this request: say that you don't know."
SYSTEM = CITE_INSTRUCTIONS + " Be brief."


@dataclass(frozen=True)
class GroundedAnswer:
    text: str
    sources: list[SearchHit]  # what the model was shown, in citation order
    cited: list[int]  # the source numbers the answer cites
    trace_id: str | None  # None when no model was called
    found: bool


def sources_block(hits: list[SearchHit]) -> str:
    """The numbered sources as the model reads them: where each comes from, then its text."""
    parts = []
    for n, hit in enumerate(hits, 1):
        chunk = hit.chunk
        where = chunk.path + (f" > {' > '.join(chunk.heading_path)}" if chunk.heading_path else "")
        if chunk.page is not None:
            where += f" (page {chunk.page})"
        parts.append(f"[{n}] {where}\n{chunk.text}")
    return "\n\n".join(parts)


def cited_numbers(text: str, count: int) -> list[int]:
    seen: list[int] = []
    for match in _CITATION.finditer(text):
        number = int(match.group(1))
        if 1 <= number <= count and number not in seen:
            seen.append(number)
    return seen


async def answer(
    gateway: Gateway,
    record: CollectionRecord,
    question: str,
    *,
    k: int = 4,
    threshold: float = DEFAULT_THRESHOLD,
    model: str | None = None,
    ctx: CallContext | None = None,
) -> GroundedAnswer:
    hits = await gateway.searcher.search(record, question, k=k, threshold=threshold)
    if not hits:
        return GroundedAnswer(
            text=f"I don't know: nothing in collection {record.name!r} matches that question.",
            sources=[],
            cited=[],
            trace_id=None,
            found=False,
        )
    request = ChatCompletionRequest.model_validate(
        {
            "model": model or gateway.config.settings.default_model,
            "messages": [
                {"role": "system", "content": f"{SYSTEM}\n\n{sources_block(hits)}"},
                {"role": "user", "content": question},
            ],
            "temperature": 0,
            "max_tokens": 256,
        }
    )
    call = await gateway.prepare(request, ctx or CallContext(source="python"))
    if isinstance(call, Call):
        call.trace.metadata["retrieval"] = {
            "collection": record.name,
            "chunks": [{"id": h.chunk.id, "score": round(h.score, 6)} for h in hits],
        }
    result = await call.result()
    return GroundedAnswer(
        text=result.content,
        sources=hits,
        cited=cited_numbers(result.content, len(hits)),
        trace_id=call.trace_id,
        found=True,
    )
