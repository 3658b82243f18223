"""FakeUpstream: a tiny real ASGI app standing in for llama.cpp's OpenAI routes.

It is a fake (fixed answers, no model): it serves ``/v1/models``,
``/v1/chat/completions`` and ``/v1/completions`` in the shapes llama.cpp and
vLLM use (LoRA adapters listed as vLLM lists them: ``parent``, ``root``), streams server-sent events when asked to, and records what it
received so tests can check what the gateway forwarded (and did not).
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODELS = ("gemma", "mistral", "legal-lora", "secret-model")
PROMPT_TOKENS = 7
ANSWER = ("The", " model", " runs", " on", " site", ".")


class FakeUpstream:
    def __init__(
        self, *, models: tuple[str, ...] = MODELS, adapters: dict[str, str] | None = None
    ) -> None:
        self.models = models
        self.adapters = adapters or {}  # adapter name -> the parent it is listed with
        self.received: list[dict[str, Any]] = []  # path, headers, body of each generation call
        # When set, a stream sends its first event and then waits until `release` is set.
        self.hold_after_first: bool = False
        self.release = threading.Event()
        self.stream_closed = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._generate, methods=["POST"]),
                Route("/v1/completions", self._generate, methods=["POST"]),
            ]
        )

    async def _models(self, request: Request) -> Response:
        data: list[dict[str, Any]] = [
            {"id": m, "object": "model", "owned_by": "me"} for m in self.models
        ]
        data += [
            {"id": a, "object": "model", "owned_by": "vllm", "root": f"/srv/adapters/{a}",
             "parent": parent}
            for a, parent in self.adapters.items()
        ]  # fmt: skip
        return JSONResponse({"object": "list", "data": data})

    async def _generate(self, request: Request) -> Response:
        body = await request.body()
        self.received.append(
            {"path": request.url.path, "headers": dict(request.headers), "body": body}
        )
        payload = json.loads(body)
        if payload.get("model") not in (*self.models, *self.adapters):
            return JSONResponse({"error": {"message": "no such model", "code": 404}}, 404)
        chat = request.url.path.endswith("chat/completions")
        if payload.get("stream"):
            usage = bool((payload.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                self._events(payload["model"], chat, usage), media_type="text/event-stream"
            )
        content = "".join(ANSWER)
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": content}}
            if chat
            else {"index": 0, "text": content}
        )
        return JSONResponse(
            {
                "id": "fake-1",
                "object": "chat.completion" if chat else "text_completion",
                "model": payload["model"],
                "choices": [choice],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": len(ANSWER),
                    "total_tokens": PROMPT_TOKENS + len(ANSWER),
                },
            }
        )

    async def _events(self, model: str, chat: bool, usage: bool) -> AsyncIterator[str]:
        try:
            for i, piece in enumerate(ANSWER):
                delta = {"delta": {"content": piece}} if chat else {"text": piece}
                chunk = {"id": "fake-1", "model": model, "choices": [{"index": 0, **delta}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                if i == 0 and self.hold_after_first:
                    while not self.release.is_set():
                        await anyio.sleep(0.01)
            if usage:
                final = {
                    "id": "fake-1",
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": len(ANSWER),
                        "total_tokens": PROMPT_TOKENS + len(ANSWER),
                    },
                }
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            self.stream_closed.set()
