"""Cutting a loaded document into chunks that follow its structure and a token budget.

The rules, in order of precedence:

- A chunk never holds more than ``max_tokens`` by the caller's ``count_tokens``,
  overlap included. Counts are measured on the final text, never summed: real
  tokenizers are not additive across a join.
- A heading ends the chunk before it, so a chunk belongs to one section and its
  ``heading_path`` is exact. A chunk never spans PDF pages either, so ``page``
  is exact; a paragraph that runs across a page break was already cut in two by
  the loader, one block per page.
- Consecutive blocks of a section are packed together while they fit. A block
  that fits alone is never cut; one that does not is cut at lines (code, lists,
  tables), then sentences, then words, and only a single word longer than the
  budget is cut mid-word.
- The next chunk of the same section (and page) starts with the tail of the
  previous one, whole sentences where possible, at most ``overlap_tokens``; no
  overlap follows code, since half a function repeated is noise.

Headings are not repeated inside chunk text: ``heading_path`` carries them, and
an index that wants them searchable prepends it. A document made only of
headings is chunked from its headings, so no document yields nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from powertrain.errors import InvalidRequest
from powertrain.rag.loaders import BlockKind, LoadedDocument

CountTokens = Callable[[str], int]

# The end of a sentence: terminal punctuation, maybe closing quotes or brackets, then space;
# CJK full stops need no space after them.
_SENTENCE = (
    r"(?:(?<=[.!?\u2026])|(?<=[.!?\u2026][\"'\u201d\u2019)\]]))\s+|(?<=[\u3002\uff01\uff1f])"
)
_SENTENCE_END = re.compile(_SENTENCE)
# Where an overlap may start, best first: a sentence or paragraph, a line, a word.
_TAIL_STARTS = (
    re.compile(_SENTENCE + r"|\n[ \t]*\n"),
    re.compile(r"(?<=\n)(?=[ \t]*\S)"),
    re.compile(r"(?<=\s)(?=\S)"),
)
_BETWEEN_BLOCKS = "\n\n"


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    index: int  # position in the document, from 0
    heading_path: list[str]  # the headings above this chunk, outermost first
    page: int | None  # 1-based PDF page; None for other formats
    start_block: int  # index in ``LoadedDocument.blocks`` of the first block it covers
    token_count: int  # ``count_tokens(text)``


@dataclass(frozen=True, slots=True)
class _Unit:
    """An atomic piece to pack: a whole block, or a cut of one that did not fit."""

    text: str
    block: int
    kind: BlockKind
    joiner: str  # what goes before it after a unit of the same block


def chunk_document(
    doc: LoadedDocument,
    *,
    count_tokens: CountTokens,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
) -> list[Chunk]:
    """``doc`` as chunks of at most ``max_tokens``; the same input gives the same chunks."""
    if max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, not {max_tokens}", param="max_tokens")
    if not 0 <= overlap_tokens < max_tokens:
        raise InvalidRequest(
            f"overlap_tokens must be at least 0 and below max_tokens ({max_tokens}), "
            f"not {overlap_tokens}",
            param="overlap_tokens",
        )
    chunks: list[Chunk] = []
    for heading_path, page, units in _sections(doc, count_tokens, max_tokens, overlap_tokens):
        _pack_section(chunks, units, heading_path, page, count_tokens, max_tokens, overlap_tokens)
    return chunks


def _sections(
    doc: LoadedDocument, count: CountTokens, max_tokens: int, overlap_tokens: int
) -> Iterator[tuple[list[str], int | None, list[_Unit]]]:
    """Runs of body units with one heading path and one page."""
    headings_are_text = all(block.kind == "heading" for block in doc.blocks)
    stack: list[tuple[int, str]] = []
    units: list[_Unit] = []
    page: int | None = None
    for index, block in enumerate(doc.blocks):
        heading = block.kind == "heading" and not headings_are_text
        if units and (heading or block.page != page):
            yield [text for _, text in stack], page, units
            units = []
        page = block.page
        if heading:
            level = block.level or 1
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, " ".join(block.text.split())))
        elif block.text.strip():
            units.extend(_units(index, block.text, block.kind, count, max_tokens, overlap_tokens))
    if units:
        yield [text for _, text in stack], page, units


def _units(
    index: int, text: str, kind: BlockKind, count: CountTokens, max_tokens: int, overlap: int
) -> list[_Unit]:
    text = text.strip("\n").rstrip() if kind == "code" else text.strip()
    if count(text) <= max_tokens:
        return [_Unit(text, index, kind, _BETWEEN_BLOCKS)]
    levels: list[Callable[[str], list[str]]]
    if kind == "code":
        levels = [_lines]
    elif kind in ("list", "table"):
        levels = [_lines, _sentences]
    else:
        levels = [_sentences]
    # Cuts below sentence level leave room for the overlap that will be put in front of them.
    pieces = _cut(text, levels, count, max_tokens, max_tokens - overlap)
    return [_Unit(piece, index, kind, joiner) for piece, joiner in pieces]


def _lines(text: str) -> list[str]:
    """Lines, with blank lines kept on the line above so that joining with "\\n" restores them."""
    out: list[str] = []
    for line in text.split("\n"):
        if out and not line.strip():
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


_JOINERS: dict[Callable[[str], list[str]], str] = {_lines: "\n", _sentences: " "}


def _cut(
    text: str,
    levels: Sequence[Callable[[str], list[str]]],
    count: CountTokens,
    max_tokens: int,
    word_budget: int,
) -> list[tuple[str, str]]:
    """(piece, joiner) cuts of ``text``, each within budget, coarsest boundaries first."""
    if not levels:
        return _cut_words(text, count, word_budget)
    split, rest = levels[0], levels[1:]
    out: list[tuple[str, str]] = []
    for part in split(text):
        if count(part) <= max_tokens:
            out.append((part, _JOINERS[split]))
            continue
        pieces = _cut(part, rest, count, max_tokens, word_budget)
        out.append((pieces[0][0], _JOINERS[split]))  # the cut's first piece follows the part
        out.extend(pieces[1:])
    return out


def _cut_words(text: str, count: CountTokens, budget: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for piece in _pack(text.split(), " ", count, budget):
        if count(piece) <= budget:
            out.append((piece, " "))
            continue
        # A single word longer than the budget (a hash, a URL, base64): cut it mid-word.
        chars = _pack(list(piece), "", count, budget)
        if any(len(c) == 1 and count(c) > budget for c in chars):
            raise InvalidRequest(
                f"max_tokens is too small to hold even one character of {piece[:40]!r}",
                param="max_tokens",
            )
        out.append((chars[0], " "))
        out.extend((c, "") for c in chars[1:])
    return out


def _joined_fits(
    items: Sequence[str], sep: str, start: int, count: CountTokens, budget: int, end: int
) -> bool:
    return count(sep.join(items[start:end])) <= budget


def _pack(items: Sequence[str], sep: str, count: CountTokens, budget: int) -> list[str]:
    """Consecutive ``items`` joined greedily within ``budget``; an item over it stands alone."""
    pieces = []
    start = 0
    while start < len(items):
        fits = functools.partial(_joined_fits, items, sep, start, count, budget)
        end = max(_longest(fits, start + 1, len(items)), start + 1)
        pieces.append(sep.join(items[start:end]))
        start = end
    return pieces


def _longest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``end`` in [lo, hi] that fits, or ``lo - 1``.

    Galloping then bisecting costs O(log n) counts per chunk instead of one per
    item, which matters for a long run of words. It assumes a longer text never
    has fewer tokens; every result is still measured, so the bound holds anyway.
    """
    if lo > hi or not fits(lo):
        return lo - 1
    good, step = lo, 1
    while good < hi:
        probe = min(good + step, hi)
        if not fits(probe):
            bad = probe
            while bad - good > 1:
                middle = (good + bad) // 2
                good, bad = (middle, bad) if fits(middle) else (good, middle)
            return good
        good, step = probe, step * 2
    return good


def _render(overlap: str, overlap_block: int, units: Sequence[_Unit]) -> str:
    parts = [overlap] if overlap else []
    previous = overlap_block
    for unit in units:
        if parts:
            parts.append(unit.joiner if unit.block == previous else _BETWEEN_BLOCKS)
        parts.append(unit.text)
        previous = unit.block
    return "".join(parts).rstrip()


def _render_fits(
    overlap: str,
    overlap_block: int,
    units: Sequence[_Unit],
    start: int,
    count: CountTokens,
    budget: int,
    end: int,
) -> bool:
    return count(_render(overlap, overlap_block, units[start:end])) <= budget


def _tail(text: str, budget: int, count: CountTokens) -> str:
    """The longest suffix of ``text`` within ``budget`` starting at a sentence, line or word."""
    if budget <= 0:
        return ""
    for pattern in _TAIL_STARTS:
        best = ""
        starts = {0} | {m.end() for m in pattern.finditer(text)}
        for start in sorted(starts, reverse=True):
            candidate = text[start:].strip()
            if not candidate:
                continue
            if count(candidate) > budget:
                break
            best = candidate
        if best:
            return best
    return ""


def _pack_section(
    chunks: list[Chunk],
    units: list[_Unit],
    heading_path: list[str],
    page: int | None,
    count: CountTokens,
    max_tokens: int,
    overlap_tokens: int,
) -> None:
    start = 0
    previous: tuple[str, _Unit] | None = None  # the last chunk's text and its last unit
    while start < len(units):
        overlap, overlap_block, budget = "", -1, overlap_tokens
        if previous is not None and previous[1].kind != "code":
            overlap_block = previous[1].block
            overlap = _tail(previous[0], budget, count)
            # Shrink the overlap until the next unit fits behind it; units alone always fit.
            while overlap and not _render_fits(
                overlap, overlap_block, units, start, count, max_tokens, start + 1
            ):
                budget //= 2
                overlap = _tail(previous[0], budget, count)
        fits = functools.partial(
            _render_fits, overlap, overlap_block, units, start, count, max_tokens
        )
        end = max(_longest(fits, start + 1, len(units)), start + 1)
        text = _render(overlap, overlap_block, units[start:end])
        chunks.append(
            Chunk(
                text=text,
                index=len(chunks),
                heading_path=list(heading_path),
                page=page,
                start_block=units[start].block,
                token_count=count(text),
            )
        )
        previous = (text, units[end - 1])
        start = end
