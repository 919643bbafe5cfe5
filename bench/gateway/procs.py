"""Child processes of the benchmark: start pinned to a core, wait until healthy, stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


class StartError(RuntimeError):
    """A server did not come up; ``str()`` has the log tail, ``short`` one line for a table."""

    def __init__(self, short: str, log_tail: str) -> None:
        super().__init__(f"{short}\n{log_tail}")
        self.short = short


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """``cmd`` prefixed with ``taskset -c CPU`` (unchanged when cpu is None)."""
    if cpu is None:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def usable_cpus() -> tuple[int | None, int | None]:
    """(gateway core, upstream + load generator core), or (None, None) without two cores."""
    if shutil.which("taskset") is None:
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class Server:
    """A started child process (its own session, so its children stop with it)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        cmd: list[str],
        log_path: Path,
        cpu: int | None = None,
        env: dict[str, str | None] | None = None,
        cwd: Path | None = None,
    ) -> Server:
        """Start ``cmd`` (on ``cpu``); ``env`` adds variables, or removes those set to None."""
        child_env = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                pinned(cmd, cpu),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=str(cwd or REPO_ROOT),
                start_new_session=True,
            )
        return cls(name, process, log_path)

    def wait_healthy(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 2xx; stop the process and raise StartError if it
        dies or stalls."""
        try:
            self._poll_healthy(url, timeout)
        except Exception:
            self.stop()
            raise

    def _poll_healthy(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartError(
                    f"{self.name} exited with code {self.process.returncode} "
                    f"({self.last_log_line()}); log: {self.log_path}",
                    self.log_tail(),
                )
            if http_ok(url, timeout=1.0):
                return
            time.sleep(0.2)
        raise StartError(
            f"{self.name} was not healthy at {url} after {timeout:.0f} s; log: {self.log_path}",
            self.log_tail(),
        )

    def _log_lines(self) -> list[str]:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join("    " + line for line in self._log_lines()[-lines:]) or "    (empty log)"

    def last_log_line(self) -> str:
        lines = self._log_lines()
        return lines[-1].strip()[:200] if lines else "no output"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it after ``grace`` seconds."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def powertrain_bin() -> Path:
    """The ``powertrain`` CLI next to the running interpreter, else the repo's .venv."""
    beside = Path(sys.executable).parent / "powertrain"
    return beside if beside.exists() else REPO_ROOT / ".venv" / "bin" / "powertrain"


def start_powertrain(
    workdir: Path, config_text: str, cpu: int | None = None, timeout: float = 60
) -> tuple[Server, str]:
    """``powertrain serve`` with exactly ``config_text``; returns the server and its base URL."""
    config = workdir / "powertrain.toml"
    config.write_text(config_text, encoding="utf-8")
    port = free_port()
    cmd = [str(powertrain_bin()), "serve", "--config", str(config), "--port", str(port)]
    # The config file is the whole truth: no POWERTRAIN_* variable from the caller leaks in.
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("POWERTRAIN_")}
    server = Server.start("powertrain", cmd, workdir / "powertrain.log", cpu, env, cwd=workdir)
    base = f"http://127.0.0.1:{port}"
    server.wait_healthy(f"{base}/healthz", timeout=timeout)
    return server, base
