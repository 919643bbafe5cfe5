"""The web UI served by ``powertrain serve``: server-rendered pages, a little plain script.

A shell like ``server/``: it reads and writes only through the library (the
store, the feedback and dataset services, the gateway), with the same scoping
as the HTTP API. See ``docs/ui.md``.
"""

from powertrain.ui.render import NAV, NavEntry, UIRoute, page
from powertrain.ui.routes import router
from powertrain.ui.session import AdminViewer, Viewer, ui_policy

__all__ = ["NAV", "AdminViewer", "NavEntry", "UIRoute", "Viewer", "page", "router", "ui_policy"]
