"""What makes two requests the same: the exact key and the semantic scope.

The exact key is a SHA-256 over a canonical JSON document (orjson, sorted keys)
of everything that changes what a model writes: the normalised messages, the
model (and, when given, the catalog entry behind it), every output-changing
parameter, the task name, version and pinned variant, and the tenant scope.
Fields that only change delivery or bookkeeping (``stream``, ``user``,
``metadata``, the ``cache`` option itself) are left out, so a streamed and an
unstreamed call share an entry.

Parameters are kept by *exclusion*: a request field added to the schema later
is part of the key until someone decides it is not, so a new knob can split the
cache but never make two different requests share an answer.

Normalisation is deliberately small (see docs/cache.md): text content has its
line endings unified to ``\\n`` and whitespace at both ends stripped; a content
list made only of text parts becomes the joined string (engines read it that
way); nothing is lowercased or Unicode-normalised, and interior whitespace is
kept, because it is meaningful in code, tables and poems.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from powertrain.catalog import ModelConfig
from powertrain.schemas import ChatCompletionRequest, ChatMessage

# Bump when the canonical document changes shape: old entries then simply miss.
KEY_VERSION = "v1"

# Request fields that never change the answer's content.
NON_OUTPUT_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata"})
# powertrain's per-request cache option (a body extension), should the schema carry it.
CACHE_OPTION_FIELD = "cache"

# Catalog fields that change what the upstream writes (not keys, timeouts or prices).
_MODEL_IDENTITY_FIELDS = ("engine", "model", "base_url", "params", "options")

# The scope every tenant shares when a policy sets ``shared_across_keys``.
SHARED_SCOPE = "*"
ANONYMOUS_SCOPE = "-"


@dataclass(frozen=True)
class TaskRef:
    """The task a call runs: its name, the resolved version, and a pinned variant if any."""

    name: str
    version: int | str
    variant: str | None = None


@dataclass
class RequestFingerprint:
    """Everything the cache needs to know about one request, computed once.

    ``semantic_text`` is the last user message (normalised), or ``None`` when
    the request cannot be matched by meaning (the last message is not a user's,
    or it carries non-text parts). ``semantic_scope`` hashes everything else,
    so only that one message is ever compared fuzzily.
    """

    exact_key: str
    semantic_scope: str
    semantic_text: str | None
    tenant: str
    temperature: float | None
    seed: int | None
    # The embedding a lookup computed, reused by ``store`` so one call embeds once.
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)


def fingerprint(
    request: ChatCompletionRequest,
    *,
    api_key_id: str | None,
    model: str | None = None,
    model_config: ModelConfig | None = None,
    task: TaskRef | None = None,
    shared_across_keys: bool = False,
    semantic_model: str | None = None,
) -> RequestFingerprint:
    """The exact key and semantic scope of ``request``.

    Call it on the request *after* the catalog's default params are applied,
    so a changed default changes the key. ``model`` defaults to the request's
    own (an alias, or ``task:<name>``); ``model_config`` adds the catalog entry
    behind the alias, so repointing an alias at another model invalidates it.
    """
    tenant = SHARED_SCOPE if shared_across_keys else (api_key_id or ANONYMOUS_SCOPE)
    messages = [normalise_message(m) for m in request.messages]
    context: dict[str, Any] = {
        "model": model or request.model,
        "catalog": model_identity(model_config) if model_config is not None else None,
        "params": output_params(request),
        "task": _task_doc(task),
        "tenant": tenant,
    }
    exact_key = _digest({"v": KEY_VERSION, "kind": "exact", "messages": messages, **context})

    semantic_text: str | None = None
    head = messages
    last = request.messages[-1]
    if last.role == "user":
        last_doc = messages[-1]
        if isinstance(last_doc.get("content"), str) and last_doc["content"]:
            semantic_text = last_doc["content"]
            # The rest of the last message (its name) still has to match exactly.
            head = [*messages[:-1], {k: v for k, v in last_doc.items() if k != "content"}]
    semantic_scope = _digest(
        {
            "v": KEY_VERSION,
            "kind": "semantic",
            "messages": head,
            "embedder": semantic_model,
            **context,
        }
    )
    return RequestFingerprint(
        exact_key=f"{KEY_VERSION}:{exact_key}",
        semantic_scope=f"{KEY_VERSION}:{semantic_scope}",
        semantic_text=semantic_text,
        tenant=tenant,
        temperature=request.temperature,
        seed=request.seed,
    )


def normalise_text(text: str) -> str:
    """Unify line endings and strip whitespace at both ends; nothing else."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def normalise_message(message: ChatMessage) -> dict[str, Any]:
    """A message as a plain document: every field it sets, with its content normalised."""
    doc = message.model_dump(exclude_none=True, mode="json")
    content = message.content
    if isinstance(content, list):
        parts = [part.model_dump(exclude_none=True, mode="json") for part in content]
        if all(part.get("type") == "text" for part in parts):
            doc["content"] = normalise_text("".join(part.get("text") or "" for part in parts))
        else:
            for part in parts:
                if part.get("type") == "text" and isinstance(part.get("text"), str):
                    part["text"] = normalise_text(part["text"])
            doc["content"] = parts
    elif isinstance(content, str):
        doc["content"] = normalise_text(content)
    return doc


def output_params(request: ChatCompletionRequest) -> dict[str, Any]:
    """The request's output-changing parameters, with equivalent spellings made equal."""
    params = request.model_dump(
        exclude=set(NON_OUTPUT_FIELDS), exclude_none=True, mode="json", by_alias=True
    )
    params.pop(CACHE_OPTION_FIELD, None)
    # max_completion_tokens is the newer name of max_tokens; the engines read either.
    params.pop("max_completion_tokens", None)
    params.pop("max_tokens", None)
    if request.max_output_tokens is not None:
        params["max_tokens"] = request.max_output_tokens
    # Any stop sequence ends the answer wherever it appears first, so order is noise.
    params.pop("stop", None)
    if request.stop_list:
        params["stop"] = sorted(set(request.stop_list))
    if params.get("n") == 1:
        del params["n"]
    if request.response_format is not None and request.response_format.type == "text":
        del params["response_format"]
    return params


def model_identity(model: ModelConfig) -> dict[str, Any]:
    """The parts of a catalog entry that change what the upstream writes."""
    return {name: getattr(model, name) for name in _MODEL_IDENTITY_FIELDS}


def _task_doc(task: TaskRef | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {"name": task.name, "version": task.version, "variant": task.variant}


def _digest(doc: dict[str, Any]) -> str:
    # ``default=str`` covers catalog values TOML can hold but JSON cannot (dates, say).
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str)
    return hashlib.sha256(data).hexdigest()
