"""LiteLLM's proxy in its own virtual environment (``bench/.litellm-venv``), made on first use.

The pinned release is installed with the requirements of its ``[proxy]`` extra.
``pip install 'litellm[proxy]'`` is tried first; when the index lacks one of
that extra's exact companion pins (``litellm-proxy``, a meta-package whose code
already ships inside the ``litellm`` wheel, or the exact ``litellm-proxy-extras``
/ ``litellm-enterprise`` builds, which hold DB migrations and enterprise hooks
that a DB-less proxy never loads), the extra's requirements are installed one
by one with those pins relaxed to the newest published build.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.gateway.procs import REPO_ROOT

LITELLM_VERSION = "1.110.2"
VENV_DIR = REPO_ROOT / "bench" / ".litellm-venv"

# Companion packages of the [proxy] extra pinned to an exact build; see the module docstring.
_DROP = {"litellm-proxy"}
_UNPIN = {"litellm-proxy-extras", "litellm-enterprise"}

_LIST_PROXY_REQUIREMENTS = f"""
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("litellm") or []:
    req = Requirement(line)
    if req.marker is None or not req.marker.evaluate({{"extra": "proxy"}}):
        continue
    if req.marker.evaluate({{"extra": ""}}) or req.name in {sorted(_DROP)!r}:
        continue
    req.marker = None
    print(req.name if req.name in {sorted(_UNPIN)!r} else str(req))
"""


def litellm_bin() -> Path:
    return VENV_DIR / "bin" / "litellm"


def python_bin() -> Path:
    return VENV_DIR / "bin" / "python"


def installed_version() -> str | None:
    if not python_bin().exists() or not litellm_bin().exists():
        return None
    result = subprocess.run(
        [str(python_bin()), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(python_bin()), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def ensure_litellm(say: Callable[[str], None] = print) -> Path:
    """Path of the ``litellm`` CLI at the pinned version, installing it if needed."""
    if installed_version() == LITELLM_VERSION:
        return litellm_bin()
    say(f"installing litellm[proxy]=={LITELLM_VERSION} into {VENV_DIR} (first run, ~1 min)…")
    if not python_bin().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    full = _pip(f"litellm[proxy]=={LITELLM_VERSION}")
    if full.returncode != 0:
        base = _pip(f"litellm=={LITELLM_VERSION}")
        if base.returncode != 0:
            raise RuntimeError(f"pip install litellm=={LITELLM_VERSION} failed:\n{base.stderr}")
        listed = subprocess.run(
            [str(python_bin()), "-c", _LIST_PROXY_REQUIREMENTS],
            capture_output=True,
            text=True,
            check=True,
        )
        requirements = [line for line in listed.stdout.splitlines() if line.strip()]
        say(
            f"  [proxy] extra unresolvable as pinned; installing its {len(requirements)} "
            f"requirements with {', '.join(sorted(_DROP | _UNPIN))} relaxed"
        )
        extra = _pip(f"litellm=={LITELLM_VERSION}", *requirements)
        if extra.returncode != 0:
            raise RuntimeError(f"installing LiteLLM's proxy requirements failed:\n{extra.stderr}")
    if installed_version() != LITELLM_VERSION:
        raise RuntimeError(f"litellm {LITELLM_VERSION} is not importable in {VENV_DIR}")
    return litellm_bin()
