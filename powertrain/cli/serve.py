"""``powertrain serve``."""

from __future__ import annotations

import ipaddress
import logging
import socket

import click

from powertrain.cli._common import config_option, err_console, friendly_errors, load
from powertrain.errors import ConfigError


def _check_port_free(host: str, port: int) -> None:
    """Fail in one line before loading anything when the address is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise ConfigError(f"cannot resolve host {host!r}; pass an address to --host") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}); stop the other server "
                "or choose another --port"
            ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default 8080).")
@config_option
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every request line (costs throughput).",
)
@friendly_errors
def serve(
    host: str | None,
    port: int | None,
    config_path: str | None,
    log_level: str,
    access_log: bool,
) -> None:
    """Start the OpenAI-compatible server (POST /v1/chat/completions, docs at /docs)."""
    from powertrain.server import create_app
    from powertrain.server.runner import serve as run_server

    config = load(config_path)
    settings = config.settings
    host = host or settings.host
    port = settings.port if port is None else port
    if not settings.admin_key:
        # Without authentication only this machine may call: never bind beyond it.
        if not _is_loopback(host):
            raise ConfigError(
                f"refusing to serve on {host} without authentication: set "
                "POWERTRAIN_ADMIN_KEY, or bind 127.0.0.1"
            )
        if not settings.allow_unauthenticated:
            raise ConfigError(
                "refusing to serve without authentication (allow_unauthenticated = false): "
                "set POWERTRAIN_ADMIN_KEY"
            )
    if port:
        _check_port_free(host, port)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    where = config.path or "no powertrain.toml (defaults)"
    err_console.print(
        f"powertrain on http://{host}:{port}  store={app.gateway.database.describe()}  "
        f"config={where}  auth={'on' if settings.admin_key else 'off (this machine only)'}"
    )
    run_server(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        graceful_seconds=settings.shutdown_grace,
    )
