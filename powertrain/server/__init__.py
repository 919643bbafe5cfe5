"""The HTTP server: a thin shell over the Gateway (the library never imports this)."""

from powertrain.server.app import create_app

__all__ = ["create_app"]
