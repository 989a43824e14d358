"""A deterministic stand-in backend: answers come from a Python function.

Tests and dry runs use it to drive Step 1 and training without a model.
"""

from __future__ import annotations

from collections.abc import Callable

from vera.vlm.backends.base import VLMAnswer, VLMRequest


class ScriptedBackend:
    """Answers each request with ``respond(request)``; records every request it saw."""

    name = "scripted"

    def __init__(self, respond: Callable[[VLMRequest], str | VLMAnswer]):
        self.respond = respond
        self.requests: list[VLMRequest] = []
        self.batch_sizes: list[int] = []

    def generate(self, requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        self.requests.extend(requests)
        self.batch_sizes.append(len(requests))
        answers = [self.respond(request) for request in requests]
        return [answer if isinstance(answer, VLMAnswer) else VLMAnswer(text=answer) for answer in answers]

    def describe(self) -> dict:
        return {"backend": self.name}
