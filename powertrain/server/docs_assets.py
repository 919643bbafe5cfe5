"""Swagger UI's files from the installed ``swagger-ui-bundle`` package (docs work offline)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from powertrain.errors import NotFound
from powertrain.server.auth import Access, policy

router = APIRouter()

_FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "application/javascript",
}


def _assets_dir() -> Path | None:
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    return Path(swagger_ui_path)


@router.get("/docs/static/{name}", dependencies=[policy(Access.PUBLIC)], include_in_schema=False)
async def asset(name: str) -> FileResponse:
    # A fixed allow-list: the name never reaches the filesystem unchecked.
    media_type = _FILES.get(name)
    folder = _assets_dir()
    if media_type is None or folder is None or not (folder / name).is_file():
        raise NotFound(f"no docs asset {name!r}; install swagger-ui-bundle for the docs page")
    return FileResponse(folder / name, media_type=media_type)
