"""Eval runner overhead per case: ``powertrain eval run`` vs promptfoo, same cases, same endpoint.

    .venv/bin/python -m bench.evals [--cases 300] [--concurrency 4] [--promptfoo DIR] [--json -]

Both tools run as a user runs them (a CLI process each) against the same fast
fake OpenAI-compatible upstream (``bench/gateway/upstream.py``, instant
precomputed answers), with the same cases (``{{ q }}`` prompts), the same
assertion (the answer contains "help"), the same concurrency and no cache.
Each tool runs once to warm up, then ``--repeat`` times with 1 case and with N
cases (the fastest of each kept); the difference divided by N - 1 is the
marginal wall and CPU time per case, with the process start-up (Python
imports, Node start) taken out. CPU time is the child process's user + system
time (``RUSAGE_CHILDREN``).

promptfoo is the npm package, installed beforehand into ``--promptfoo DIR``
(``npm install --prefix DIR promptfoo``); the script prints that line when
it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.gateway.procs import REPO_ROOT, free_port, http_ok
from bench.results import add_json_option, publish

VENV_BIN = REPO_ROOT / ".venv" / "bin"


def _measure(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 100):  # promptfoo exits 100 when a test fails
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "stdout": done.stdout}  # type: ignore[dict-item]


def _powertrain(work: Path, upstream: str, n: int, concurrency: int) -> dict[str, Any]:
    (work / "powertrain.toml").write_text(
        f'[models.bench]\nengine = "openai"\nmodel = "bench-model"\n'
        f'base_url = "{upstream}/v1"\napi_key = "sk-bench"\n',
        encoding="utf-8",
    )
    cases = "\n".join(f"    - vars: {{q: 'question {i}'}}" for i in range(n))
    (work / "suite.yaml").write_text(
        f"name: bench-{n}\nconcurrency: {concurrency}\ndataset:\n  cases:\n{cases}\n"
        "targets:\n  - model: bench\n    prompt: '{{ q }}'\n"
        "assert:\n  - type: icontains\n    value: help\n",
        encoding="utf-8",
    )
    env = {**os.environ, "POWERTRAIN_HOME": str(work / "home")}
    cmd = [str(VENV_BIN / "powertrain"), "eval", "run", "suite.yaml", "--new", "--json"]
    out = _measure(cmd, work, env)
    body = json.loads(str(out.pop("stdout")))
    assert body["results"] == n and body["pass_rate"] == 1.0, body
    return out


def _promptfoo(work: Path, upstream: str, n: int, concurrency: int, pf: Path) -> dict[str, Any]:
    tests = "\n".join(f"  - vars: {{q: 'question {i}'}}" for i in range(n))
    (work / "promptfooconfig.yaml").write_text(
        "prompts: ['{{q}}']\nproviders:\n  - id: openai:chat:bench-model\n    config:\n"
        f"      apiBaseUrl: {upstream}/v1\n      apiKey: sk-bench\n"
        "defaultTest:\n  assert:\n    - type: icontains\n      value: help\n"
        f"tests:\n{tests}\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "PROMPTFOO_DISABLE_TELEMETRY": "1",
        "PROMPTFOO_DISABLE_UPDATE": "1",
        "PROMPTFOO_CONFIG_DIR": str(work / "pf-home"),
        "OPENAI_API_KEY": "sk-bench",
    }
    cmd = [
        str(pf / "node_modules" / ".bin" / "promptfoo"),
        "eval",
        "-c",
        "promptfooconfig.yaml",
        "--no-cache",
        "--no-progress-bar",
        "--max-concurrency",
        str(concurrency),
        "--no-write",
        "-o",
        "out.json",
    ]
    out = _measure(cmd, work, env)
    out.pop("stdout")
    results = json.loads((work / "out.json").read_text())["results"]
    stats = results.get("stats", {})
    assert stats.get("successes") == n, stats
    return out


def _per_case(small: dict[str, float], large: dict[str, float], n: int) -> dict[str, float]:
    return {
        "wall_ms_per_case": (large["wall_s"] - small["wall_s"]) / (n - 1) * 1000,
        "cpu_ms_per_case": (large["cpu_s"] - small["cpu_s"]) / (n - 1) * 1000,
        "startup_wall_s": small["wall_s"],
        f"wall_s_{n}": large["wall_s"],
        f"cpu_s_{n}": large["cpu_s"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each size (fastest kept).")
    parser.add_argument("--promptfoo", type=Path, default=Path("bench/.promptfoo"))
    parser.add_argument("--only", default="powertrain,promptfoo")
    add_json_option(parser)
    args = parser.parse_args(argv)
    only = args.only.split(",")
    if (
        "promptfoo" in only
        and not (args.promptfoo / "node_modules" / ".bin" / "promptfoo").exists()
    ):
        sys.exit(f"promptfoo is not installed: npm install --prefix {args.promptfoo} promptfoo")
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.gateway.upstream", "--port", str(port)], cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 20
        while not http_ok(upstream + "/health"):
            if time.monotonic() > deadline:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.05)
        document: dict[str, Any] = {
            "cases": args.cases,
            "concurrency": args.concurrency,
            "repeat": args.repeat,
            "targets": {},
        }
        for name in only:

            def once(n: int, name: str = name) -> dict[str, float]:
                with tempfile.TemporaryDirectory() as tmp:
                    work = Path(tmp)
                    if name == "powertrain":
                        return _powertrain(work, upstream, n, args.concurrency)
                    pf = args.promptfoo.resolve()
                    return _promptfoo(work, upstream, n, args.concurrency, pf)

            once(1)  # warm-up: file caches, compiled bytecode
            # The fastest of --repeat runs of each size: the least disturbed by other work.
            runs = [
                min((once(n) for _ in range(args.repeat)), key=lambda r: r["wall_s"])
                for n in (1, args.cases)
            ]
            document["targets"][name] = _per_case(runs[0], runs[1], args.cases)
    finally:
        server.terminate()
        server.wait(timeout=10)

    def table() -> str:
        lines = [
            f"{args.cases} cases, concurrency {args.concurrency}",
            f"{'tool':<12}{'wall ms/case':>14}{'CPU ms/case':>13}{'start-up s':>12}{'total s':>10}",
        ]
        for name, t in document["targets"].items():
            lines.append(
                f"{name:<12}{t['wall_ms_per_case']:>14.2f}{t['cpu_ms_per_case']:>13.2f}"
                f"{t['startup_wall_s']:>12.2f}{t[f'wall_s_{args.cases}']:>10.2f}"
            )
        return "\n".join(lines)

    publish(document, "evals", table, args.json)


if __name__ == "__main__":
    main()
