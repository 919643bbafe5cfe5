"""Run wrk with ``chat.lua`` against one endpoint and read its JSON summary."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.gateway.procs import pinned
from bench.gateway.targets import Endpoint

LUA_SCRIPT = Path(__file__).with_name("chat.lua")
INSTALL_HINT = "apt-get update && apt-get install -y wrk"
_MARK = "BENCH_JSON "


class WrkError(RuntimeError):
    pass


@dataclass(frozen=True)
class Sample:
    """One wrk run: successful requests/s, latency percentiles (ms) and failed requests."""

    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    endpoint: Endpoint,
    concurrency: int,
    seconds: float,
    cpu: int | None,
    stream: bool = False,
    timeout_s: int = 10,
) -> Sample:
    """Load ``endpoint`` with ``concurrency`` keep-alive connections for ``seconds``."""
    exe = wrk_path()
    if exe is None:
        raise WrkError(f"wrk is not installed; install it with: {INSTALL_HINT}")
    cmd = pinned(
        [
            exe, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s", "-s", str(LUA_SCRIPT), endpoint.url,
            "--", endpoint.model, endpoint.api_key, "1" if stream else "0",
        ],
        cpu,
    )  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(_MARK)), None)
    if result.returncode != 0 or line is None:
        raise WrkError(
            f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
        )
    data = json.loads(line[len(_MARK) :])
    latency = data["latency_us"]
    seconds_run = data["duration_us"] / 1e6
    errors = sum(int(v) for v in data["errors"].values())
    ok = int(data["requests"]) - int(data["errors"]["status"])  # non-2xx answers don't count
    return Sample(
        concurrency=concurrency,
        requests=int(data["requests"]),
        seconds=round(seconds_run, 3),
        rps=ok / seconds_run if seconds_run > 0 else 0.0,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        errors=errors,
    )
