"""The ``hf`` backend: any Hugging Face image-text-to-text model, with current transformers.

Native InternVL checkpoints (``…-hf``), Qwen2-VL, Qwen2.5-VL and the like are
loaded with ``AutoModelForImageTextToText`` and ``AutoProcessor`` from a local
folder or the Hub, on CPU or GPU. A batch of requests is generated at once,
left-padded, greedily; ``vera.vlm.decoding`` holds what decoding adds (label
logits kept on the device, the label-only score mode, the cache options).

How the ``<image>`` placeholders of a prompt become image tokens:

- InternVL: each image is ``<img>`` + ``<IMG_CONTEXT>`` × 256 (one 448×448 tile)
  + ``</img>``. An ``image_block`` request puts every frame inside a single
  ``<img>…</img>`` at the first placeholder, as InternVL2's ``batch_chat`` did
  for the released code; later ``<image>`` strings stay plain text. The rest of
  the query (system turn, separators, BOS) is the checkpoint's chat template:
  only an InternVL2 checkpoint converted by ``vera.vlm.convert_internvl2`` renders
  the original ``internlm2-chat`` query, so that the input ids equal
  ``batch_chat``'s, left padding included (``tests/test_convert_internvl2.py``);
  a native ``-hf`` checkpoint (InternVL3) gets its own template. Each frame is
  one tile, computed as InternVL's ``load_image`` did (PIL bicubic resize to the
  tile, ``ToTensor``, ``Normalize``), bit for bit.
- Other models: the prompt is split at the placeholders into the text and image
  items of one user turn and rendered by the model's own chat template. An
  ``image_block`` request puts all images at the first placeholder.
- ``video`` requests (the ``qwen-video`` layout, Qwen2-VL): built as the
  authors' Qwen2-VL scripts built them (``vera.vlm.qwen_video``) and generated
  with the checkpoint's own generation config, as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LogitsProcessorList

from vera.vlm import decoding, greedy, qwen_video
from vera.vlm.backends.base import IMAGE_PLACEHOLDER, VLMAnswer, VLMRequest
from vera.vlm.input_dump import write_input_dumps
from vera.vlm.parsing import answer_prefix
from vera.devices import resolve_device, resolve_dtype
from vera.errors import VeraError

logger = logging.getLogger(__name__)

LABELS = ("0", "1")


@dataclass
class _Batch:
    inputs: dict
    prompt_length: int
    checkpoint_decoding: bool = False  # generate with the checkpoint's generation config, no overrides


class HFBackend:
    """Greedy batched generation with a transformers image-text-to-text model."""

    name = "hf"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", max_batch_size: int | None = None,
                 local_files_only: bool = False, attn_implementation: str | None = None,
                 static_cache: bool = False, compile: bool = False, decoder: str = "auto"):
        self.model_id = str(model)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.max_batch_size = max_batch_size
        self.dump_inputs = None  # a folder: write every request's model inputs there (vera.vlm.input_dump)
        self.static_cache = static_cache or compile  # compiling the decoding step needs the static cache
        self.compile = compile
        if decoder not in ("auto", "generate"):
            raise VeraError(f"unknown decoder {decoder!r}; choose auto or generate")
        self.decoder = decoder
        load_options: dict = {"local_files_only": local_files_only}
        try:
            self.processor = AutoProcessor.from_pretrained(self.model_id, **load_options)
            if attn_implementation:
                load_options["attn_implementation"] = attn_implementation
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self.dtype, **load_options)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise VeraError(f"cannot load model {self.model_id}: {first_line}") from None
        if not getattr(self.processor, "chat_template", None):
            raise VeraError(f"model {self.model_id} has no chat template; the hf backend needs one to build prompts")
        self.model.to(self.device).eval()
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.model_type = self.model.config.model_type
        self.label_token_ids = {label: self._single_token_ids(label) for label in LABELS}
        self.eos_token_ids = self._eos_token_ids()

    def _single_token_ids(self, label: str) -> list[int]:
        """Token ids that stand for exactly ``label`` (with or without a leading space)."""
        ids = []
        for text in (label, " " + label):
            encoded = self.tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) == 1 and encoded[0] not in ids:
                ids.append(encoded[0])
        return ids

    def _eos_token_ids(self) -> list[int]:
        """The tokens that end generation, in the config's order: the generation config's (a converted InternVL2
        stops at ``<|im_end|>`` alone, not at its tokenizer's ``</s>``), else the tokenizer's end token."""
        eos = self.model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(dict.fromkeys(eos))
        if not eos and self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        return eos

    # -- prompts to model inputs ------------------------------------------------------------

    def _chat_text(self, content: list[dict]) -> str:
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _internvl_batch(self, requests: list[VLMRequest]) -> _Batch:
        """InternVL: expand the image tokens ourselves, so a frame block shares one ``<img>…</img>``."""
        processor = self.processor
        per_tile = processor.image_token * processor.image_seq_length

        def image_tokens(tiles: int) -> str:
            return f"{processor.start_image_token}{per_tile * tiles}{processor.end_image_token}"

        texts, images = [], []
        for request in requests:
            pieces = request.prompt.split(IMAGE_PLACEHOLDER)
            if request.image_block:
                text = pieces[0] + image_tokens(len(request.images)) + IMAGE_PLACEHOLDER.join(pieces[1:])
            else:
                _check_one_image_per_placeholder(request, len(pieces) - 1)
                text = pieces[0] + "".join(image_tokens(1) + piece for piece in pieces[1:])
            texts.append(self._chat_text([{"type": "text", "text": text}]))
            images.extend(request.images)
        inputs = dict(self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False))
        if images:
            inputs["pixel_values"] = self._internvl_tiles(images)
        return _Batch(inputs, inputs["input_ids"].shape[1])

    def _internvl_tiles(self, images: list[np.ndarray]) -> torch.Tensor:
        """One tile per image, as InternVL's ``load_image`` built it: PIL bicubic resize to the tile size (none
        for frames already that size), then ``ToTensor`` and ``Normalize`` in float32. The image processor's
        fused rescale-and-normalise differs from that in the last bit of most values.

        The arithmetic runs once, on the CPU, for each of the 256 byte values of each channel (the same
        operations on the same values as per pixel, so the same bits), and the pixels look their value up on the
        model's device: only uint8 pixels cross to it (a quarter of float32's bytes), and no float work per pixel
        is left on the CPU between the model's calls. Frames that are already uint8 tiles of the right size skip
        the PIL round trip, which would copy them unchanged."""
        image_processor = self.processor.image_processor
        size = (image_processor.size["width"], image_processor.size["height"])
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)[:, None]
        std = torch.tensor(image_processor.image_std, dtype=torch.float32)[:, None]
        table = torch.arange(256, dtype=torch.uint8).float().div(255).expand(3, 256).sub(mean).div(std)
        tiles = []
        for image in images:
            pixels = np.asarray(image)
            if pixels.dtype != np.uint8 or pixels.shape != (size[1], size[0], 3):
                picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
                if picture.size != size:
                    picture = picture.resize(size, Image.Resampling.BICUBIC)
                pixels = np.asarray(picture)
            tiles.append(pixels)
        pixels = np.stack(tiles)
        if self.device.type == "cpu":  # numpy's lookup into place: 4 times faster here than torch's take
            values = torch.empty(len(tiles), 3, size[1], size[0])
            for channel in range(3):
                np.take(table[channel].numpy(), pixels[..., channel], out=values[:, channel].numpy())
            return values
        return lookup_on_device(table, pixels, self.device)

    def _processor_batch(self, requests: list[VLMRequest]) -> _Batch:
        """Other models: text and image items of one user turn, through the model's chat template."""
        image_token = getattr(self.processor, "image_token", None)
        texts, images = [], []
        for request in requests:
            pieces = request.prompt.split(IMAGE_PLACEHOLDER)
            image = {"type": "image"}
            if request.image_block:
                rest = IMAGE_PLACEHOLDER.join(pieces[1:])
                if image_token and image_token in rest:
                    raise VeraError(
                        f"{request.key}: model {self.model_id} uses {image_token!r} as its image token, so the "
                        "literal placeholders of the 'released' frame layout would become images; "
                        "use --frame-layout per-frame")
                content = [{"type": "text", "text": pieces[0]}, *[image] * len(request.images),
                           {"type": "text", "text": rest}]
            else:
                _check_one_image_per_placeholder(request, len(pieces) - 1)
                content = [{"type": "text", "text": pieces[0]}]
                for piece in pieces[1:]:
                    content += [image, {"type": "text", "text": piece}]
            texts.append(self._chat_text([item for item in content if item.get("text") != ""]))
            images.extend(request.images)
        inputs = dict(self.processor(text=texts, images=images or None, padding=True, return_tensors="pt"))
        return _Batch(inputs, inputs["input_ids"].shape[1])

    def _video_batch(self, requests: list[VLMRequest]) -> _Batch:
        """The ``qwen-video`` layout: Qwen2-VL's inputs as the authors' scripts built them."""
        if self.model_type not in qwen_video.MODEL_TYPES:
            raise VeraError(f"{requests[0].key}: the qwen-video frame layout is for Qwen2-VL; model "
                            f"{self.model_id} is {self.model_type!r}")
        inputs = qwen_video.processor_inputs(self.processor, requests)
        return _Batch(inputs, inputs["input_ids"].shape[1], checkpoint_decoding=True)

    def _batch(self, requests: list[VLMRequest]) -> _Batch:
        if any(request.video for request in requests):
            batch = self._video_batch(requests)
        elif self.model_type == "internvl":
            batch = self._internvl_batch(requests)
        else:
            batch = self._processor_batch(requests)
        for name, value in batch.inputs.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                batch.inputs[name] = value.to(self.dtype) if value.is_floating_point() else value
        return batch

    # -- the context ------------------------------------------------------------------------

    @property
    def context_length(self) -> int | None:
        """The positions the language model covers: ``max_position_embeddings`` of its text config."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    def prompt_tokens(self, request: VLMRequest) -> int:
        """The tokens the model is fed for ``request`` alone (text and image tokens, no padding)."""
        return int(self._batch([request]).inputs["input_ids"].shape[1])

    # -- generation -------------------------------------------------------------------------

    def _generate_batch(self, requests: list[VLMRequest], max_new_tokens: int) -> list[VLMAnswer]:
        batch = self._batch(requests)
        if self.dump_inputs is not None:
            write_input_dumps(self.dump_inputs, requests, batch.inputs, self.tokenizer)
        zero_ids, one_ids = self.label_token_ids["0"], self.label_token_ids["1"]
        recorder = decoding.LabelLogits(zero_ids + one_ids)
        # qwen-video decodes with the checkpoint's own generation config; otherwise generate ends at the same
        # tokens as the greedy loop and as `truncated` below (the tokenizer's, where the config names none)
        greedy_options = {} if batch.checkpoint_decoding else {
            "do_sample": False, "num_beams": 1, "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.eos_token_ids}
        if self._uses_greedy_loop(batch):
            new_tokens, label_logits = greedy.greedy_decode(
                self.model, batch.inputs, max_new_tokens, self.eos_token_ids, self.tokenizer.pad_token_id,
                recorder.token_ids, min_new_tokens=self.model.generation_config.min_new_tokens or 0)
        else:
            with torch.inference_mode():
                output = self.model.generate(
                    **batch.inputs, max_new_tokens=max_new_tokens,
                    logits_processor=LogitsProcessorList([recorder]) if recorder.token_ids else None, **greedy_options,
                    **decoding.generate_options(self.static_cache, self.compile),
                )
            new_tokens = output[:, batch.prompt_length:].cpu()
            label_logits = recorder.collect()  # (batch, steps, labels)
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        answers = []
        for row, text in enumerate(texts):
            tokens = new_tokens[row].tolist()
            finished = any(token in self.eos_token_ids for token in tokens)
            label_prob = (decoding.label_probability(tokens, label_logits[row], zero_ids, one_ids)
                          if label_logits is not None else None)
            answers.append(VLMAnswer(text=text, label_prob=label_prob,
                                     extra={"truncated": not finished, "new_tokens": len(tokens)}))
        return answers

    def _uses_greedy_loop(self, batch: _Batch) -> bool:
        """Whether ``vera.vlm.greedy`` decodes this batch (as ``generate`` would, faster) rather than ``generate``.

        Not for the qwen-video layout (the checkpoint's own generation config
        decides there), not with the static-cache or compile options (those
        are ``generate``'s), not when ``decoder`` says so, and not where the
        loop cannot reproduce ``generate`` (``greedy.supports``: padding, a
        generation config that does more than argmax)."""
        if self.decoder == "generate" or batch.checkpoint_decoding or self.static_cache:
            return False
        return greedy.supports(self.model, batch.inputs) is None

    def _label_batch(self, requests: list[VLMRequest]) -> list[VLMAnswer]:
        """Label-only mode (``vera.vlm.decoding``): one forward pass over prompt plus forced answer prefix."""
        zero_ids, one_ids = self.label_token_ids["0"], self.label_token_ids["1"]
        if not zero_ids or not one_ids:
            raise VeraError(f"model {self.model_id}: no single token stands for the label 0 or 1, so the label "
                            "cannot be read from the logits; use --score-mode generate")
        groups: dict[str, list[int]] = {}  # requests by forced prefix, each group one forward pass
        for index, request in enumerate(requests):
            groups.setdefault(answer_prefix(request.prompt), []).append(index)
        answers: list[VLMAnswer | None] = [None] * len(requests)
        context = self._chat_text([{"type": "text", "text": "x"}])  # ends where every answer starts
        for prefix, indices in groups.items():
            group = [requests[index] for index in indices]
            inputs = self._batch(group).inputs
            inputs = decoding.append_tokens(inputs, decoding.continuation_ids(self.tokenizer, context, prefix))
            if self.dump_inputs is not None:  # what the forward pass sees: the prompt and the forced prefix
                write_input_dumps(self.dump_inputs, group, inputs, self.tokenizer)
            with torch.inference_mode():
                logits = self.model(**decoding.without_full_mask(inputs), use_cache=False, logits_to_keep=1).logits
            label_logits = logits[:, -1, zero_ids + one_ids].float().cpu()
            for row, index in enumerate(indices):
                label_prob = decoding.label_ratio(label_logits[row], len(zero_ids))
                score = 1 if label_prob is None or label_prob >= 0.5 else 0
                answers[index] = VLMAnswer(text="", label_prob=label_prob, extra={"score": score})
        return answers

    def _adaptive(self, run, requests: list[VLMRequest], *args) -> list[VLMAnswer]:
        """``run(requests, *args)``; on out-of-memory, halve the batch, say so, and keep the smaller size."""
        try:
            return run(requests, *args)
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(requests) == 1:
                raise VeraError(f"{requests[0].key}: out of memory on a single request with {self.model_id} on "
                                f"{self.device}; try --dtype bfloat16 or a larger GPU") from None
            half = (len(requests) + 1) // 2
            logger.warning("out of memory on a batch of %d (%s …); retrying in batches of %d",
                           len(requests), requests[0].key, half)
            self.max_batch_size = half
            return self._adaptive(run, requests[:half], *args) + self._adaptive(run, requests[half:], *args)

    def _in_batches(self, run, requests: list[VLMRequest], *args) -> list[VLMAnswer]:
        answers: list[VLMAnswer] = []
        start = 0
        while start < len(requests):
            size = self.max_batch_size or len(requests)
            answers.extend(self._adaptive(run, requests[start:start + size], *args))
            start += size
        return answers

    def generate(self, requests: list[VLMRequest], max_new_tokens: int = 1024) -> list[VLMAnswer]:
        """Greedy answers in request order, in batches of at most ``max_batch_size``."""
        return self._in_batches(self._generate_batch, requests, max_new_tokens)

    def score_labels(self, requests: list[VLMRequest]) -> list[VLMAnswer]:
        """Label-only answers in request order: empty text, ``label_prob``, and ``extra["score"]`` (0 or 1)."""
        return self._in_batches(self._label_batch, requests)

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model": self.model_id,
            "model_type": self.model_type,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "decoding": {"do_sample": False, "num_beams": 1, "cache": "static" if self.static_cache else "dynamic",
                         "compile": self.compile, "decoder": "generate" if self.static_cache else self.decoder},
            # What the qwen-video layout decodes with (the authors' Qwen2-VL scripts did not override it).
            "checkpoint_generation_config": self.model.generation_config.to_diff_dict(),
            "label_token_ids": self.label_token_ids,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }


def lookup_on_device(table: torch.Tensor, pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """``table[c, pixels[n, y, x, c]]`` as ``(n, c, y, x)`` on ``device``: only the uint8 pixels are copied there."""
    index = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).long()
    offsets = torch.arange(0, 3 * 256, 256, device=device).reshape(1, 3, 1, 1)  # channel c's values at 256·c
    return table.to(device).flatten().take(index + offsets)


def _check_one_image_per_placeholder(request: VLMRequest, placeholders: int) -> None:
    if placeholders != len(request.images):
        raise VeraError(f"{request.key}: {placeholders} {IMAGE_PLACEHOLDER} placeholders "
                        f"for {len(request.images)} images")

