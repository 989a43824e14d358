"""A tiny random vision-language model for tests and smoke runs, written with no network.

    python -m vera.vlm.tiny_model --arch internvl --out runs/tiny-internvl
    python -m vera.vlm.tiny_model --arch qwen2_vl --out runs/tiny-qwen2vl

The folder holds a config, random weights (a fixed seed), a byte-level BPE
tokenizer trained here on the prompt texts plus the special tokens that the
architecture's processor and our chat template need, and the processor
settings, so that ``AutoModelForImageTextToText.from_pretrained`` and
``AutoProcessor.from_pretrained`` load it offline. Images are 32×32 (InternVL)
or 28×28 (Qwen2-VL) to keep it fast. Its answers are gibberish, but they are
deterministic and exercise every code path of the ``hf`` backend (image tokens,
left padding, batching) in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLProcessor,
    InternVLVideoProcessor,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from vera.errors import VeraError, run_cli
from vera.runs import check_writable
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, frame_lines
from vera.constants import NUM_FRAMES, PRESET_QUESTIONS

ARCHITECTURES = ("internvl", "qwen2_vl")
# Weights far larger than a trained model's 0.02, so that the random model's
# greedy answer depends on its input (at 0.02 it repeats one token whatever it sees).
INIT_STD = 0.3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNVL_SPECIALS = {"start_image_token": "<img>", "end_image_token": "</img>",
                     "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# A ChatML template of our own: a user turn whose content is text and image
# items, then the assistant prefix. Images render as the architecture's marker.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'text' %}{{ item['text'] }}{% else %}IMAGE_MARKER{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IMAGE_MARKERS = {"internvl": "<IMG_CONTEXT>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}


def _byte_level_tokenizer(special_tokens: list[str], extra: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on our prompt texts: any text round-trips, prompts stay short."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = [DEFAULT_LEARNER_TEMPLATE, frame_lines(NUM_FRAMES)]
    corpus += [question for questions in PRESET_QUESTIONS.values() for question in questions]
    trainer = trainers.BpeTrainer(vocab_size=1024, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(corpus, trainer)  # deterministic for a fixed corpus
    backend.add_special_tokens(special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        extra_special_tokens=extra or {},
    )


def _internvl(seed: int, head_dim: int) -> tuple[torch.nn.Module, InternVLProcessor]:
    tokenizer = _byte_level_tokenizer(CHAT_SPECIALS + list(INTERNVL_SPECIALS.values()), INTERNVL_SPECIALS)
    image_size, patch_size = 32, 8
    image_seq_length = int((image_size // patch_size) ** 2 * 0.5**2)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           initializer_range=INIT_STD, image_size=[image_size, image_size],
                           patch_size=[patch_size, patch_size]),
        text_config=dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=4 * head_dim,
                         intermediate_size=8 * head_dim,
                         initializer_range=INIT_STD,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_SPECIALS["context_image_token"]),
        image_seq_length=image_seq_length,
        downsample_ratio=0.5,
    )
    image_processor = GotOcr2ImageProcessor(size={"height": image_size, "width": image_size}, crop_to_patches=False,
                                            image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor = InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  video_processor=InternVLVideoProcessor(),
                                  image_seq_length=image_seq_length,
                                  chat_template=CHAT_TEMPLATE.replace("IMAGE_MARKER", IMAGE_MARKERS["internvl"]))
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config), processor


def _qwen2_vl(seed: int, head_dim: int) -> tuple[torch.nn.Module, Qwen2VLProcessor]:
    tokenizer = _byte_level_tokenizer(CHAT_SPECIALS + QWEN_SPECIALS)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=4 * head_dim, intermediate_size=8 * head_dim,
                         num_hidden_layers=2,
                         initializer_range=INIT_STD,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "mrope_section": _mrope_section(head_dim),
                                          "rope_theta": 10000.0},
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        # hidden_size is the merger's output width, which must be the language model's (transformers and vLLM
        # both build the merger from this vision config).
        vision_config=dict(depth=1, embed_dim=32, hidden_size=4 * head_dim, num_heads=2, mlp_ratio=2, patch_size=14,
                           initializer_range=INIT_STD,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    # 28×28 pixels per image: one merged patch, i.e. one image token.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=28 * 28)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=CHAT_TEMPLATE.replace("IMAGE_MARKER", IMAGE_MARKERS["qwen2_vl"]))
    torch.manual_seed(seed)
    return AutoModelForImageTextToText.from_config(config), processor


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's (time, height, width) split of the rotary frequencies: head_dim / 2 of them, 1:1.5:1.5 as Qwen's."""
    time = head_dim // 8
    return [time, (head_dim // 2 - time) // 2, head_dim // 2 - time - (head_dim // 2 - time) // 2]


def write_tiny_model(arch: str, out: Path, seed: int = 0, head_dim: int = 16) -> Path:
    """Write a tiny random ``arch`` model with its processor to ``out``; return ``out``.

    ``head_dim`` sizes the language model (4 query and 2 key-value heads of it); serving engines' CPU
    attention kernels want 32 or more, the tests keep 16.
    """
    builders = {"internvl": _internvl, "qwen2_vl": _qwen2_vl}
    if arch not in builders:
        raise VeraError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if head_dim < 8 or head_dim % 8:
        raise VeraError(f"--head-dim must be a positive multiple of 8, not {head_dim}")
    out = Path(out)
    check_writable(out)  # a file or a read-only folder is one line, before the model is built
    model, processor = builders[arch](seed, head_dim)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, choices=ARCHITECTURES)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-dim", type=int, default=16, help="the language model's attention head size")
    args = parser.parse_args(argv)
    out = write_tiny_model(args.arch, args.out, args.seed, args.head_dim)
    size = sum(path.stat().st_size for path in out.iterdir() if path.is_file())
    print(json.dumps({"arch": args.arch, "out": str(out), "bytes": size}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
