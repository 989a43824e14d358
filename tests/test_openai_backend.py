"""The openai backend: options, request format, label probabilities, dispatch over several servers,
retries with backoff, Step 1 and training through the command line, and a real ``transformers serve``
killed and restarted in the middle of a Step 1 run. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import base64
import importlib
import importlib.util
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from fixtures.videos import decode_index, index_frame

from vera.errors import VeraError, run_cli
from vera.options import base_urls
from vera.vlm.backends.base import VLMRequest
from vera.data.annotations import load_test_annotations
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE
from vera.constants import PRESET_QUESTIONS
from vera.vlm.step1 import Step1Runner, Step1Settings, plan_segments

httpx2 = pytest.importorskip("httpx2", reason="the openai backend needs httpx2 (requirements.txt)")

from vera.vlm.backends.openai import (  # noqa: E402 - after the skip
    OpenAIBackend,
    ServerSettings,
    backoff_delay,
    label_probability,
)
from fixtures.scripts import load_script

STEP1 = "generate_initial_score"


# -- a fake OpenAI-compatible server -----------------------------------------------------------

def decode_data_url(url: str) -> np.ndarray:
    header, data = url.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/jpeg;base64")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def sums_answer(images: list[np.ndarray]) -> str:
    """What the fake server says by default: the pixel sum of each image it got, in order."""
    return f"sums {[int(image.astype(np.int64).sum()) for image in images]}\nOutput: 1"


class FakeServer:
    """Answers chat completions from the images it receives; ``script`` says how to treat each arrival.

    Script items, one per arriving request (then "ok" for the rest): "ok", an HTTP status to return,
    "drop" (close the connection without an answer) or ("sleep", seconds) before answering.
    """

    def __init__(self, script=(), *, answer=sums_answer, delay: float = 0.0, logprobs: dict | None = None,
                 finish_reason: str = "stop"):
        self.script = deque(script)
        self.answer, self.delay, self.logprobs, self.finish_reason = answer, delay, logprobs, finish_reason
        self.bodies: list[dict] = []
        self.arrivals: list[float] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.arrivals.append(time.monotonic())
                    action = server.script.popleft() if server.script else "ok"
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.respond(self, body, action)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def respond(self, handler: BaseHTTPRequestHandler, body: dict, action) -> None:
        if action == "drop":
            handler.close_connection = True
            return
        if isinstance(action, tuple):
            time.sleep(action[1])
        elif isinstance(action, int):
            self._send(handler, action, {"error": {"message": f"scripted {action}"}})
            return
        time.sleep(self.delay)
        content = body["messages"][0]["content"]
        images = [decode_data_url(item["image_url"]["url"]) for item in content if item["type"] == "image_url"]
        choice = {"index": 0, "message": {"role": "assistant", "content": self.answer(images)},
                  "finish_reason": self.finish_reason}
        if self.logprobs is not None:
            choice["logprobs"] = self.logprobs
        self._send(handler, 200, {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers():
    started: list[FakeServer] = []

    def start(*args, **kwargs) -> FakeServer:
        started.append(FakeServer(*args, **kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def backend(*urls: str, **settings) -> OpenAIBackend:
    settings.setdefault("backoff", 0.05)
    return OpenAIBackend("fake-model", ServerSettings(base_urls=urls, **settings))


def noise_requests(count: int, images_each: int = 2, size: int = 12, seed: int = 0) -> list[VLMRequest]:
    rng = np.random.default_rng(seed)
    requests = []
    for number in range(count):
        images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(images_each)]
        prompt = "Look:" + "".join(f"\nFrame{i + 1}: <image>" for i in range(images_each)) + "\nOutput?"
        requests.append(VLMRequest(prompt, images, key=f"request {number}"))
    return requests


def expected_sums(request: VLMRequest) -> str:
    return f"sums {[int(image.astype(np.int64).sum()) for image in request.images]}\nOutput: 1"


# -- options ------------------------------------------------------------------------------------

def test_base_urls_are_normalised_and_checked():
    assert base_urls("http://a:8000") == ("http://a:8000/v1",)
    assert base_urls("http://a:8000/v1/, https://b/api/v1") == ("http://a:8000/v1", "https://b/api/v1")
    for bad, message in (("ftp://a:1", "is not an http(s)://host:port URL"), ("http://a:x", "'http://a:x'"),
                         ("http://a:1,http://a:1/v1", "given twice"), ("a:8000", "not an http(s)")):
        with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
            base_urls(bad)


def test_cli_refuses_mismatched_backend_options_in_one_line(tmp_path, capsys):
    cli = load_script(STEP1)
    annotation = tmp_path / "ann.json"
    annotation.write_text("[]")
    base = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path), "--preset", "ucf",
            "--output", str(tmp_path / "out")]
    openai = ["--backend", "openai", "--served-model", "m", "--base-url", "http://127.0.0.1:9/v1"]
    cases = [
        (openai + ["--frame-layout", "released"],
         "error: argument --frame-layout: the openai backend sends each frame as its own image and cannot "
         "express the 'released' layout; use --frame-layout per-frame\n"),
        (["--backend", "openai", "--served-model", "m", "--frame-layout", "per-frame"],
         "error: argument --base-url: required with --backend openai\n"),
        (["--backend", "openai", "--model", str(tmp_path), "--base-url", "http://127.0.0.1:9"],
         "error: argument --model: with --backend openai the model runs on the servers; "
         "name it with --served-model NAME\n"),
        (["--served-model", "m"], "error: argument --served-model: only with --backend openai\n"),
        (["--model", str(tmp_path), "--base-url", "http://127.0.0.1:9"],
         "error: argument --base-url: only with --backend openai\n"),
        (openai + ["--model", str(tmp_path)],
         "error: argument --model: not allowed with argument --served-model\n"),
        (openai + ["--request-timeout", "0"], "error: argument --request-timeout: must be a positive number of "
                                              "seconds, got 0\n"),
    ]
    for extra, expected in cases:
        assert run_cli(cli.main, base + extra) == 2
        assert capsys.readouterr().err == expected


# -- request format and answers -----------------------------------------------------------------

def test_frames_go_one_image_per_placeholder_losslessly_and_answers_keep_request_order(servers):
    server = servers()
    requests = noise_requests(3, images_each=3)
    answers = backend(server.url, concurrency=2).generate(requests, max_new_tokens=17)
    assert [answer.text for answer in answers] == [expected_sums(request) for request in requests]
    body = next(b for b in server.bodies  # the first request's, whatever order they arrived in
                if np.array_equal(decode_data_url(b["messages"][0]["content"][1]["image_url"]["url"]),
                                  requests[0].images[0]))
    assert body["model"] == "fake-model" and body["temperature"] == 0 and body["max_tokens"] == 17
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    content = body["messages"][0]["content"]
    assert [item["type"] for item in content] == ["text", "image_url"] * 3 + ["text"]
    assert [item["text"] for item in content if item["type"] == "text"] == [
        "Look:\nFrame1: ", "\nFrame2: ", "\nFrame3: ", "\nOutput?"]
    assert all(answer.label_prob is None and answer.extra["truncated"] is False for answer in answers)


def test_jpeg_frames_are_close_to_the_originals(servers):
    server = servers()
    frame = cv2.resize(index_frame(5, (64, 48)), (448, 448), interpolation=cv2.INTER_NEAREST)
    request = VLMRequest("A <image> B", [frame], key="jpeg")
    backend(server.url, image_format="jpeg").generate([request])
    url = server.bodies[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    assert decode_index(decode_data_url(url)) == 5


def test_the_released_single_block_layout_is_refused_before_sending(servers):
    server = servers()
    request = VLMRequest("Frames: <image> <image>", noise_requests(1)[0].images, key="video v", image_block=True)
    with pytest.raises(VeraError, match="video v: the openai backend .* use --frame-layout per-frame"):
        backend(server.url).generate([request])
    with pytest.raises(VeraError, match="video w: 1 <image> placeholders for 2 images"):
        backend(server.url).generate([VLMRequest("one <image>", request.images, key="video w")])
    assert server.bodies == []


def _entry(token: str, alternatives: dict[str, float]) -> dict:
    return {"token": token, "logprob": math.log(alternatives.get(token, 0.5)),
            "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()]}


def test_label_probability_from_logprobs():
    # At the last label token: P(1) = 0.6 + 0.05 (" 1" and "1"), P(0) = 0.3, so 0.65 / 0.95 = 13/19.
    last = _entry(" 1", {" 1": 0.6, " 0": 0.3, "1": 0.05, "Output": 0.01})
    earlier = _entry("0", {"0": 0.9, "1": 0.1})
    assert label_probability({"content": [earlier, _entry(":", {":": 1.0}), last]}) == pytest.approx(13 / 19)
    assert label_probability({"content": [_entry("\u25810", {"\u25810": 0.8, "\u25811": 0.2})]}) == pytest.approx(0.2)
    # A label outside the returned alternatives counts as 0.
    assert label_probability({"content": [_entry("1", {"1": 0.7, "Yes": 0.2})]}) == 1.0
    # Not a label token ("10"), no alternatives, or no logprobs at all: unknown.
    assert label_probability({"content": [_entry("10", {"10": 1.0})]}) is None
    assert label_probability({"content": [{"token": "1", "logprob": -0.1, "top_logprobs": []}]}) is None
    assert label_probability(None) is None and label_probability({"content": None}) is None


def test_label_probability_and_truncation_reach_the_answer(servers):
    logprobs = {"content": [_entry("Output", {"Output": 0.9}), _entry(" 1", {" 1": 0.6, " 0": 0.3, "1": 0.05})]}
    server = servers(logprobs=logprobs, finish_reason="length")
    answer = backend(server.url).generate(noise_requests(1))[0]
    assert answer.label_prob == pytest.approx(13 / 19) and answer.extra["truncated"] is True


# -- dispatch, retries, backoff -----------------------------------------------------------------

def test_several_servers_share_a_batch_with_bounded_concurrency(servers):
    fast, slow = servers(delay=0.1), servers(delay=0.25)  # long enough to overlap on a busy machine
    requests = noise_requests(24)
    client = backend(fast.url, slow.url, concurrency=3)
    answers = client.generate(requests)
    assert [answer.text for answer in answers] == [expected_sums(request) for request in requests]
    assert len(fast.bodies) + len(slow.bodies) == 24 and fast.bodies and slow.bodies
    assert fast.max_in_flight <= 3 and slow.max_in_flight <= 3
    assert max(fast.max_in_flight, slow.max_in_flight) > 1  # requests did overlap
    assert {answer.extra["server"] for answer in answers} == {fast.url, slow.url}


def test_errors_and_timeouts_are_retried_after_growing_rests(servers):
    script = [503, 429, "drop", ("sleep", 2.0), 500]
    server = servers(script)
    requests = noise_requests(2)
    client = backend(server.url, concurrency=1, timeout=0.6, backoff=0.05)
    answers = client.generate(requests)
    assert [answer.text for answer in answers] == [expected_sums(request) for request in requests]
    assert len(server.bodies) == 7 and client.servers[0].stats == {"answered": 2, "failed": 5}
    # After the k-th failure in a row the server rests 0.05 · 2^(k-1) s before the next try.
    gaps = np.diff(server.arrivals)
    rests = [backoff_delay(k, 0.05) for k in range(1, 6)]
    assert rests == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert all(gap >= rest for gap, rest in zip(gaps, rests))
    assert gaps[3] >= 0.6 + 0.4  # the timed-out try waited for the timeout, then the rest


def test_backoff_doubles_up_to_a_minute():
    assert [backoff_delay(k, 1.0) for k in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_request_is_given_up_after_its_retries(servers):
    server = servers([503] * 10)
    with pytest.raises(VeraError) as error:
        backend(server.url, retries=2, backoff=0.01).generate(noise_requests(1))
    assert str(error.value) == (f"request 0: no answer after 3 tries; last, from {server.url}: "
                                'HTTP 503: {"error": {"message": "scripted 503"}}')
    assert len(server.bodies) == 3


def test_a_refusal_is_not_retried(servers):
    server = servers([404])
    with pytest.raises(VeraError, match=r"refused request 0 \(model 'fake-model'\): HTTP 404: .*scripted 404"):
        backend(server.url).generate(noise_requests(1))
    assert len(server.bodies) == 1


def test_a_dead_server_leaves_the_work_to_the_others(servers):
    alive = servers()
    dead = closed_port_url()
    client = backend(dead, alive.url, concurrency=2)
    started = time.monotonic()
    answers = client.generate(noise_requests(10))
    assert all(answer.extra["server"] == alive.url for answer in answers) and len(alive.bodies) == 10
    assert client.servers[0].stats["answered"] == 0 and client.servers[0].failures >= 1
    assert time.monotonic() - started < 5


# -- Step 1 and training through the command line, against the fake server ---------------------

def index_answer(images: list[np.ndarray]) -> str:
    indices = [decode_index(image) for image in images]
    return f"Answers to Prompt Questions: frames {indices}\nOutput: {indices[1] % 2}"


def write_index_frames(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        cv2.imwrite(str(folder / f"{index:06d}.jpg"), index_frame(index, (64, 48)))


def test_step1_cli_with_two_servers_records_each_segment_once(servers, tmp_path, capsys):
    logprobs = {"content": [_entry(" 1", {" 1": 0.6, " 0": 0.3, "1": 0.05})]}
    one, two = servers(answer=index_answer, logprobs=logprobs), servers(answer=index_answer, logprobs=logprobs)
    lengths = {"long": 100, "short": 37}
    for key, length in lengths.items():
        write_index_frames(tmp_path / "frames" / key, length)
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([{"video": f"frames/Normal/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                       "length": length} for key, length in lengths.items()]))
    out = tmp_path / "scores"
    argv = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path / "frames"),
            "--preset", "ucf", "--frame-layout", "per-frame", "--backend", "openai", "--served-model", "fake",
            "--base-url", f"{one.url},{two.url}", "--concurrency", "2", "--batch-size", "4", "--no-progress",
            "--output", str(out)]
    cli = load_script(STEP1)
    assert cli.main(argv) == 0
    assert "2 videos (0 already finished), 10 segments, 10 generated" in capsys.readouterr().out
    assert len(one.bodies) + len(two.bodies) == 10 and one.bodies and two.bodies
    for key, length in lengths.items():
        scores = json.loads((out / f"{key}.json").read_text())
        segments = plan_segments(length, half=150)
        assert list(scores) == [str(segment.centre) for segment in segments]
        for segment in segments:
            entry = scores[str(segment.centre)]
            assert entry["response"] == (f"Answers to Prompt Questions: frames {list(segment.indices)}\n"
                                         f"Output: {segment.indices[1] % 2}")
            assert entry["score"] == segment.indices[1] % 2 and entry["label_prob"] == pytest.approx(13 / 19)
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["backend"] == "openai" and run["identity"]["model"] == "fake"
    assert run["backend"]["servers"] == [one.url, two.url]
    assert run["identity"]["image_format"] == "png"
    assert cli.main(argv) == 0  # a rerun finds everything done and sends nothing
    assert "(2 already finished), 10 segments, 0 generated" in capsys.readouterr().out
    assert len(one.bodies) + len(two.bodies) == 10
    # JPEG frames are other pixels: the folder is refused before anything is sent, naming the setting.
    assert run_cli(cli.main, argv + ["--image-format", "jpeg"]) == 2
    assert "image_format" in capsys.readouterr().err
    assert len(one.bodies) + len(two.bodies) == 10


def test_training_cli_through_the_openai_backend(servers, tmp_path):
    server = servers(answer=lambda images: f"Answers to Prompt Questions: {len(images)} frames.\nOutput: 1")
    names = ["Abuse/Abuse001_x264", "Training_Normal_Videos_Anomaly/Normal_Videos001_x264"]
    for name in names:
        write_index_frames(tmp_path / "frames" / Path(name).name, 16)
    listing = tmp_path / "train.json"
    listing.write_text(json.dumps([{"video": f"frames/{name}.mp4", "length": 16} for name in names]))
    out = tmp_path / "run"
    training = load_script("training")
    assert training.main(["--dataset", "ucf", "--train", str(listing), "--val", str(listing),
                          "--frames", str(tmp_path / "frames"), "--backend", "openai", "--served-model", "fake",
                          "--base-url", server.url, "--frame-layout", "per-frame", "--num-frames", "2",
                          "--max-steps", "1", "--accelerator", "cpu", "--output", str(out)]) == 0
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [record["step"] for record in history] == [1]
    images = sorted(sum(item["type"] == "image_url" for item in body["messages"][0]["content"])
                    for body in server.bodies)
    # Learner calls carry one video's 2 frames each; the optimizer call both videos' frames.
    assert images[-1] == 4 and set(images[:-1]) == {2}
    assert json.loads((out / "run.json").read_text())["backend"]["model"] == "fake"


# -- a real server: transformers serve with the tiny model, killed and restarted mid-run -------

SERVE_PACKAGES = ("fastapi", "uvicorn", "openai", "accelerate")


class TransformersServe:
    """``transformers serve`` of one model on a loopback port, as a subprocess that can be killed."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log = model, log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None
        self.lives = 0

    def start(self, wait: float = 120.0) -> None:
        command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
                   str(self.model), "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
                   "--dtype", "float32"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.lives += 1
        with open(self.log, "a") as log:
            log.write(f"=== life {self.lives}\n")
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx2.get(f"http://127.0.0.1:{self.port}/health", timeout=1.0).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"transformers serve did not come up in {wait} s: {self.log.read_text()[-2000:]}")

    def answered(self, life: int | None = None) -> int:
        """Chat completions answered with 200 (in one life of the server, or in all)."""
        text = self.log.read_text()
        if life is not None:
            text = text.split(f"=== life {life}\n", 1)[1].split(f"=== life {life + 1}\n", 1)[0]
        return text.count('"POST /v1/chat/completions HTTP/1.1" 200')

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def test_step1_against_transformers_serve_survives_a_killed_server(tiny_models, tmp_path, capsys):
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)} (requirements-test.txt)")
    # Qwen2-VL: transformers serve runs its processor with the defaults the hf backend uses. (Its InternVL
    # processor tiles each frame; at InternVL's 448-pixel tiles a 448x448 frame is one tile either way,
    # but the tiny model's tiles are 32 pixels.)
    model = tiny_models.path("qwen2_vl")
    rng = np.random.default_rng(7)
    lengths = {"alpha": 40, "beta": 20, "gamma": 49}  # 3 + 2 + 4 segments
    for key, length in lengths.items():
        (tmp_path / "frames" / key).mkdir(parents=True)
        for index in range(length):
            cv2.imwrite(str(tmp_path / "frames" / key / f"{index:06d}.jpg"),
                        rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    annotation = tmp_path / "ann.json"
    annotation.write_text(json.dumps([{"video": f"frames/Normal/{key}.mp4", "temporal_label": [-1, -1, -1, -1],
                                       "length": length} for key, length in lengths.items()]))
    common = ["--dataset", "ucf", "--annotations", str(annotation), "--frames", str(tmp_path / "frames"),
              "--preset", "ucf", "--frame-layout", "per-frame", "--max-new-tokens", "8", "--no-progress"]
    cli = load_script(STEP1)
    server = TransformersServe(model, tmp_path / "serve.log")
    server.start()
    try:
        served = common + ["--backend", "openai", "--served-model", str(model), "--base-url", server.url,
                           "--concurrency", "2", "--batch-size", "4"]
        assert cli.main(served + ["--output", str(tmp_path / "steady")]) == 0
        assert server.answered() == 9

        killed = threading.Event()
        trouble: list[BaseException] = []

        def kill_and_restart() -> None:
            try:
                deadline = time.monotonic() + 120
                while server.answered() < 9 + 3 and time.monotonic() < deadline:
                    time.sleep(0.02)
                server.kill()  # with requests in flight: 6 of 9 segments are still to come
                killed.set()
                server.start()
            except BaseException as error:  # noqa: BLE001 - reported by the test's thread below
                trouble.append(error)

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        try:
            assert cli.main(served + ["--output", str(tmp_path / "restarted")]) == 0
        finally:
            killer.join()
        assert not trouble, trouble
        assert killed.is_set() and server.answered(life=2) >= 1  # answers came after the restart
    finally:
        server.stop()
    assert "3 videos (0 already finished), 9 segments, 9 generated" in capsys.readouterr().out
    steady = {key: json.loads((tmp_path / "steady" / f"{key}.json").read_text()) for key in lengths}
    restarted = {key: json.loads((tmp_path / "restarted" / f"{key}.json").read_text()) for key in lengths}
    assert restarted == steady
    for key, length in lengths.items():
        assert list(steady[key]) == [str(centre) for centre in range(0, length, 16)]
        assert all(entry["label_prob"] is None for entry in steady[key].values())  # serve returns no logprobs

    # The same model in this process (hf backend, one segment per call) gives the same answers.
    settings = Step1Settings(output=tmp_path / "local", frames_dir=tmp_path / "frames", frame_layout="per-frame",
                             batch_size=1, max_new_tokens=8, progress=False)
    Step1Runner(tiny_models.backend("qwen2_vl"), DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"],
                settings).run(load_test_annotations(annotation, "ucf"))
    local = {key: json.loads((tmp_path / "local" / f"{key}.json").read_text()) for key in lengths}
    def answers(results: dict) -> dict:  # transformers serve strips the answer's surrounding whitespace
        return {key: {c: (e["response"].strip(), e["score"]) for c, e in entries.items()}
                for key, entries in results.items()}

    assert answers(local) == answers(steady)
