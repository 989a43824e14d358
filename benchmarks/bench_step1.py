"""Step 1 throughput: the released pattern against the project's batched path, on one device, in one run.

    python benchmarks/bench_step1.py --shape internvl2-8b [--batch-size 48] [--answer-tokens 160] [--json OUT]
    python benchmarks/bench_step1.py --shape tiny            # a quick check of the script itself, on any CPU

The model is built on the device from a config with random weights (nothing
is downloaded; on a GPU machine only torch and transformers are needed):

- ``internvl2-8b``: InternVL2-8B's shape, InternViT-300M (448 px, 24 layers,
  width 1024) and a Llama of InternLM2.5-7B's shape (width 4096, 32 layers,
  32 heads, 8 KV heads, MLP 14336, vocabulary 92553), bfloat16 on a GPU;
- ``tiny``: the test suite's tiny InternVL (``vera.vlm.tiny_model``).

It is loaded through the project's own ``hf`` backend (only the weight
loading is replaced), with the tiny model's tokenizer and an image processor
of the shape's size. Every segment is the released Step 1 input: 8 frames in
one image block and the learner prompt with the published UCF questions,
padded to a fixed length (``--prompt-tokens``, default 8×256 image tokens +
450 text tokens = 2,498 for InternVL2-8B); every answer is forced to exactly
``--answer-tokens`` (the end token is forbidden until then, and the lengths
are checked).

Measured, each after an untimed warm-up:

- released pattern: one segment per ``generate`` call (the backend with batches of 1);
- project path: the backend's batched ``generate`` on ``--batch-size`` segments;
- prefill only: one forward pass over the same batch, logits at the last
  position only (what a label-only mode costs at least);
- input pipeline: reading the 8 frames of each segment of the real clips
  (video files and JPEG folders) and resizing them to 448×448, in this process
  or in 1 or 2 input worker processes, and the ``hf`` backend's normalisation in
  this process (``--clips``; skipped where absent; ``bench_input.py`` runs it alone).

Peak memory is the GPU's peak allocation per measurement; on a CPU it is the
process's peak resident size so far (it never goes down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips"
TEXT_TOKENS = 450  # InternVL2-8B's tokenizer on the released learner prompt, about
# InternVL2-8B: InternViT-300M-448px and InternLM2.5-7B-chat as a Llama (its own vocabulary plus InternVL's tokens).
INTERNVL2_8B_TEXT = dict(model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336, vocab_size=92553, rms_norm_eps=1e-5,
                         rope_theta=1_000_000.0, max_position_embeddings=32768, tie_word_embeddings=False,
                         hidden_act="silu")
INTERNVL2_8B_VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=[448, 448], patch_size=[14, 14], attention_bias=True, norm_type="layer_norm",
                           layer_norm_eps=1e-6)


def forced_length(model, tokens: int) -> None:
    """Forbid the end token until an answer has ``tokens`` tokens (with max_new_tokens = tokens: exactly that many)."""
    model.generation_config.min_new_tokens = tokens


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def peak_memory(device: torch.device) -> float:
    """GiB: the GPU's peak allocation since the last reset, or the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_folder(shape: str, folder: Path) -> tuple[object, int]:
    """A model folder (config, tokenizer, processor; no weights) for ``shape``; returns its config and image size."""
    from transformers import AutoProcessor, InternVLConfig

    from vera.vlm.tiny_model import write_tiny_model

    write_tiny_model("internvl", folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()  # only our random model may be used: a real load would fail loudly
    if shape == "tiny":
        return InternVLConfig.from_pretrained(folder), 32
    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    processor.image_processor.size = {"height": 448, "width": 448}
    processor.image_seq_length = 256
    processor.save_pretrained(folder)
    config = InternVLConfig(
        vision_config=INTERNVL2_8B_VISION,
        text_config={**INTERNVL2_8B_TEXT, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None},
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=256, downsample_ratio=0.5,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,  # InternLM2.5 has its own output matrix (the composite's setting decides)
    )
    config.save_pretrained(folder)
    return config, 448


def requests_for(prompt: str, count: int, image_size: int, seed: int = 0) -> list:
    from vera.vlm.prompts import learner_request

    generator = np.random.default_rng(seed)
    return [learner_request(prompt, list(generator.integers(0, 256, (8, image_size, image_size, 3), dtype=np.uint8)),
                            f"segment {index}", "released") for index in range(count)]


def fit_prompt(backend, base: str, target: int, image_size: int) -> tuple[str, int]:
    """The learner prompt with filler words appended until the model sees exactly ``target`` tokens."""
    words = 0
    for _ in range(6):
        prompt = base + ("\n" + " ".join(["video"] * words) if words else "")
        length = int(backend._batch(requests_for(prompt, 1, image_size)).inputs["input_ids"].shape[1])
        if length == target:
            return prompt, length
        words = max(0, words + target - length)
    return prompt, length  # the closest reached; reported as measured


def time_calls(device: torch.device, calls) -> tuple[float, float]:
    """Seconds for ``calls()`` and the peak memory during it."""
    reset_peak(device)
    started = time.perf_counter()
    calls()
    synchronize(device)
    return time.perf_counter() - started, peak_memory(device)


def input_pipeline(clips: Path, image_size: int = 448, workers: tuple[int, ...] = (0, 1, 2), repeats: int = 2,
                   chunk: int = 8, model_rates: tuple[float, ...] = (8, 15)) -> list[dict]:
    """Segments/s of Step 1's input side, per frame source and number of input workers (``--input-workers``).

    As Step 1 does it (``vera.data.loading`` with Step 1's jobs, ``chunk`` segments per worker task): read the
    8 frames of each segment and resize them to 448×448, in this process (0 workers) or in worker processes;
    then the ``hf`` backend's InternVL normalisation (``_internvl_tiles``) in this process, on one torch thread.
    Per row: ``read_resize_per_s``, the frames delivered to this process with nothing else to do;
    ``normalise_per_s``, this process's normalisation alone; ``total_per_s``, both (a model taking no time);
    ``with_model_per_s``, the whole loop with a model of each of ``model_rates`` segments/s (the issue's
    targets: 8 with full answers, 15 label-only), which the input side should not slow down. The clips are
    read ``repeats`` times over; the clock starts when the first segment's frames arrive (the workers' start,
    a few seconds with the server they are forked from, and the first read happen once a run) and counts the
    segments after it.
    """
    from functools import partial
    from types import SimpleNamespace

    from transformers import GotOcr2ImageProcessor

    from vera.data.frames import open_frames
    from vera.data.loading import ReadJob, read_ahead
    from vera.data.segments import half_window
    from vera.vlm.backends.hf import HFBackend
    from vera.vlm.prompts import frame_reader
    from vera.vlm.step1 import plan_segments

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures.videos import decode_to_jpegs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    processor = GotOcr2ImageProcessor(size={"height": image_size, "width": image_size}, crop_to_patches=False)
    backend = SimpleNamespace(processor=SimpleNamespace(image_processor=processor), device=torch.device("cpu"))
    reader = frame_reader("released", image_size)

    def measure(where: dict, keys: list[str], lengths: dict, count: int, normalise: bool,
                model_rate: float | None = None) -> tuple[int, float, float]:
        """Segments, seconds and seconds of normalisation; with ``model_rate``, each batch of ``chunk`` segments
        is normalised and then held for as long as a model of that many segments/s would take (a GPU working
        while this process waits), as Step 1's loop does."""
        jobs = [ReadJob(key, partial(open_frames, key, **where), reader,
                        [segment.indices for segment in plan_segments(lengths[key], half_window(None))])
                for key in keys * repeats]
        segments, normalise_s, batch, started = 0, 0.0, [], None

        def answer(batch: list) -> float:
            before = time.perf_counter()
            for pixels in batch:
                HFBackend._internvl_tiles(backend, pixels)
            spent = time.perf_counter() - before
            if model_rate:
                time.sleep(len(batch) / model_rate)
            return spent

        with read_ahead(jobs, count, chunk) as videos:
            for reads in videos:
                with reads:
                    for pixels in reads:
                        if started is None:  # steady state: start-up and the first read happen once a run
                            started = time.perf_counter()
                        else:
                            segments += 1
                        if normalise:
                            batch.append(pixels)
                            if len(batch) == chunk:
                                normalise_s, batch = normalise_s + answer(batch), []
        if batch:
            normalise_s += answer(batch)
        return segments, time.perf_counter() - started, normalise_s

    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        keys = sorted(path.stem for path in clips.glob("*.mp4"))
        lengths = {key: decode_to_jpegs(clips / f"{key}.mp4", Path(temporary) / key) for key in keys}
        for source, where in (("video files", {"videos_dir": clips}), ("JPEG folders", {"frames_dir": Path(temporary)})):
            for count in workers:
                load = os.getloadavg()[0]
                segments, read_s, _ = measure(where, keys, lengths, count, normalise=False)
                _, total_s, normalise_s = measure(where, keys, lengths, count, normalise=True)
                with_model = {str(rate): segments / measure(where, keys, lengths, count, True, rate)[1]
                              for rate in model_rates}
                rows.append({"source": source, "workers": count, "segments": segments,
                             "read_resize_per_s": segments / read_s, "normalise_per_s": segments / normalise_s,
                             "total_per_s": segments / total_s, "with_model_per_s": with_model,
                             "cpus": len(os.sched_getaffinity(0)), "load_average": [load, os.getloadavg()[0]]})
                print(json.dumps(rows[-1]), flush=True)
    torch.set_num_threads(threads)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "internvl2-8b"), default="tiny")
    parser.add_argument("--batch-size", type=int, default=None, help="segments per batched generate call (default: "
                        "48 on a GPU, 8 on a CPU)")
    parser.add_argument("--loop-batch-sizes", type=int, nargs="+", help="batch sizes for the project's greedy loop "
                        "and the label-only mode (default: the --batch-size, then 96 and 128 on a GPU)")
    parser.add_argument("--answer-tokens", type=int, default=160)
    parser.add_argument("--prompt-tokens", type=int, help="default: 8 × image tokens + 2 + 448 (2,498 for "
                        "InternVL2-8B)")
    parser.add_argument("--released-segments", type=int, default=2, help="segments timed one per call")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--clips", type=Path, default=CLIPS, help="real clips for the input pipeline")
    parser.add_argument("--skip-input", action="store_true", help="no input-pipeline measurement")
    parser.add_argument("--json", type=Path, help="write the results here too (rewritten after every row)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import transformers

    from vera.devices import resolve_device, resolve_dtype
    from vera.vlm.backends import load_backend
    from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt
    from vera.constants import PRESET_QUESTIONS

    device = resolve_device(args.device)
    dtype = resolve_dtype("auto", device)
    batch_size = args.batch_size or (48 if device.type == "cuda" else 8)
    loop_sizes = args.loop_batch_sizes or ([batch_size, 96, 128] if device.type == "cuda" else [batch_size])
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    results: dict = {"shape": args.shape, "device": machine, "dtype": str(dtype).removeprefix("torch."),
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "batch_size": batch_size, "answer_tokens": args.answer_tokens,
                     "load_average": os.getloadavg()[0], "rows": []}

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="bench-step1-") as temporary:
        folder = Path(temporary) / args.shape
        config, image_size = build_folder(args.shape, folder)
        started = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(device):
            model = transformers.AutoModelForImageTextToText.from_config(config, dtype=dtype)
        model.eval()
        synchronize(device)
        results["build_s"] = round(time.perf_counter() - started, 1)
        results["parameters"] = sum(p.numel() for p in model.parameters())
        with mock.patch.object(transformers.AutoModelForImageTextToText, "from_pretrained", return_value=model):
            backend = load_backend("hf", str(folder), device=str(device), dtype=results["dtype"],
                                   max_batch_size=batch_size, local_files_only=True)

        image_tokens = 8 * config.image_seq_length + 2  # one <img>…</img> block of 8 tiles
        target = args.prompt_tokens or image_tokens + TEXT_TOKENS - 2
        base = build_learner_prompt(DEFAULT_LEARNER_TEMPLATE, PRESET_QUESTIONS["ucf"])
        prompt, length = fit_prompt(backend, base, target, image_size)
        results["prompt_tokens"] = length
        print(json.dumps({k: v for k, v in results.items() if k != "rows"}), flush=True)
        save()

        # Frames are made before the clock starts; the backend's own work on them (the processor) is timed.
        segments = requests_for(prompt, max([batch_size, args.released_segments, *loop_sizes]), image_size)
        answers: dict[str, list] = {}

        def measure(name: str, decoder: str, count: int, per_call: int, label: bool = False) -> None:
            """``count`` segments through the backend in calls of ``per_call``, after an untimed warm-up."""
            backend.decoder = decoder
            backend.max_batch_size = per_call

            def run(tokens: int, how_many: int):
                done = []
                for start in range(0, how_many, per_call):
                    chunk = segments[start:min(start + per_call, how_many)]
                    done += backend.score_labels(chunk) if label else backend.generate(chunk, tokens)
                return done

            try:
                forced_length(model, 2)
                run(2, per_call)  # warm-up: kernels, allocator, cuDNN plans
                forced_length(model, args.answer_tokens)
                reset_peak(device)
                started = time.perf_counter()
                done = run(args.answer_tokens, count)
                synchronize(device)
                seconds = time.perf_counter() - started
            except (RuntimeError, torch.OutOfMemoryError) as error:  # e.g. out of memory at this batch size
                results["rows"].append({"pattern": name, "error": str(error).strip().splitlines()[0]})
            else:
                answers[name] = done
                row = {"pattern": name, "segments": count, "batch": per_call, "seconds": round(seconds, 3),
                       "segments_per_s": round(count / seconds, 4), "peak_gib": round(peak_memory(device), 2),
                       "answer_tokens_seen": sorted({a.extra.get("new_tokens", 0) for a in done})}
                if backend.max_batch_size != per_call:
                    row["note"] = f"out of memory: the backend went down to batches of {backend.max_batch_size}"
                results["rows"].append(row)
            print(json.dumps(results["rows"][-1]), flush=True)
            save()

        measure("released: one segment per generate", "generate", args.released_segments, 1)
        measure(f"generate, batch {batch_size}", "generate", batch_size, batch_size)
        for size in loop_sizes:
            measure(f"project greedy loop, batch {size}", "auto", size, size)
        reference, ours = answers.get(f"generate, batch {batch_size}"), answers.get(
            f"project greedy loop, batch {batch_size}")
        if reference and ours:
            results["loop_answers_equal_to_generate"] = sum(a.text == b.text for a, b in zip(reference, ours))
            results["loop_answers_compared"] = len(reference)

        inputs = backend._batch(segments[:batch_size]).inputs
        try:
            with torch.inference_mode():
                model(**inputs, logits_to_keep=1)  # warm-up
                seconds, memory = time_calls(device, lambda: model(**inputs, logits_to_keep=1))
            results["rows"].append({"pattern": f"prefill only, batch {batch_size}", "segments": batch_size,
                                    "batch": batch_size, "seconds": round(seconds, 3),
                                    "segments_per_s": round(batch_size / seconds, 4), "peak_gib": round(memory, 2),
                                    "answer_tokens_seen": [0]})
        except (RuntimeError, torch.OutOfMemoryError) as error:
            results["rows"].append({"pattern": "prefill only", "error": str(error).strip().splitlines()[0]})
        print(json.dumps(results["rows"][-1]), flush=True)
        del inputs
        for size in loop_sizes:
            measure(f"label-only mode, batch {size}", "auto", size, size, label=True)
        timed = {row["pattern"]: row for row in results["rows"] if "error" not in row}
        released = timed.get("released: one segment per generate")
        if released:
            for row in timed.values():
                row["times_released"] = round(row["segments_per_s"] / released["segments_per_s"], 1)
        save()

    if not args.skip_input and args.clips.is_dir():
        results["input_pipeline"] = input_pipeline(args.clips)

    print(f"\n{results['shape']} on {results['device']} ({results['dtype']}), prompt {results['prompt_tokens']} "
          f"tokens, answers {results['answer_tokens']} tokens\n")
    print("| pattern | segments | seconds | segments/s | × released | peak memory (GiB) |\n|---|---|---|---|---|---|")
    for row in results["rows"]:
        if "error" in row:
            print(f"| {row['pattern']} | {row['error']} | | | | |")
        else:
            print(f"| {row['pattern']} | {row['segments']} | {row['seconds']:.2f} | {row['segments_per_s']:.3f} | "
                  f"{row.get('times_released', '–')} | {row['peak_gib']:.2f} |")
    if "loop_answers_compared" in results:
        print(f"\nloop answers equal to generate's: {results['loop_answers_equal_to_generate']} of "
              f"{results['loop_answers_compared']}")
    for row in results.get("input_pipeline", []):
        print(f"input pipeline, {row['workers']} input workers, {row['source']}: read+resize "
              f"{row['read_resize_per_s']:.1f}/s, normalise (main process) {row['normalise_per_s']:.1f}/s, "
              f"together {row['total_per_s']:.1f} segments/s; with a model of "
              + ", ".join(f"{rate} seg/s: {value:.1f}" for rate, value in row["with_model_per_s"].items()))
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
