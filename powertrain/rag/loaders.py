"""Reading files into structured documents for collections, without leaving the ingest root.

Every path is checked before it touches the file system (RELIABILITY 5): ``..``,
absolute paths, drive letters, percent-encoded or look-alike dots, control
characters and symlinks that resolve outside the root are refused with
:class:`UnsafePath`. Input we cannot read faithfully is refused with
:class:`UnreadableDocument` naming the file: text that is not UTF-8 (we never
decode with replacement characters, which would index garbage silently), binary
files, corrupt or encrypted PDFs, and files with no text at all.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import hashlib
import logging
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import unquote

from powertrain.rag.documents import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    DEFAULT_MAX_BYTES,
    MEDIA_TYPES,
    Block,
    BlockKind,
    DocumentTooLarge,
    LoadedDocument,
    UnreadableDocument,
    UnsafePath,
)
from powertrain.rag.formats import paragraphs, parse_html, parse_markdown, parse_pdf

logger = logging.getLogger(__name__)

# --- paths -------------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# What a refused path should be relative to, unless the caller names its own root.
_ROOT = "the collection root"


def _refusal(name: str, *, absolute_ok: bool = False) -> str | None:
    """Why ``name`` (one decoding of it) is unsafe, or None."""
    if _CONTROL.search(name):
        return "contains a NUL byte or control character"
    posix = name.replace("\\", "/")  # a backslash is a separator to Windows and to some tools
    if not absolute_ok and (posix.startswith("/") or _DRIVE.match(posix)):
        return "is absolute"
    for part in posix.split("/"):
        # NFKC folds look-alikes such as U+2025 or full-width dots into ".."
        if part == ".." or unicodedata.normalize("NFKC", part) == "..":
            return "contains '..'"
    return None


def safe_relative_path(name: str, *, root: str = _ROOT) -> PurePosixPath:
    """``name`` as a normalised relative path, or :class:`UnsafePath`.

    For names that arrive from outside (uploads, API fields): backslashes become
    ``/``, ``.`` and empty segments are dropped. Names that are unsafe once
    percent-decoded (up to three times, for double encoding) are refused too,
    though a harmless literal ``%`` is kept as it is.
    """
    _check(name, root=root)
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        raise UnsafePath(f"path {name[:200]!r} names no file", param="path")
    return PurePosixPath(*parts)


def _check(name: str, *, absolute_ok: bool = False, root: str = _ROOT) -> None:
    shown = repr(name[:200])
    variant = name
    for _ in range(4):
        reason = _refusal(variant, absolute_ok=absolute_ok)
        if reason is not None:
            raise UnsafePath(
                f"path {shown} {reason}; use a path relative to {root}",
                param="path",
            )
        decoded = unquote(variant)
        if decoded == variant:
            break
        variant = decoded


def _relative_to_root(root: Path, path: PurePath | str) -> PurePosixPath:
    """``path`` relative to ``root``: given relative to it, or as a path under it."""
    text = os.fspath(path)
    _check(text, absolute_ok=True)  # no "..", NUL or encoded dots, even inside the root
    given = Path(text)
    if given.is_absolute():
        inside = Path(os.path.abspath(text))
        # The root as given or fully resolved (a temp dir under a symlinked /var, say).
        bases = [Path(os.path.abspath(root)), Path(os.path.realpath(root))]
        base = next((b for b in bases if inside.is_relative_to(b)), None)
        if base is None:
            raise UnsafePath(f"path {text[:200]!r} is outside the ingest root", param="path")
        text = inside.relative_to(base).as_posix()
    elif given.is_relative_to(root):  # root / name, as discover() returns them
        text = given.relative_to(root).as_posix()
    return safe_relative_path(text)


def _inside(root: Path, candidate: Path) -> Path:
    """``candidate`` with every symlink resolved; it must exist and stay under ``root``."""
    shown = candidate.relative_to(root).as_posix()
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission error
        raise UnreadableDocument(f"{shown}: cannot resolve ({exc})") from exc
    if not real.is_relative_to(root):
        raise UnsafePath(f"{shown} resolves outside the ingest root (a symlink?)")
    return real


# --- discovery ---------------------------------------------------------------------------


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        char = segment[i]
        end = segment.find("]", i + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end != -1:
            body = segment[i + 1 : end]
            negate = body.startswith("!")
            chars = "".join(c if c == "-" else re.escape(c) for c in body[negate:])
            out.append(f"[{'^' if negate else ''}{chars}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _glob(pattern: str) -> re.Pattern[str]:
    """A glob over POSIX relative paths: ``*``/``?``/``[]`` stay in a segment, ``**`` spans any."""
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    out = []
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
        else:
            out.append(_segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(out))


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(_glob(p).fullmatch(rel) for p in patterns)


def discover(
    root: Path,
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    on_skip: Callable[[PurePosixPath, str], None] | None = None,
) -> list[Path]:
    """Supported files under ``root``, as ``root / relative`` sorted by the relative path.

    ``include`` defaults to :data:`DEFAULT_INCLUDE`, ``exclude`` to
    :data:`DEFAULT_EXCLUDE` (pass ``[]`` to exclude nothing). An excluded
    directory is not descended into. Symlinked files are followed only when they
    resolve inside the root; symlinked directories are never followed (no
    loops, no duplicates). Each file passed over after matching ``include`` is
    reported to ``on_skip(path, reason)``, or logged when no callback is given.
    """
    include = DEFAULT_INCLUDE if include is None else include
    exclude = DEFAULT_EXCLUDE if exclude is None else exclude
    base = _root(root)

    def skip(rel: str, reason: str) -> None:
        if on_skip is not None:
            on_skip(PurePosixPath(rel), reason)
        else:
            logger.info("ingest: skipping %s: %s", rel, reason)

    def unlisted(exc: OSError) -> None:
        where = Path(exc.filename or base)
        skip(where.relative_to(base).as_posix(), f"cannot list ({exc.strerror})")

    found: list[str] = []
    for current, dirnames, filenames in os.walk(base, onerror=unlisted):
        here = Path(current)
        prefix = here.relative_to(base).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        kept = []
        for name in sorted(dirnames):
            rel = prefix + name
            if _matches(rel, exclude):
                continue
            if (here / name).is_symlink():
                skip(rel, "symlinked directories are not followed")
                continue
            kept.append(name)
        dirnames[:] = kept  # os.walk descends only into what is left here
        for name in sorted(filenames):
            rel = prefix + name
            if not _matches(rel, include) or _matches(rel, exclude):
                continue
            reason = _skip_reason(base, rel)
            if reason is None:
                found.append(rel)
            else:
                skip(rel, reason)
    return [Path(root, rel) for rel in sorted(found)]


def _skip_reason(base: Path, rel: str) -> str | None:
    if PurePosixPath(rel).suffix.lower() not in MEDIA_TYPES:
        return "unsupported file type"
    try:
        if safe_relative_path(rel).as_posix() != rel:
            return "name is not a plain relative path"
        real = _inside(base, base / rel)
    except (UnsafePath, UnreadableDocument) as exc:
        return exc.message
    except FileNotFoundError:
        return "broken symlink"
    if not real.is_file():
        return "not a regular file"
    return None


def _root(root: Path) -> Path:
    try:
        base = Path(root).resolve(strict=True)
    except FileNotFoundError:
        base = None
    if base is None or not base.is_dir():
        raise UnreadableDocument(f"ingest root {str(root)!r} is not a directory")
    return base


# --- loading -----------------------------------------------------------------------------


def load_file(
    root: Path, path: PurePath | str, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> LoadedDocument:
    """Read one file into a document; nothing outside ``root`` is ever opened.

    ``path`` is relative to ``root``, or a path under it such as :func:`discover`
    returns; an absolute path is accepted only inside the root.
    """
    rel = _relative_to_root(root, path)
    name = rel.as_posix()
    media_type = MEDIA_TYPES.get(rel.suffix.lower())
    if media_type is None:
        supported = ", ".join(sorted(MEDIA_TYPES))
        raise UnreadableDocument(
            f"{name}: unsupported file type {rel.suffix or '(none)'!r}; supported: {supported}",
            code="unsupported_media_type",
        )
    base = _root(root)
    try:
        real = _inside(base, base.joinpath(*rel.parts))
        data = _read_bounded(real, name, max_bytes)
    except FileNotFoundError as exc:
        raise UnreadableDocument(f"{name}: no such file under the ingest root") from exc
    if not data:
        raise UnreadableDocument(f"{name}: the file is empty")
    if media_type == "application/pdf":
        title, blocks = parse_pdf(data, name)
    else:
        text = _decode(data, name, sniff_charset=media_type == "text/html")
        if media_type == "text/markdown":
            title, blocks = parse_markdown(text)
        elif media_type == "text/html":
            title, blocks = parse_html(text)
        else:
            title, blocks = None, paragraphs(text)
    blocks = [b for b in blocks if b.text.strip()]
    if not blocks:
        raise UnreadableDocument(f"{name}: the document has no text")
    return LoadedDocument(
        path=name,
        title=title or rel.stem,
        media_type=media_type,
        blocks=blocks,
        content_hash=hashlib.sha256(data).hexdigest(),
        size=len(data),
    )


def _read_bounded(real: Path, name: str, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO must not hang; O_NOFOLLOW: a symlink swapped in after the
    # check above is refused rather than followed.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(real, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableDocument(f"{name}: cannot open ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableDocument(f"{name}: not a regular file")
        too_large = DocumentTooLarge(
            f"{name}: larger than the {max_bytes}-byte limit for one document; split it "
            "or raise the limit",
            param="max_bytes",
        )
        if info.st_size > max_bytes:
            raise too_large
        data = handle.read(max_bytes + 1)  # bounded even if the file grows meanwhile
    if len(data) > max_bytes:
        raise too_large
    return data


def _decode(data: bytes, name: str, *, sniff_charset: bool) -> str:
    """Text from bytes, strictly: binary or mis-encoded files are refused, never mangled."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        nul = data.find(b"\x00")
        if nul != -1:
            raise UnreadableDocument(f"{name}: looks binary (NUL byte at offset {nul}), not text")
        encoding = "utf-8-sig"
        declared = re.search(rb"<meta[^>]+charset\s*=\s*[\"']?([\w-]+)", data[:4096], re.I)
        if sniff_charset and declared is not None:
            # An unknown declaration leaves UTF-8, still the best guess.
            with contextlib.suppress(LookupError):
                encoding = codecs.lookup(declared.group(1).decode("ascii")).name
            if encoding == "utf-8":
                encoding = "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UnreadableDocument(
            f"{name}: not valid {encoding.removesuffix('-sig')} text (byte 0x{data[exc.start]:02x} "
            f"at offset {exc.start}); convert it to UTF-8"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


__all__ = [
    "Block",
    "BlockKind",
    "DocumentTooLarge",
    "LoadedDocument",
    "UnreadableDocument",
    "UnsafePath",
    "discover",
    "load_file",
    "safe_relative_path",
]
