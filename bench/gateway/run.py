"""Gateway overhead benchmark: powertrain vs a bare proxy, LiteLLM and direct calls.

Run (from the repository root):

    make bench-gateway                      # = .venv/bin/python -m bench.gateway
    .venv/bin/python bench/gateway/run.py --only direct,bare --duration 3
    .venv/bin/python -m bench.gateway --json > result.json

What it does, in one run: starts a fast fake OpenAI-compatible upstream
(``upstream.py``, instant precomputed answers, SSE streaming too) and, one
after the other, each target in front of it:

- ``direct``     the client calls the upstream itself (the baseline);
- ``bare``       a bare pass-through ASGI proxy on uvicorn + uvloop + httptools
                 with one pooled aiohttp session (the floor for this HTTP stack);
- ``litellm``    LiteLLM's proxy (pinned, own venv in bench/.litellm-venv, made on
                 first run), one worker, a master key, no database;
- ``powertrain`` ``powertrain serve`` with tracing on (skipped with a reason if it
                 does not start).

For each target it runs wrk (a warm-up, then ``--duration`` seconds per cell)
at concurrency 1, 8, 32 and 64 with a chat-completions POST, plus streaming
cells at 1 and 32, and prints one table: p50/p99 latency at concurrency 1,
added latency (target minus direct), requests/s per concurrency, and ratios of
powertrain to the bare proxy and to LiteLLM. The gateway runs on one core
(``taskset -c 0``), the upstream and wrk on the other. Everything listens on
127.0.0.1 only. Needs ``wrk`` (``apt-get update && apt-get install -y wrk``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench.gateway`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence

from bench.gateway import probe, wrk
from bench.gateway.measure import Plan, TargetResult, measure
from bench.gateway.procs import REPO_ROOT, Server, StartError, free_port, usable_cpus
from bench.gateway.report import render_table, to_json
from bench.gateway.targets import STARTERS, TARGET_NAMES, Context, Running
from bench.results import add_json_option, publish


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _levels(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Measure added latency and req/s of powertrain, a bare proxy and LiteLLM.",
    )
    parser.add_argument(
        "--only",
        default=",".join(TARGET_NAMES),
        help="comma-separated targets (default: %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="whole seconds per cell (default 5)"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell")
    parser.add_argument(
        "--concurrency",
        type=_levels,
        default=(1, 8, 32, 64),
        help="non-streaming levels (default 1,8,32,64)",
    )
    parser.add_argument(
        "--stream-concurrency",
        type=_levels,
        default=(1, 32),
        help="streaming levels (default 1,32; empty string to skip)",
    )
    parser.add_argument("--no-stream", action="store_true", help="skip the streaming cells")
    add_json_option(parser)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown or not names:
        parser.error(f"--only takes some of {','.join(TARGET_NAMES)} (got {args.only!r})")
    args.targets = [n for n in TARGET_NAMES if n in names]
    if args.no_stream:
        args.stream_concurrency = ()
    return args


def start_upstream(workdir: Path, cpu: int | None) -> tuple[Server, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "bench.gateway.upstream", "--port", str(port)]
    server = Server.start("upstream", cmd, workdir / "upstream.log", cpu)
    base = f"http://127.0.0.1:{port}"
    server.wait_healthy(f"{base}/healthz", timeout=20)
    return server, base


def run_target(name: str, ctx: Context, plan: Plan) -> TargetResult:
    result = TargetResult(name)
    say(f"[{name}] starting…")
    try:
        running: Running = STARTERS[name](ctx)
    except StartError as exc:
        result.skipped = f"did not start: {exc.short}"
        say(f"[{name}] skipped: {exc}")
        return result
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.skipped = f"did not start: {exc}"
        say(f"[{name}] skipped: {exc}")
        return result
    result.version = running.version
    try:
        problem = probe.check_chat(running.endpoint, stream=False)
        if problem:
            result.skipped = f"probe request failed: {problem}"
            say(f"[{name}] skipped: {result.skipped}")
            return result
        if plan.stream_concurrency:
            problem = probe.check_chat(running.endpoint, stream=True)
            if problem:
                result.note = f"streaming cells skipped, probe failed: {problem}"
                say(f"[{name}] {result.note}")
                plan = dataclasses.replace(plan, stream_concurrency=())
        measure(running.endpoint, plan, result, say)
    except wrk.WrkError as exc:
        result.skipped = f"wrk failed: {exc}"
        say(f"[{name}] {result.skipped}")
    finally:
        running.stop()
    traces = running.stored_traces()
    if traces is not None:
        stored = f"{traces:,} traces stored for {result.answered:,} answered requests"
        result.note = f"{stored}; {result.note}" if result.note else stored
    return result


def machine_meta(gateway_cpu: int | None, client_cpu: int | None) -> dict[str, object]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "gateway_cpu": gateway_cpu,
        "client_cpu": client_cpu,
        "wrk": wrk.wrk_path(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk.wrk_path() is None:
        say(f"wrk is not installed. Install it with:\n    {wrk.INSTALL_HINT}")
        return 2
    gateway_cpu, client_cpu = (None, None) if args.no_pin else usable_cpus()
    if gateway_cpu is None and not args.no_pin:
        say("note: fewer than 2 usable cores (or no taskset); running unpinned")
    plan = Plan(
        concurrency=args.concurrency,
        stream_concurrency=args.stream_concurrency,
        seconds=args.duration,
        warmup=args.warmup,
        client_cpu=client_cpu,
    )
    workdir = Path(tempfile.mkdtemp(prefix="powertrain-bench-"))
    say(f"work dir (configs, logs): {workdir}")
    results: dict[str, TargetResult] = {}
    upstream, base = start_upstream(workdir, client_cpu)
    try:
        ctx = Context(upstream=base, gateway_cpu=gateway_cpu, workdir=workdir, say=say)
        say(f"upstream: {base} (cpu {client_cpu}); gateways on cpu {gateway_cpu}")
        for name in args.targets:
            results[name] = run_target(name, ctx, plan)
    finally:
        upstream.stop()
    document = to_json(results, plan, machine_meta(gateway_cpu, client_cpu))
    saved = publish(document, "gateway", lambda: render_table(results, plan), args.json)
    say(f"results saved to {saved.relative_to(REPO_ROOT)}")
    if args.keep or any(r.skipped for r in results.values()):
        say(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
