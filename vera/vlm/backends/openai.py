"""The ``openai`` backend: Step 1 and training against OpenAI-compatible chat servers.

Any server with ``POST /v1/chat/completions`` and image inputs will do (vLLM,
SGLang, LMDeploy, ``transformers serve``; docs/models.md). Several
servers are used at once: every server gets at most ``concurrency`` requests
in flight, and whichever has a free slot takes the next request of the batch.

How a request becomes a chat message: the prompt is split at its ``<image>``
placeholders into one user turn of text and ``image_url`` items, each frame a
base64 PNG (lossless: the server sees the pixels the ``hf`` backend sees) or
JPEG data URL where its placeholder stood, so each frame is its own image.
The ``released`` frame layout (every frame inside one image block at the
first placeholder, the other placeholders left as text) has no such
expression and is refused.

Decoding is greedy (``temperature`` 0) up to ``max_tokens``. The label
probability comes from the server's ``logprobs`` where it returns them (vLLM,
SGLang): at the last generated ``0``/``1`` token, P(1) / (P(0) + P(1)) over
the top alternatives, a label outside them counting as 0. A server that
returns none (``transformers serve`` ignores the field) gives ``None``.

Failures: a refused connection, a dropped connection, a timeout, HTTP 408,
429 or 5xx is retried. The server that failed rests 1, 2, 4, … up to 60 s
(doubling with each failure in a row) before it takes work again, while the
other servers go on; a request is given up, and the batch with it, after
``retries`` retries. Any other answer (a wrong model name, a request the
server rejects) stops at once with the server's message. A request whose
answer was lost may be computed twice by the servers, but ``generate``
returns exactly one answer per request, in request order, so Step 1 records
each segment once.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vera.errors import VeraError
from vera.vlm.backends.base import IMAGE_PLACEHOLDER, VLMAnswer, VLMRequest

LABELS = ("0", "1")
TOP_LOGPROBS = 5
RETRY_STATUSES = frozenset({408, 429})
MAX_BACKOFF = 60.0
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ServerSettings:
    """Where the servers are and how hard to press them (``--base-url``, ``--concurrency``, …)."""

    base_urls: tuple[str, ...]
    concurrency: int = 8
    timeout: float = 600.0
    retries: int = 8
    image_format: str = "png"
    backoff: float = 1.0  # seconds before the first retry; tests make it short


def backoff_delay(failures: int, base: float, cap: float = MAX_BACKOFF) -> float:
    """The rest after ``failures`` failures in a row: base, 2·base, 4·base, … at most ``cap``."""
    return min(cap, base * 2.0 ** (failures - 1))


def image_data_url(image: np.ndarray, image_format: str) -> str:
    """An RGB ``uint8`` frame as a ``data:`` URL (PNG level 1: lossless and fast; JPEG quality 95)."""
    from PIL import Image

    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=95)
    return f"data:image/{image_format};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def chat_content(request: VLMRequest, image_format: str) -> list[dict]:
    """The user turn: text and one ``image_url`` item per ``<image>``, in prompt order."""
    pieces = request.prompt.split(IMAGE_PLACEHOLDER)
    content: list[dict] = [{"type": "text", "text": pieces[0]}]
    for image, piece in zip(request.images, pieces[1:], strict=True):
        content.append({"type": "image_url", "image_url": {"url": image_data_url(image, image_format)}})
        content.append({"type": "text", "text": piece})
    return [item for item in content if item.get("text") != ""]


def check_request(request: VLMRequest) -> None:
    """Refuse what chat messages cannot carry, before anything is sent."""
    if request.image_block and request.images:
        raise VeraError(f"{request.key}: the openai backend sends each frame as its own image and cannot express "
                        "the 'released' frame layout (all frames in one block); use --frame-layout per-frame")
    placeholders = request.prompt.count(IMAGE_PLACEHOLDER)
    if placeholders != len(request.images):
        raise VeraError(f"{request.key}: {placeholders} {IMAGE_PLACEHOLDER} placeholders "
                        f"for {len(request.images)} images")


def _label_of(token: object) -> str | None:
    """``"0"``/``"1"`` for a token that is exactly a label (a leading space or word marker allowed)."""
    if not isinstance(token, str):
        return None
    text = token.strip().lstrip("\u2581\u0120")  # SentencePiece and byte-level BPE word markers
    return text if text in LABELS else None


def label_probability(logprobs: object) -> float | None:
    """P(1) / (P(0) + P(1)) at the last generated label token, from a chat ``logprobs`` object."""
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(entries, list):
        return None
    labelled = [entry for entry in entries if isinstance(entry, dict) and _label_of(entry.get("token"))]
    if not labelled:
        return None
    alternatives = labelled[-1].get("top_logprobs")
    if not isinstance(alternatives, list) or not alternatives:
        return None
    mass = {label: 0.0 for label in LABELS}
    for alternative in alternatives:
        label = _label_of(alternative.get("token")) if isinstance(alternative, dict) else None
        logprob = alternative.get("logprob") if label else None
        if isinstance(logprob, (int, float)) and math.isfinite(logprob):
            mass[label] += math.exp(logprob)
    total = mass["0"] + mass["1"]
    return mass["1"] / total if total > 0 else None


class _Retry(Exception):
    """A failure worth another try (connection, timeout, 408/429/5xx)."""


@dataclass
class _Server:
    url: str  # the API root, ending in /v1
    failures: int = 0  # in a row
    rest_until: float = 0.0
    probing: bool = False  # after a failure, one request at a time finds out whether it is back
    generation: int = 0  # bumped at each failure, so that requests already in flight count once
    stats: dict = field(default_factory=lambda: {"answered": 0, "failed": 0})


class _Batch:
    """One ``generate`` call: the queue of request indices, the answers, the first fatal error.

    Everything a worker touches lives here, so a worker still waiting on a
    server when its batch was abandoned cannot write into the next batch.
    """

    def __init__(self, requests: list[VLMRequest], max_new_tokens: int):
        self.requests = requests
        self.max_new_tokens = max_new_tokens
        self.bodies: dict[int, dict] = {}  # encoded once, kept for retries
        self.pending = deque(range(len(requests)))
        self.answers: list[VLMAnswer | None] = [None] * len(requests)
        self.tries = [0] * len(requests)
        self.remaining = len(requests)
        self.error: BaseException | None = None
        self.closed = False
        self.condition = threading.Condition()


class OpenAIBackend:
    """Greedy answers from one or more OpenAI-compatible servers; see the module docstring."""

    name = "openai"

    def __init__(self, served_model: str, settings: ServerSettings):
        import httpx2  # only when this backend is chosen

        if not settings.base_urls:
            raise VeraError("the openai backend needs at least one --base-url")
        self.httpx = httpx2
        self.served_model = served_model
        self.settings = settings
        self.servers = [_Server(url) for url in settings.base_urls]
        slots = len(self.servers) * settings.concurrency
        self.client = httpx2.Client(
            timeout=httpx2.Timeout(settings.timeout, connect=min(CONNECT_TIMEOUT, settings.timeout)),
            limits=httpx2.Limits(max_connections=slots, max_keepalive_connections=slots),
        )

    # -- one HTTP exchange ------------------------------------------------------------------

    def _body(self, request: VLMRequest, max_new_tokens: int) -> dict:
        return {"model": self.served_model,
                "messages": [{"role": "user", "content": chat_content(request, self.settings.image_format)}],
                "temperature": 0, "max_tokens": max_new_tokens, "logprobs": True, "top_logprobs": TOP_LOGPROBS}

    def _post(self, server: _Server, body: dict, key: str) -> VLMAnswer:
        try:
            response = self.client.post(f"{server.url}/chat/completions", json=body)
        except self.httpx.TransportError as error:  # refused, dropped, timed out
            raise _Retry(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__) from None
        if response.status_code in RETRY_STATUSES or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}: {_brief(response.text)}")
        if response.status_code != 200:
            raise VeraError(f"{server.url} refused {key} (model {self.served_model!r}): "
                            f"HTTP {response.status_code}: {_brief(response.text)}")
        try:
            choice = response.json()["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise VeraError(f"{server.url} answered {key} with something other than a chat completion: "
                            f"{_brief(response.text)}") from None
        return VLMAnswer(text=text, label_prob=label_probability(choice.get("logprobs")),
                         extra={"truncated": choice.get("finish_reason") == "length", "server": server.url})

    # -- the dispatch -----------------------------------------------------------------------

    def _next(self, batch: _Batch, server: _Server) -> tuple[int, int] | None:
        """Wait for a request this server may take now; None when the batch is over."""
        with batch.condition:
            while True:
                if batch.closed or batch.error is not None or batch.remaining == 0:
                    return None
                now = time.monotonic()
                resting = server.failures > 0
                if batch.pending and (not resting or (now >= server.rest_until and not server.probing)):
                    server.probing = resting
                    return batch.pending.popleft(), server.generation
                timeout = server.rest_until - now if resting and now < server.rest_until else None
                batch.condition.wait(timeout)

    def _work(self, batch: _Batch, server: _Server) -> None:
        while (job := self._next(batch, server)) is not None:
            index, generation = job
            request = batch.requests[index]
            try:
                if index not in batch.bodies:  # frames are encoded here, in parallel
                    batch.bodies[index] = self._body(request, batch.max_new_tokens)
                answer = self._post(server, batch.bodies[index], request.key)
            except _Retry as failure:
                self._failed(batch, server, index, generation, request, str(failure))
                continue
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread, which raises it
                with batch.condition:
                    batch.error = batch.error or error
                    batch.condition.notify_all()
                return
            with batch.condition:
                server.failures, server.probing = 0, False
                server.stats["answered"] += 1
                batch.answers[index] = answer
                batch.remaining -= 1
                batch.condition.notify_all()

    def _failed(self, batch: _Batch, server: _Server, index: int, generation: int, request: VLMRequest,
                reason: str) -> None:
        with batch.condition:
            server.stats["failed"] += 1
            server.probing = False
            if generation == server.generation:  # the first failure of this round rests the server longer
                server.generation += 1
                server.failures += 1
                server.rest_until = time.monotonic() + backoff_delay(server.failures, self.settings.backoff)
            batch.tries[index] += 1
            if batch.tries[index] > self.settings.retries:
                batch.error = VeraError(f"{request.key}: no answer after {batch.tries[index]} tries; last, from "
                                        f"{server.url}: {reason}")
            else:
                batch.pending.appendleft(index)  # next in line, for whichever server is free first
            batch.condition.notify_all()

    def generate(self, requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        """One answer per request, in request order, from whichever servers are up."""
        for request in requests:
            check_request(request)
        if not requests:
            return []
        batch = _Batch(requests, max_new_tokens)
        for number, server in enumerate(self.servers):
            for _ in range(min(self.settings.concurrency, len(requests))):
                threading.Thread(target=self._work, args=(batch, server), name=f"openai-{number}", daemon=True).start()
        try:
            with batch.condition:
                while batch.remaining and batch.error is None:
                    batch.condition.wait(1.0)  # a timeout keeps Ctrl-C responsive
        finally:
            with batch.condition:  # done, failed or interrupted: the workers take nothing more
                batch.closed = True
                batch.condition.notify_all()
        if batch.error is not None:
            raise batch.error
        return list(batch.answers)  # type: ignore[arg-type]

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.served_model, "servers": [s.url for s in self.servers],
                "concurrency_per_server": self.settings.concurrency, "image_format": self.settings.image_format,
                "decoding": {"temperature": 0, "top_logprobs": TOP_LOGPROBS},
                "timeout_s": self.settings.timeout, "retries": self.settings.retries,
                "httpx2": self.httpx.__version__}

    def close(self) -> None:
        self.client.close()


def _brief(text: str, limit: int = 300) -> str:
    """A server's reply on one line, cut to ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + " …"
