"""Reading each supported format into blocks: plain text, Markdown, HTML and PDF.

Structure is kept where the format has it (heading levels, code fences, lists,
tables, pages) so chunks can follow it; markup itself never reaches the text.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from html.parser import HTMLParser

from powertrain.errors import ConfigError
from powertrain.rag.documents import Block, BlockKind, UnreadableDocument


def paragraphs(text: str, *, page: int | None = None) -> list[Block]:
    """Blank-line separated paragraphs, keeping their line breaks (verse, addresses, PDF lines)."""
    blocks = []
    for chunk in re.split(r"\n[ \t\f\v]*\n", text):
        lines = (" ".join(line.split()) for line in chunk.split("\n"))
        body = "\n".join(line for line in lines if line)
        if body:
            blocks.append(Block(body, "paragraph", page=page))
    return blocks


# --- markdown ----------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))??(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])(?:[ \t]+|$)")
_TABLE_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
_FRONT_TITLE = re.compile(r"^title[ \t]*[:=][ \t]*(.+?)[ \t]*$", re.M)


def _front_matter(text: str) -> tuple[str | None, str]:
    """YAML (``---``) or TOML (``+++``) front matter: its title, and the text after it."""
    for fence, closers in (("---", ("---", "...")), ("+++", ("+++",))):
        if not text.startswith(fence + "\n"):
            continue
        lines = text.split("\n")
        for k in range(1, len(lines)):
            if lines[k].strip() in closers:
                found = _FRONT_TITLE.search("\n".join(lines[1:k]))
                title = found.group(1).strip("\"'").strip() if found else None
                return title or None, "\n".join(lines[k + 1 :])
    return None, text


def _continues(line: str) -> bool:
    return bool(_LIST_ITEM.match(line)) or (bool(line.strip()) and line[:1] in (" ", "\t"))


def parse_markdown(text: str) -> tuple[str | None, list[Block]]:
    title, text = _front_matter(text)
    lines = text.split("\n")
    blocks: list[Block] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(Block(" ".join(" ".join(p.split()) for p in para)))
            para.clear()

    def take(i: int, keep: Callable[[str], bool]) -> int:
        while i < len(lines) and keep(lines[i]):
            i += 1
        return i

    i = 0
    while i < len(lines):
        line = lines[i]
        if fence := _FENCE.match(line):
            flush()
            mark = fence.group(1)
            closing = re.compile(rf"^ {{0,3}}{re.escape(mark[0])}{{{len(mark)},}}[ \t]*$")
            end = i + 1
            while end < len(lines) and not closing.match(lines[end]):
                end += 1  # an unclosed fence runs to the end, as in CommonMark
            blocks.append(Block("\n".join(lines[i + 1 : end]).strip("\n"), "code"))
            i = end + 1
        elif not line.strip():
            flush()
            i += 1
        elif heading := _ATX.match(line):
            flush()
            blocks.append(Block((heading.group(2) or "").strip(), "heading", len(heading.group(1))))
            i += 1
        elif para and _SETEXT.match(line):
            level = 1 if line.strip().startswith("=") else 2
            blocks.append(Block(" ".join(" ".join(p.split()) for p in para), "heading", level))
            para.clear()
            i += 1
        elif _RULE.match(line):
            flush()
            i += 1
        elif _LIST_ITEM.match(line):
            flush()
            # Items and their indented continuations, across single blank lines between items.
            end = i + 1
            while end < len(lines):
                nxt = lines[end]
                blank_inside = end + 1 < len(lines) and _continues(lines[end + 1])
                if not (_continues(nxt) if nxt.strip() else blank_inside):
                    break
                end += 1
            block = "\n".join(s.rstrip() for s in lines[i:end] if s.strip())
            blocks.append(Block(block, "list"))
            i = end
        elif line.lstrip().startswith(">"):
            flush()
            end = take(i, lambda s: s.lstrip().startswith(">"))
            quoted = (re.sub(r"^\s*>[ \t]?", "", s) for s in lines[i:end])
            blocks.append(Block(" ".join(" ".join(q.split()) for q in quoted).strip(), "quote"))
            i = end
        elif "|" in line and i + 1 < len(lines) and _TABLE_RULE.match(lines[i + 1]):
            flush()
            end = take(i, lambda s: bool(s.strip()))
            rows = [s.strip() for k, s in enumerate(lines[i:end]) if k != 1]
            blocks.append(Block("\n".join(rows), "table"))
            i = end
        elif not para and line.startswith(("    ", "\t")):
            end = take(i, lambda s: s.startswith(("    ", "\t")) or not s.strip())
            code = "\n".join(s[4:] if s.startswith("    ") else s[1:] for s in lines[i:end])
            blocks.append(Block(code.strip("\n"), "code"))
            i = end
        else:
            para.append(line)
            i += 1
    flush()
    if title is None:
        title = next((b.text for b in blocks if b.kind == "heading" and b.level == 1), None)
    return title, blocks


# --- html --------------------------------------------------------------------------------

_SKIPPED = {"script", "style", "nav", "footer", "noscript", "template", "svg", "iframe"}
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BREAKS = {
    "p", "div", "section", "article", "main", "header", "aside", "blockquote", "ul", "ol",
    "dl", "dt", "dd", "figure", "figcaption", "table", "caption", "form", "hr", "body",
    "address", "details", "summary", "li", "pre",
}  # fmt: skip


class _HTMLText(HTMLParser):
    """Plain text of a page by structure; entities are decoded, markup is never kept."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title: list[str] = []
        self._text: list[str] = []
        self._cells: list[str] = []
        self._skip = self._pre = self._lists = 0
        self._heading: int | None = None
        self._in_title = self._in_cell = False

    def _flush(self) -> None:
        raw = "".join(self._text)
        self._text.clear()
        kind: BlockKind = "paragraph"
        if self._pre:
            text, kind = raw.strip("\n"), "code"
        else:
            text = " ".join(raw.split())
            kind = "heading" if self._heading else "list" if self._lists else "paragraph"
        if text.strip():
            self.blocks.append(Block(text, kind, self._heading if kind == "heading" else None))

    def _close_cell(self) -> None:
        if self._in_cell:
            self._cells.append(" ".join("".join(self._text).split()))
            self._text.clear()
            self._in_cell = False

    def _end_row(self) -> None:
        self._close_cell()
        if self._cells:
            self.blocks.append(Block(" | ".join(self._cells), "table"))
            self._cells = []
        self._flush()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "br":
            self._text.append("\n")
        elif tag in ("td", "th"):
            self._close_cell()  # </td> and </tr> may be left out in valid HTML
            self._flush()
            self._in_cell = True
        elif tag in ("tr", "table"):
            self._end_row()
        elif self._in_cell and (tag in _HEADINGS or tag in _BREAKS):
            self._text.append(" ")  # structure inside a cell stays in that cell
        elif tag in _HEADINGS or tag in _BREAKS:
            self._flush()
            self._heading = _HEADINGS.get(tag, self._heading)
            self._pre += tag == "pre"
            self._lists += tag in ("ul", "ol")  # counted by list, as </li> may be left out

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in ("td", "th"):
            self._close_cell()
        elif tag in ("tr", "table"):
            self._end_row()
        elif self._in_cell and (tag in _HEADINGS or tag in _BREAKS):
            self._text.append(" ")
        elif tag in _HEADINGS or tag in _BREAKS:
            self._flush()
            if tag in _HEADINGS:
                self._heading = None
            self._pre = max(0, self._pre - (tag == "pre"))
            self._lists = max(0, self._lists - (tag in ("ul", "ol")))

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        (self.title if self._in_title else self._text).append(data)

    def close(self) -> None:
        super().close()
        self._end_row()


def parse_html(text: str) -> tuple[str | None, list[Block]]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    title = " ".join("".join(parser.title).split())
    if not title:
        title = next((b.text for b in parser.blocks if b.level == 1), "")
    return title or None, parser.blocks


# --- pdf ---------------------------------------------------------------------------------


def parse_pdf(data: bytes, name: str) -> tuple[str | None, list[Block]]:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise ConfigError("reading PDF files needs pypdf: `pip install pypdf`") from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        # An empty user password is what every viewer tries first; only a real one stops us.
        if reader.is_encrypted and not _decrypts_without_password(reader):
            raise UnreadableDocument(
                f"{name}: the PDF is encrypted (password-protected); save an unencrypted copy"
            )
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except UnreadableDocument:
        raise
    except Exception as exc:  # pypdf reports corrupt input through many exception types
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise UnreadableDocument(f"{name}: not a readable PDF ({detail})") from exc
    blocks = [
        block
        for number, text in enumerate(pages, start=1)
        for block in paragraphs(text, page=number)
    ]
    if not blocks:
        raise UnreadableDocument(
            f"{name}: the PDF has no text layer (scanned?); run OCR on it first"
        )
    return (title.strip() if isinstance(title, str) else None) or None, blocks


def _decrypts_without_password(reader: object) -> bool:
    try:
        return bool(reader.decrypt(""))  # type: ignore[attr-defined]
    except Exception:  # e.g. AES without the optional `cryptography` package
        return False
