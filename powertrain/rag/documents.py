"""The shapes ingestion produces (documents made of blocks) and the ways a file is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from powertrain.errors import InvalidRequest, RequestTooLarge

BlockKind = Literal["heading", "paragraph", "code", "list", "table", "quote"]
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
MEDIA_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}
# Patterns match the path relative to the root; "**/" makes them apply at any depth.
DEFAULT_INCLUDE = ["**/*"]
DEFAULT_EXCLUDE = [
    "**/.*",  # hidden files and directories: .git, .venv, editor swap files, .env
    "**/node_modules",
    "**/__pycache__",
    "**/venv",
]


class UnsafePath(InvalidRequest):
    """A path that could reach outside the ingest root; nothing was read."""

    code = "unsafe_path"


class UnreadableDocument(InvalidRequest):
    """A file we will not index: not text, corrupt, encrypted, empty or unsupported."""

    code = "unreadable_document"


class DocumentTooLarge(UnreadableDocument, RequestTooLarge):
    status_code = 413
    code = "document_too_large"


@dataclass(frozen=True, slots=True)
class Block:
    """One structural unit of a document; ``level`` is set for headings, ``page`` for PDFs."""

    text: str
    kind: BlockKind = "paragraph"
    level: int | None = None
    page: int | None = None


@dataclass(frozen=True, slots=True)
class LoadedDocument:
    path: str  # relative to the ingest root, POSIX separators
    title: str
    media_type: str
    blocks: list[Block]
    content_hash: str  # sha256 of the raw bytes: unchanged files can skip re-embedding
    size: int
