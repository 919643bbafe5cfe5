"""One real request before measuring: a cell counts only answers that are right."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from bench.gateway.targets import Endpoint

PROBE_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


def check_chat(endpoint: Endpoint, stream: bool, timeout: float = 30.0) -> str | None:
    """None if a chat completion through ``endpoint`` works, else what went wrong."""
    body: dict[str, object] = {"model": endpoint.model, "messages": PROBE_MESSAGES}
    if stream:
        body["stream"] = True
    request = urllib.request.Request(
        endpoint.url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {endpoint.api_key}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:300]
        return f"HTTP {exc.code}: {detail}"
    except (urllib.error.URLError, OSError) as exc:
        return f"request failed: {exc}"
    if status != 200:
        return f"HTTP {status}: {text[:300]}"
    if stream:
        if "data: [DONE]" not in text or "chat.completion.chunk" not in text:
            return f"not an SSE chat stream: {text[:300]!r}"
        return None
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat.completion: {text[:300]!r}"
    return None if content else f"empty answer: {text[:300]!r}"
