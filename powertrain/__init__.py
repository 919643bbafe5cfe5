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
    OutputInvalid,
    PowertrainError,
    RateLimited,
    TaskNotFound,
    UpstreamError,
    UpstreamTimeout,
)
from powertrain.tasks import TaskResult

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
    "OutputInvalid",
    "PowertrainError",
    "RateLimited",
    "Reply",
    "TaskNotFound",
    "TaskResult",
    "UpstreamError",
    "UpstreamTimeout",
    "__version__",
]
