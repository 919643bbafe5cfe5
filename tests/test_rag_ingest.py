"""Ingestion primitives on real files in temp dirs: loaders, discovery, path safety, chunking."""

from __future__ import annotations

import io
import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest

from powertrain.engines.bundled import smollm2_path
from powertrain.errors import InvalidRequest, RequestTooLarge
from powertrain.rag.chunking import Chunk, chunk_document
from powertrain.rag.loaders import (
    Block,
    DocumentTooLarge,
    LoadedDocument,
    UnreadableDocument,
    UnsafePath,
    discover,
    load_file,
    safe_relative_path,
)

CountTokens = Callable[[str], int]


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def smollm2_tokens() -> Iterator[CountTokens]:
    """SmolLM2's real BPE tokenizer (vocabulary only: loads in well under a second)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(smollm2_path()), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    yield count
    vocab.close()


@pytest.fixture(params=["words", "smollm2"])
def counter(request: pytest.FixtureRequest) -> CountTokens:
    if request.param == "words":
        return words
    tokens: CountTokens = request.getfixturevalue("smollm2_tokens")
    return tokens


def make_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF built by hand: one Helvetica text stream per page, exact xref."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>"
        % (" ".join(f"{4 + 2 * k} 0 R" for k in range(len(pages))).encode(), len(pages)),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for k, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * k)
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode("latin-1"))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n".encode()
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def doc_of(blocks: list[Block]) -> LoadedDocument:
    return LoadedDocument("x.md", "x", "text/markdown", blocks, "0" * 64, 1)


MARKDOWN = """\
---
title: "The Guide"
---
Preamble before any heading.

# Install

Pick one way.

## From source

Clone the repository.
Then build it.

```python
def main():

    return 1
```

### Linux
Setext is fine too
------------------

- first item
  continues here
- second item

# Usage

Run it.
"""


def test_markdown_structure_and_heading_paths(tmp_path: Path) -> None:
    write(tmp_path, "guide.md", MARKDOWN)
    doc = load_file(tmp_path, "guide.md")
    assert (doc.title, doc.media_type, doc.path) == ("The Guide", "text/markdown", "guide.md")
    kinds = [(b.kind, b.level, b.text) for b in doc.blocks]
    assert ("heading", 1, "Install") in kinds
    assert ("heading", 3, "Linux") in kinds
    assert ("heading", 2, "Setext is fine too") in kinds  # under Linux (3): pops it
    assert ("code", None, "def main():\n\n    return 1") in kinds
    assert ("list", None, "- first item\n  continues here\n- second item") in kinds
    assert ("paragraph", None, "Clone the repository. Then build it.") in kinds
    assert doc.content_hash == __import__("hashlib").sha256(MARKDOWN.encode()).hexdigest()

    chunks = chunk_document(doc, count_tokens=words, max_tokens=200, overlap_tokens=0)
    by_text = {c.text.split("\n")[0]: c.heading_path for c in chunks}
    assert by_text["Preamble before any heading."] == []
    assert by_text["Pick one way."] == ["Install"]
    assert by_text["Clone the repository. Then build it."] == ["Install", "From source"]
    assert by_text["- first item"] == ["Install", "Setext is fine too"]
    assert by_text["Run it."] == ["Usage"]
    # The code block stays whole, in the chunk of its own section.
    assert any("def main():\n\n    return 1" in c.text for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_markdown_title_falls_back_to_first_h1_then_stem(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "intro\n\n## Not it\n\n# Real Title\n\ntext\n")
    write(tmp_path, "notes.markdown", "just text\n")
    assert load_file(tmp_path, "a.md").title == "Real Title"
    assert load_file(tmp_path, "notes.markdown").title == "notes"


def test_html_keeps_text_and_drops_markup_scripts_and_chrome(tmp_path: Path) -> None:
    page = """<!doctype html><html><head><title>Caf&eacute; &amp; Co</title>
    <style>body { color: red }</style><script>alert("pwned")</script></head>
    <body><nav>Home | About</nav><h1>Menu</h1>
    <p>Fresh&nbsp;bread &lt;daily&gt; <b>baked</b> <a href="/x">here</a>.</p>
    <h2>Drinks</h2><ul><li>Tea</li><li>Coffee</li></ul>
    <pre>  indented
      code</pre>
    <table><tr><th>Item</th><th>Price</th></tr><tr><td><p>Cake</p></td><td>3</td></tr></table>
    <footer>Copyright footer</footer><script>var hidden = 1;</script></body></html>"""
    write(tmp_path, "menu.html", page)
    doc = load_file(tmp_path, "menu.html")
    assert doc.title == "Café & Co" and doc.media_type == "text/html"
    text = "\n".join(b.text for b in doc.blocks)
    for absent in ("alert", "color: red", "Home | About", "Copyright", "hidden", "href", "<b>"):
        assert absent not in text
    assert "Fresh bread <daily> baked here." in text  # entities decoded, plain text
    assert [(b.kind, b.level) for b in doc.blocks if b.kind == "heading"] == [
        ("heading", 1),
        ("heading", 2),
    ]
    assert Block("  indented\n      code", "code") in doc.blocks
    assert Block("Item | Price", "table") in doc.blocks and Block("Cake | 3", "table") in doc.blocks
    chunks = chunk_document(doc, count_tokens=words, max_tokens=50)
    assert next(c for c in chunks if "Tea" in c.text).heading_path == ["Menu", "Drinks"]

    # End tags that HTML lets authors leave out (</td>, </tr>, </li>) close what they should.
    loose = "<table><tr><td>a<td><p>b</p><tr><td>c<td>d</table><ul><li>x<li>y</ul>after<h2>N</h2>"
    write(tmp_path, "loose.html", loose)
    assert [(b.kind, b.text) for b in load_file(tmp_path, "loose.html").blocks] == [
        ("table", "a | b"),
        ("table", "c | d"),
        ("list", "x"),
        ("list", "y"),
        ("paragraph", "after"),
        ("heading", "N"),
    ]
    write(tmp_path, "bare.htm", "<h1>Only &quot;h1&quot;</h1><div>body text</div>")
    assert load_file(tmp_path, "bare.htm").title == 'Only "h1"'


def test_text_paragraphs_by_blank_lines(tmp_path: Path) -> None:
    write(tmp_path, "poem.txt", "\ufeffRoses are red,\r\nviolets are blue.\r\n\r\n \n\nThe end.\n")
    doc = load_file(tmp_path, "poem.txt")
    assert doc.title == "poem" and doc.media_type == "text/plain"
    assert doc.blocks == [Block("Roses are red,\nviolets are blue."), Block("The end.")]


def test_pdf_pages_titles_and_chunks_that_stay_on_their_page(tmp_path: Path) -> None:
    first = ["Alpha one is here.", "Alpha two follows."]
    write(tmp_path, "report.pdf", make_pdf([first, [], ["Gamma on page three."]], title="Report"))
    doc = load_file(tmp_path, "report.pdf")
    assert (doc.title, doc.media_type) == ("Report", "application/pdf")
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "Alpha one is here.\nAlpha two follows."),
        (3, "Gamma on page three."),
    ]
    chunks = chunk_document(doc, count_tokens=words, max_tokens=100, overlap_tokens=10)
    # Both pages would fit in one chunk; a chunk still never spans pages, nor overlaps across.
    assert [(c.page, c.text) for c in chunks] == [
        (1, "Alpha one is here.\nAlpha two follows."),
        (3, "Gamma on page three."),
    ]
    write(tmp_path, "untitled.pdf", make_pdf([["x"]]))
    assert load_file(tmp_path, "untitled.pdf").title == "untitled"


def _encrypted(user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["Secret text."]]))))
    writer.encrypt(user_password, owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_errors_are_clear_and_name_the_file(tmp_path: Path) -> None:
    write(tmp_path, "locked.pdf", _encrypted("hunter2"))
    with pytest.raises(UnreadableDocument, match=r"^locked\.pdf: .*encrypted"):
        load_file(tmp_path, "locked.pdf")
    # Only an owner password (no password to open): readable, as in any viewer.
    write(tmp_path, "restricted.pdf", _encrypted(""))
    assert load_file(tmp_path, "restricted.pdf").blocks == [Block("Secret text.", page=1)]

    good = make_pdf([["Some text."]])
    write(tmp_path, "corrupt.pdf", good[:150] + b"\x00garbage" * 20)
    with pytest.raises(UnreadableDocument, match=r"^corrupt\.pdf: not a readable PDF"):
        load_file(tmp_path, "corrupt.pdf")
    write(tmp_path, "fake.pdf", b"this is not a pdf at all")
    with pytest.raises(UnreadableDocument, match=r"^fake\.pdf: not a readable PDF"):
        load_file(tmp_path, "fake.pdf")
    write(tmp_path, "scan.pdf", make_pdf([[], []]))
    with pytest.raises(UnreadableDocument, match=r"scan\.pdf: .*no text layer \(scanned\?\)"):
        load_file(tmp_path, "scan.pdf")


def test_malformed_text_files_are_refused_not_mangled(tmp_path: Path) -> None:
    write(tmp_path, "junk.txt", bytes(range(256)) * 4)
    with pytest.raises(
        UnreadableDocument, match=r"^junk\.txt: looks binary \(NUL byte at offset 0"
    ):
        load_file(tmp_path, "junk.txt")
    write(tmp_path, "latin.md", "caf\xe9 ok".encode("latin-1"))
    with pytest.raises(UnreadableDocument, match=r"^latin\.md: not valid utf-8 .*offset 3"):
        load_file(tmp_path, "latin.md")
    # A page that declares its charset is decoded with it.
    write(tmp_path, "old.html", '<meta charset="iso-8859-1"><p>caf\xe9</p>'.encode("latin-1"))
    assert load_file(tmp_path, "old.html").blocks == [Block("café")]
    write(tmp_path, "wide.txt", "\ufeffhello wide".encode("utf-16-le"))
    assert load_file(tmp_path, "wide.txt").blocks == [Block("hello wide")]

    write(tmp_path, "empty.txt", b"")
    with pytest.raises(UnreadableDocument, match=r"^empty\.txt: the file is empty"):
        load_file(tmp_path, "empty.txt")
    write(tmp_path, "blank.md", "\n   \n\t\n")
    with pytest.raises(UnreadableDocument, match=r"^blank\.md: the document has no text"):
        load_file(tmp_path, "blank.md")
    write(tmp_path, "only-markup.html", "<script>x()</script><p> </p>")
    with pytest.raises(UnreadableDocument, match="has no text"):
        load_file(tmp_path, "only-markup.html")
    write(tmp_path, "data.csv", "a,b\n")
    with pytest.raises(UnreadableDocument, match=r"unsupported file type '\.csv'") as caught:
        load_file(tmp_path, "data.csv")
    assert caught.value.code == "unsupported_media_type"
    with pytest.raises(UnreadableDocument, match="no such file"):
        load_file(tmp_path, "missing.md")
    os.mkfifo(tmp_path / "pipe.txt")  # opening must not block waiting for a writer
    with pytest.raises(UnreadableDocument, match="not a regular file"):
        load_file(tmp_path, "pipe.txt")


def test_oversized_files_are_refused_before_reading(tmp_path: Path) -> None:
    write(tmp_path, "big.txt", "word " * 1000)
    with pytest.raises(DocumentTooLarge, match=r"^big\.txt: larger than the 1000-byte limit") as e:
        load_file(tmp_path, "big.txt", max_bytes=1000)
    assert isinstance(e.value, RequestTooLarge) and e.value.status_code == 413
    assert load_file(tmp_path, "big.txt", max_bytes=5000).size == 5000


def test_discover_globs_defaults_and_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    outside = write(tmp_path, "secret.md", "outside the root")
    for rel in (
        "readme.md",
        "guide/intro.md",
        "guide/deep/more.html",
        "guide/deep/scan.pdf",
        "notes.txt",
        "image.png",
        ".hidden.md",
        ".git/config.md",
        "node_modules/pkg/readme.md",
        "pkg/__pycache__/x.txt",
        "drafts/wip.md",
    ):
        write(root, rel, "text")
    (root / "escape.md").symlink_to(outside)
    (root / "alias.md").symlink_to(root / "readme.md")
    (root / "linked-dir").symlink_to(tmp_path, target_is_directory=True)
    (root / "dangling.md").symlink_to(tmp_path / "nothing.md")

    skipped: dict[str, str] = {}

    def note(path: PurePosixPath, reason: str) -> None:
        skipped[path.as_posix()] = reason

    found = discover(root, on_skip=note)
    assert all(p.is_relative_to(root) for p in found)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "alias.md",
        "drafts/wip.md",
        "guide/deep/more.html",
        "guide/deep/scan.pdf",
        "guide/intro.md",
        "notes.txt",
        "readme.md",
    ]
    assert "outside the ingest root" in skipped["escape.md"]
    assert skipped["dangling.md"] == "broken symlink"
    assert skipped["linked-dir"] == "symlinked directories are not followed"
    assert skipped["image.png"] == "unsupported file type"
    assert not any(".git" in p or "node_modules" in p or "pycache" in p for p in skipped)

    chosen = discover(root, include=["guide/**/*.md", "**/*.txt"], exclude=["drafts/**"])
    # An explicit exclude replaces the defaults, so __pycache__ is back.
    assert [p.relative_to(root).as_posix() for p in chosen] == [
        "guide/intro.md",
        "notes.txt",
        "pkg/__pycache__/x.txt",
    ]
    no_drafts = discover(
        root, include=["**/*.md"], exclude=["**/drafts", "**/.*", "alias.md", "node_*"]
    )
    assert [p.relative_to(root).as_posix() for p in no_drafts] == ["guide/intro.md", "readme.md"]
    everything = discover(root, exclude=[], on_skip=note)
    assert root / ".git/config.md" in everything and root / ".hidden.md" in everything
    assert discover(root) == found  # deterministic

    # Discovered paths load as they are; a symlink escape is refused when asked for directly.
    assert load_file(root, found[0]).path == "alias.md"
    with pytest.raises(UnsafePath, match=r"escape\.md resolves outside the ingest root"):
        load_file(root, "escape.md")


HOSTILE = [
    "../x",
    "/etc/passwd",
    "%2e%2e/x",
    "%2E%2E%2Fx",
    "%252e%252e/x",
    "a/../../b",
    "x\x00y",
    "..\\x",
    "a\\..\\..\\b",
    "C:\\Windows\\win.ini",
    "\u2025/x",  # a look-alike of ".." that NFKC folds into it
    "",
    "./",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_reliability_5_paths_stay_inside(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    write(root, "ok.md", "inside")
    write(tmp_path, "x", "outside")
    write(tmp_path, "b", "outside")
    with pytest.raises(UnsafePath) as caught:
        safe_relative_path(name)
    assert isinstance(caught.value, InvalidRequest) and caught.value.status_code == 400
    assert caught.value.code == "unsafe_path"
    for given in (name, PurePosixPath(name), Path(name)):
        with pytest.raises(UnsafePath):
            load_file(root, given)


def test_safe_names_are_normalised(tmp_path: Path) -> None:
    assert safe_relative_path("a\\b/./c//d.md") == PurePosixPath("a/b/c/d.md")
    assert safe_relative_path("100%25 sure.md") == PurePosixPath("100%25 sure.md")
    assert safe_relative_path("..hidden/x..md") == PurePosixPath("..hidden/x..md")
    write(tmp_path, "sub/ok.md", "# Hi\n\nthere")
    # Relative to the root, under the root, or absolute inside it: the same document.
    for given in ("sub/ok.md", tmp_path / "sub/ok.md", f"{tmp_path}/sub/./ok.md"):
        assert load_file(tmp_path, given).path == "sub/ok.md"
    # The working directory is tmp_path (conftest): a relative root and a path under it.
    assert load_file(Path("sub"), Path("sub/ok.md")).path == "ok.md"


LONG_WORD = "x" * 700


def long_document() -> LoadedDocument:
    """Blocks that force every cut: many paragraphs, a huge paragraph, long lines and words."""
    sentences = [f"Sentence number {n} says something about topic {n % 7}." for n in range(120)]
    code_lines = [f"    value_{n} = compute({n}, scale=2)  # step {n}" for n in range(60)]
    return doc_of(
        [
            Block("Overview", "heading", 1),
            *[Block(" ".join(sentences[n : n + 3])) for n in range(0, 30, 3)],
            Block(" ".join(sentences), "paragraph"),
            Block("Details", "heading", 2),
            Block("def small():\n    return 42", "code"),
            Block("def big():\n" + "\n".join(code_lines), "code"),
            Block("\n".join(f"- item {n} with a few words" for n in range(80)), "list"),
            Block(f"A sentence with one very long token {LONG_WORD} inside it. And after."),
            Block("Appendix", "heading", 1),
            Block("Short closing words."),
        ]
    )


@pytest.mark.parametrize("max_tokens", [16, 64, 256])
def test_every_chunk_is_within_the_budget(counter: CountTokens, max_tokens: int) -> None:
    doc = long_document()
    overlap = max_tokens // 4
    chunks = chunk_document(
        doc, count_tokens=counter, max_tokens=max_tokens, overlap_tokens=overlap
    )
    assert chunks
    for chunk in chunks:
        assert 0 < chunk.token_count == counter(chunk.text) <= max_tokens, chunk
        assert chunk.text == chunk.text.strip("\n").rstrip()
    source = "\n".join(b.text for b in doc.blocks)
    # Nothing is lost: every word of the body shows up in some chunk (long words in pieces).
    joined = " ".join(c.text for c in chunks)
    for word in set(source.split()) - {LONG_WORD, "Overview", "Details", "Appendix"}:
        assert word in joined
    assert "".join(re.findall("x{20,}", joined)).count("x") >= len(LONG_WORD)
    if max_tokens != 64:
        return
    # Same input, same chunks.
    again = chunk_document(doc, count_tokens=counter, max_tokens=max_tokens, overlap_tokens=overlap)
    assert again == chunks


def test_splits_follow_sentences_then_words() -> None:
    doc = long_document()
    chunks = chunk_document(doc, count_tokens=words, max_tokens=60, overlap_tokens=0)
    overview = [c for c in chunks if c.heading_path == ["Overview"]]
    # Small paragraphs are packed whole: a chunk holds several of them.
    assert overview[0].text.count("\n\n") >= 1 and overview[0].start_block == 1
    # The huge paragraph is cut at sentence ends, never mid-sentence (each sentence fits).
    huge = [c for c in overview if c.start_block == 11]
    assert len(huge) > 5
    for chunk in huge:
        assert chunk.text.startswith("Sentence number") and chunk.text.endswith(".")
    # Words are never cut, except the one longer than the whole budget.
    vocabulary = set(" ".join(b.text for b in doc.blocks).split())
    for chunk in chunks:
        for word in chunk.text.split():
            assert word in vocabulary or set(word) == {"x"}, word


def test_code_blocks_stay_whole_when_they_fit_and_split_at_lines_when_not() -> None:
    chunks = chunk_document(long_document(), count_tokens=words, max_tokens=64, overlap_tokens=8)
    assert any("def small():\n    return 42" in c.text for c in chunks)
    big = [c for c in chunks if "value_" in c.text]
    assert len(big) > 1
    assert "def big():\n    value_0 = compute(0, scale=2)  # step 0" in big[0].text
    for chunk in big:
        for line in chunk.text.split("\n"):
            if "value_" in line:
                assert re.fullmatch(r"    value_(\d+) = compute\(\1, scale=2\)  # step \1", line)
    # No overlap follows code: the next piece of the block starts on a fresh line.
    assert big[1].text.startswith("    value_")
    whole = chunk_document(
        doc_of([Block("a b c\n\n  d e", "code")]),
        count_tokens=words,
        max_tokens=5,
        overlap_tokens=0,
    )
    assert [c.text for c in whole] == ["a b c\n\n  d e"]


def test_overlap_repeats_the_tail_within_a_section_only() -> None:
    sentences = [f"Fact {n} is true." for n in range(30)]
    doc = doc_of(
        [
            Block("One", "heading", 1),
            Block(" ".join(sentences)),
            Block("Two", "heading", 1),
            Block("Another section starts fresh."),
        ]
    )
    chunks = chunk_document(doc, count_tokens=words, max_tokens=20, overlap_tokens=8)
    first = [c for c in chunks if c.heading_path == ["One"]]
    assert len(first) > 2
    for previous, current in itertools.pairwise(first):
        # Whole sentences from the end of the previous chunk, at most 8 tokens.
        tail = current.text[: current.text.index(".", current.text.index(".") + 1) + 1]
        assert previous.text.endswith(tail) and words(tail) == 8
        assert current.text.startswith("Fact")
    assert chunks[-1].text == "Another section starts fresh."
    assert chunks[-1].heading_path == ["Two"]
    no_overlap = chunk_document(doc, count_tokens=words, max_tokens=20, overlap_tokens=0)
    assert sum(c.token_count for c in no_overlap) == sum(words(b.text) for b in doc.blocks[1::2])


def test_overlap_falls_back_to_words_and_never_breaks_the_bound(counter: CountTokens) -> None:
    run_on = " ".join(f"w{n}" for n in range(200))  # no sentence ends at all
    doc = doc_of([Block(run_on)])
    chunks = chunk_document(doc, count_tokens=counter, max_tokens=30, overlap_tokens=10)
    for previous, current in itertools.pairwise(chunks):
        shared = next(
            k for k in range(len(current.text), 0, -1) if previous.text.endswith(current.text[:k])
        )
        assert 0 < counter(current.text[:shared].strip()) <= 10
        assert current.token_count <= 30


def test_heading_levels_pop_correctly_and_headings_alone_still_chunk() -> None:
    doc = doc_of(
        [
            Block("A", "heading", 1),
            Block("B", "heading", 2),
            Block("C", "heading", 3),
            Block("under C"),
            Block("D", "heading", 2),
            Block("under D"),
            Block("E", "heading", 1),
            Block("under E"),
        ]
    )
    chunks = chunk_document(doc, count_tokens=words)
    assert [(c.text, c.heading_path, c.start_block) for c in chunks] == [
        ("under C", ["A", "B", "C"], 3),
        ("under D", ["A", "D"], 5),
        ("under E", ["E"], 7),
    ]
    only_headings = doc_of([Block("Title", "heading", 1), Block("Sub", "heading", 2)])
    assert [c.text for c in chunk_document(only_headings, count_tokens=words)] == ["Title\n\nSub"]


def test_chunking_parameters_are_checked() -> None:
    doc = doc_of([Block("text")])
    for bad in (
        {"max_tokens": 0},
        {"max_tokens": 10, "overlap_tokens": 10},
        {"overlap_tokens": -1},
    ):
        with pytest.raises(InvalidRequest):
            chunk_document(doc, count_tokens=words, **bad)
    with pytest.raises(InvalidRequest, match="too small"):
        chunk_document(
            doc_of([Block("abcdef")]),
            count_tokens=lambda s: 2 * len(s),
            max_tokens=1,
            overlap_tokens=0,
        )
    single: list[Chunk] = chunk_document(doc, count_tokens=words, max_tokens=1, overlap_tokens=0)
    assert [c.text for c in single] == ["text"]
