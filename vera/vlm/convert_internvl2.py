"""Convert an original InternVL2 checkpoint to the native transformers format, once.

    python -m vera.vlm.convert_internvl2 SRC DST

``SRC`` is a folder as the InternVL2 authors published it (``config.json`` of
``InternVLChatModel``, safetensors shards, the language model's tokenizer
files); it ships remote code that no longer runs on transformers 5. ``DST``
becomes a folder that ``InternVLForConditionalGeneration`` /
``AutoModelForImageTextToText`` / ``AutoProcessor`` and the ``hf`` backend load
with no remote code, and vLLM serves (it reads ``architectures``):

- config: the vision tower (InternViT), the projector (``mlp1``: LayerNorm,
  Linear, GELU, Linear after a 0.5 pixel shuffle) and the language model as
  ``llama`` for InternLM2 (its fused layers unfused), or as it is for Qwen2,
  Phi-3 and Llama;
- weights, streamed one shard at a time (a shard in, a shard out), after a
  plan made from the shard headers alone has checked that every source tensor
  is used exactly once and every native parameter is written exactly once,
  with its native shape (``vera.vlm.internvl2_layout``);
- the tokenizer as a fast tokenizer encoding like the original slow one
  (``vera.vlm.sentencepiece_fast``), with the BOS in the chat template only;
- a chat template rendering the query of the original ``chat``/``batch_chat``
  for the checkpoint's conversation template (``internlm2-chat``, ``Hermes-2``,
  ``phi3-chat``): system turn with InternVL2's system message, no newline after
  the separator;
- ``generation_config.json``: greedy, 1024 new tokens, and the separator as the
  only end-of-sequence token, as ``chat``/``batch_chat`` set it.

The folder is written next to ``DST`` and renamed into place when complete;
``vera_conversion.json`` in it records the source and what was used.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoTokenizer,
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
)

import vera
from vera.errors import VeraError
from vera.io import read_json, write_json_atomic
from vera.vlm.internvl2_layout import SourceLayout
from vera.vlm.sentencepiece_fast import build_fast_tokenizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"}
# InternVLProcessor needs a video token; InternVL2 has none. The processor replaces it by image
# tokens before tokenizing, so the id it gets (one past the checkpoint's vocabulary) never reaches the model.
VIDEO_TOKEN = "<video>"
SYSTEM_MESSAGE = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
                  "英文名叫InternVL, 是一个有用无害的人工智能助手。")
# InternVL2's conversation templates (all "MPT" style: system + sep, then role + message + sep per turn).
CONVERSATIONS = {
    "internlm2-chat": ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
    "Hermes-2": ("<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>"),
    "phi3-chat": ("<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>"),
}
SENTENCEPIECE_TOKENIZERS = ("InternLM2Tokenizer", "InternLM2TokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast")
MAX_NEW_TOKENS = 1024


def chat_template(template_name: str, add_bos: bool) -> str:
    """A Jinja chat template that renders what InternVL2's ``get_conv_template(name).get_prompt()`` built.

    A ``system`` message replaces InternVL2's system message; images render as
    ``<IMG_CONTEXT>``, which ``InternVLProcessor`` expands into a whole
    ``<img>…</img>`` block. The BOS, where the slow tokenizer added one, is
    part of the text, so the ids hold it once whether or not the text is then
    tokenized with special tokens.
    """
    if template_name not in CONVERSATIONS:
        raise VeraError(f"unsupported conversation template {template_name!r}; "
                        f"supported: {', '.join(CONVERSATIONS)}")
    system, user, assistant, sep = (json.dumps(part, ensure_ascii=False) for part in CONVERSATIONS[template_name])
    default_system = json.dumps(SYSTEM_MESSAGE, ensure_ascii=False)
    return "".join([
        "{%- macro render(content) -%}{%- if content is string -%}{{- content -}}{%- else -%}",
        "{%- for item in content -%}{%- if item['type'] == 'text' -%}{{- item['text'] -}}",
        "{%- elif item['type'] == 'image' -%}{{- '<IMG_CONTEXT>' -}}",
        f"{{%- elif item['type'] == 'video' -%}}{{{{- '{VIDEO_TOKEN}' -}}}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}",
        "{{- bos_token -}}" if add_bos else "",
        f"{{%- set ns = namespace(system={default_system}) -%}}",
        "{%- for message in messages if message['role'] == 'system' -%}",
        "{%- set ns.system = render(message['content']) -%}{%- endfor -%}",
        f"{{{{- {system} + ns.system + {sep} -}}}}",
        "{%- for message in messages if message['role'] != 'system' -%}",
        f"{{{{- ({assistant} if message['role'] == 'assistant' else {user}) + render(message['content']) + {sep} -}}}}",
        "{%- endfor -%}",
        f"{{%- if add_generation_prompt -%}}{{{{- {assistant} -}}}}{{%- endif -%}}",
    ])


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def _added_tokens(src: Path, config: dict) -> dict[int, dict]:
    added = {int(index): spec for index, spec in config.get("added_tokens_decoder", {}).items()}
    known = {spec["content"] for spec in added.values()}
    extra = src / "added_tokens.json"
    if extra.is_file():
        for content, index in read_json(extra, "added tokens file").items():
            if content not in known:
                added[int(index)] = {"content": content, "special": True}
    return added


def convert_tokenizer(src: Path) -> tuple[PreTrainedTokenizerFast, bool]:
    """The fast tokenizer of ``src`` with InternVL's image tokens, and whether the slow one added a BOS."""
    config = read_json(src / "tokenizer_config.json", "tokenizer config")
    tokenizer_class = config.get("tokenizer_class") or ""
    special = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    if tokenizer_class in SENTENCEPIECE_TOKENIZERS:
        if tokenizer_class.startswith("Llama") and config.get("legacy") is False:
            raise VeraError(f"{src}: LlamaTokenizer with legacy=false is not supported by the converter")
        if not (src / "tokenizer.model").is_file():
            raise VeraError(f"{src}: {tokenizer_class} needs tokenizer.model, which is missing")
        backend = build_fast_tokenizer(src / "tokenizer.model", _added_tokens(src, config))
        add_bos = bool(config.get("add_bos_token", True))
        if config.get("add_eos_token"):
            raise VeraError(f"{src}: a tokenizer that appends EOS to every text is not supported")
    else:
        # A tokenizer transformers itself implements (Qwen2 for InternVL2-1B): taken as transformers builds it.
        try:
            original = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise VeraError(f"cannot load the tokenizer of {src} ({tokenizer_class}): {error}") from None
        backend = original.backend_tokenizer
        add_bos = False
        special = {name: getattr(original, name, None) for name in special}
    if special["bos_token"] is None:
        add_bos = False
    vocab = backend.get_vocab()
    missing = [token for token in IMAGE_TOKENS.values() if token not in vocab]
    if missing:
        raise VeraError(f"{src}: the tokenizer lacks InternVL's image tokens {', '.join(missing)}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, padding_side="left", clean_up_tokenization_spaces=False,
        **{name: value for name, value in special.items() if value is not None},
        extra_special_tokens={**IMAGE_TOKENS, "video_token": VIDEO_TOKEN},
    )
    return tokenizer, add_bos


def _image_processor(image_size: int, config: dict) -> GotOcr2ImageProcessor:
    """InternVL2's preprocessing of one tile: resize to the tile size (bicubic), scale to [0, 1], ImageNet norm."""
    return GotOcr2ImageProcessor(
        size={"height": image_size, "width": image_size}, crop_to_patches=False,
        min_patches=config.get("min_dynamic_patch", 1), max_patches=config.get("max_dynamic_patch", 12),
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, resample=3)


def _shards(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(read_json(index, "safetensors index").get("weight_map", {}).values()))
        shards = [src / name for name in names]
    else:
        shards = sorted(src.glob("*.safetensors"))
    if not shards:
        hint = " (only PyTorch .bin weights: convert them to safetensors first)" if any(src.glob("*.bin")) else ""
        raise VeraError(f"{src}: no safetensors weights found{hint}")
    absent = [str(shard) for shard in shards if not shard.is_file()]
    if absent:
        raise VeraError(f"weight shard not found: {absent[0]}")
    return shards


def _native_parameters(config: InternVLConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter the native model loads (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if config.text_config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _plan(layout: SourceLayout, shards: list[Path], expected: dict[str, tuple[int, ...]]) -> dict:
    """Map every source tensor (from the shard headers) to its targets; refuse any gap or overlap."""
    written: dict[str, str] = {}
    unused, skipped, wrong_shape = [], {}, []
    for shard in shards:
        with safe_open(shard, framework="pt") as handle:
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                targets = layout.targets(name)
                if targets is None:
                    reason = layout.skip_reason(name)
                    if reason:
                        skipped[name] = reason
                    else:
                        unused.append(name)
                    continue
                for target, transform in targets:
                    if target in written:
                        raise VeraError(f"{target} is written twice (from {written[target]} and {name})")
                    written[target] = name
                    try:
                        got = tuple(transform(torch.empty(shape, device="meta")).shape)
                    except RuntimeError:  # e.g. a fused matrix whose rows do not split into the heads
                        got = None
                    if expected.get(target) != got:
                        wrong_shape.append(f"{name} {shape} → {target}: native {expected.get(target)}")
    if unused:
        raise VeraError(f"{len(unused)} source tensors have no place in the native model, e.g. "
                        f"{', '.join(sorted(unused)[:5])}")
    if wrong_shape:
        raise VeraError(f"{len(wrong_shape)} tensors do not fit the native shapes, e.g. {wrong_shape[0]}")
    missing = sorted(set(expected) - set(written))
    if missing:
        raise VeraError(f"{len(missing)} native parameters have no source tensor, e.g. {', '.join(missing[:5])}")
    return {"written": written, "skipped": skipped}


def _convert_weights(layout: SourceLayout, shards: list[Path], out: Path) -> dict:
    """Stream shard by shard: read one, write its converted tensors as one output shard."""
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, start=1):
        name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        with safe_open(shard, framework="pt") as handle:
            for source in handle.keys():
                targets = layout.targets(source)
                if not targets:
                    continue
                tensor = handle.get_tensor(source)
                for target, transform in targets:
                    tensors[target] = transform(tensor).contiguous().clone()
                del tensor
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for target, tensor in tensors.items():
            weight_map[target] = name
            total += tensor.numel() * tensor.element_size()
        del tensors
    write_json_atomic(out / "model.safetensors.index.json",
                      {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    return weight_map


def convert(src: Path, dst: Path, overwrite: bool = False) -> dict:
    """Convert ``src`` into ``dst`` (see the module docstring); return the report."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise VeraError(f"{dst} is not empty; choose a new folder or pass --overwrite")
    source_config = read_json(src / "config.json", "InternVL2 config")
    layout = SourceLayout.from_config(source_config, src)
    tokenizer, add_bos = convert_tokenizer(src)  # before the weights: a tokenizer problem fails in seconds
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKENS["context_image_token"])
    config = InternVLConfig(**layout.native_config(image_token_id))
    shards = _shards(src)
    plan = _plan(layout, shards, _native_parameters(config))

    work = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        config.dtype = layout.dtype
        # What the model class's save_pretrained records; serving engines (vLLM) pick their model by it.
        config.architectures = ["InternVLForConditionalGeneration"]
        config.save_pretrained(work)
        template = chat_template(layout.template, add_bos)
        processor = InternVLProcessor(
            image_processor=_image_processor(layout.image_size, source_config), tokenizer=tokenizer,
            video_processor=InternVLVideoProcessor(), image_seq_length=layout.image_tokens, chat_template=template)
        processor.save_pretrained(work)
        sep_id = tokenizer.convert_tokens_to_ids(CONVERSATIONS[layout.template][3])
        GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=sep_id,
                         pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id).save_pretrained(work)
        weight_map = _convert_weights(layout, shards, work)
        report = {
            "source": str(src.resolve()), "vera": vera.__version__, "language_model": layout.llm_arch,
            "template": layout.template, "source_tensors": len(set(plan["written"].values())),
            "skipped_source_tensors": plan["skipped"], "native_tensors": len(weight_map), "shards": len(shards),
            "vocabulary": len(tokenizer), "bos_in_template": add_bos, "eos_token_id": sep_id,
            "image_tokens_per_tile": layout.image_tokens,
        }
        write_json_atomic(work / "vera_conversion.json", report)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(work, dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m vera.vlm.convert_internvl2 SRC DST [--overwrite]``: convert, then print the report."""
    from vera.options import Command

    args = Command(
        "Convert an original InternVL2 checkpoint (remote-code InternVLChatModel) into a folder that "
        "transformers' InternVLForConditionalGeneration and the hf backend load.",
        ["convert_src", "convert_dst", "convert_overwrite"],
        prog="python -m vera.vlm.convert_internvl2",
    ).parse(argv)
    report = convert(args.src, args.dst, overwrite=args.overwrite)
    print(json.dumps(report, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    from vera.errors import run_cli

    raise SystemExit(run_cli(main))
