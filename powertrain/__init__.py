"""powertrain: turn any LLM into a product.

>>> import powertrain
>>> client = powertrain.Client()          # the embedded default: bundled model, SQLite
>>> client.chat("What is the capital of France?").text
"""

__version__ = "0.1.0"

from powertrain.client import AsyncClient, Client, Reply
from powertrain.errors import (
    AuthenticationError,
    ConfigError,
    ContextWindowExceeded,
    EngineError,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
    PowertrainError,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConfigError",
    "ContextWindowExceeded",
    "EngineError",
    "EngineOverloaded",
    "InvalidRequest",
    "ModelNotFound",
    "PowertrainError",
    "RateLimited",
    "Reply",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
]
