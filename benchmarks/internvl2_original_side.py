"""The original side of ``compare_internvl2_original.py``: InternVL2's own modeling code on an original checkpoint.

Run by that script under an old environment (transformers < 4.50, where the
remote code still runs); it imports nothing of ``vera``. The original code
(``modeling_internvl_chat.py`` and the files it imports, made a flat package)
is loaded from ``--original-code``; it is never part of the project.

    python internvl2_original_side.py --original-code DIR --checkpoint SRC --inputs IN.npz --questions Q.json \
        --out OUT.npz [--max-new-tokens 20]

Writes to ``OUT.npz``, for (a) one request, a forward pass: ``a_input_ids``,
``a_attention_mask`` (as ``batch_chat`` built them), ``a_pixel_values`` and
``a_logits``; for (b) two requests, greedy ``batch_chat``: ``b_input_ids``,
``b_attention_mask`` (left-padded), ``b_pixel_values`` and ``b_tokens`` (what
``generate`` returned: the new tokens only); and beside it ``OUT.json`` with
the decoded answers and the versions.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
import transformers
from PIL import Image
from torchvision import transforms
from torchvision.transforms.functional import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE = "internvl2_original"


def import_original(folder: Path):
    """The folder as a package (its files import each other relatively), whatever the folder is called."""
    spec = importlib.util.spec_from_file_location(PACKAGE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)
    return (importlib.import_module(f"{PACKAGE}.modeling_internvl_chat"),
            importlib.import_module(f"{PACKAGE}.configuration_internvl_chat"),
            importlib.import_module(f"{PACKAGE}.tokenization_internlm2"))


def load_image_tiles(frame: np.ndarray, size: int) -> torch.Tensor:
    """InternVL2's published ``load_image(..., max_num=1)``: ``dynamic_preprocess`` with one block (the image
    resized to the tile, PIL's default filter) and ``build_transform`` (RGB, bicubic Resize, ToTensor,
    Normalize with ImageNet's mean and std)."""
    transform = transforms.Compose([
        transforms.Lambda(lambda img: img.convert("RGB") if img.mode != "RGB" else img),
        transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    ])
    image = Image.fromarray(frame).convert("RGB")
    blocks = [image.resize((size, size))]  # max_num=1: the only target ratio is 1×1, and one block has no thumbnail
    return torch.stack([transform(block) for block in blocks])


class GenerateRecorder:
    """Stands in for the model's ``generate``, which ``batch_chat`` calls: records what it got and returned."""

    def __init__(self, generate):
        self.generate = generate
        self.calls: list[dict] = []

    def __call__(self, **kwargs):
        output = self.generate(**kwargs)
        self.calls.append({"input_ids": kwargs["input_ids"], "attention_mask": kwargs["attention_mask"],
                           "output": output})
        return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original-code", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True, help="npz: frames_a, frames_b0, frames_b1 (uint8)")
    parser.add_argument("--questions", type=Path, required=True, help="json: question_a, questions_b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    modeling, configuration, tokenization = import_original(args.original_code)
    tokenizer = tokenization.InternLM2Tokenizer.from_pretrained(str(args.checkpoint))
    config = configuration.InternVLChatConfig.from_pretrained(str(args.checkpoint))
    model, info = modeling.InternVLChatModel.from_pretrained(
        str(args.checkpoint), config=config, torch_dtype=torch.float32, use_flash_attn=False,
        output_loading_info=True)
    if any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")):
        raise SystemExit(f"the original model did not load every weight: {info}")
    model.eval()
    assert model.language_model.config.attn_implementation == "eager"
    # The later modeling code exposes get_output_embeddings; with a configuration that leaves
    # tie_word_embeddings at its default, transformers 4.44 would tie the output head to the embeddings.
    if model.language_model.output.weight.data_ptr() == model.language_model.model.tok_embeddings.weight.data_ptr():
        raise SystemExit("the original model tied its output head to the input embeddings; use a configuration "
                         "file that sets tie_word_embeddings=False, as the published code does")
    size = config.force_image_size or config.vision_config.image_size

    frames = np.load(args.inputs)
    questions = json.loads(args.questions.read_text(encoding="utf-8"))

    def pixels(name: str) -> torch.Tensor:
        return torch.cat([load_image_tiles(frame, size) for frame in frames[name]])

    recorder = GenerateRecorder(model.generate)
    model.generate = recorder  # batch_chat calls self.generate: the instance attribute wins
    out: dict[str, np.ndarray] = {}

    # (a) one request: the query batch_chat builds, then the original forward on it.
    pixel_a = pixels("frames_a")
    model.batch_chat(tokenizer, pixel_a, [questions["question_a"]], dict(max_new_tokens=1, do_sample=False),
                     num_patches_list=[len(pixel_a)])
    ids, mask = recorder.calls[-1]["input_ids"], recorder.calls[-1]["attention_mask"]
    with torch.no_grad():
        logits = model(pixel_values=pixel_a, input_ids=ids, attention_mask=mask,
                       image_flags=torch.ones(len(pixel_a), 1, dtype=torch.long)).logits
    out |= {"a_input_ids": ids.numpy(), "a_attention_mask": mask.numpy(), "a_pixel_values": pixel_a.numpy(),
            "a_logits": logits.float().numpy()}

    # (b) two requests, left-padded, greedy.
    pixel_b = torch.cat([pixels("frames_b0"), pixels("frames_b1")])
    answers = model.batch_chat(tokenizer, pixel_b, questions["questions_b"],
                               dict(max_new_tokens=args.max_new_tokens, do_sample=False),
                               num_patches_list=[len(frames["frames_b0"]), len(frames["frames_b1"])])
    call = recorder.calls[-1]
    out |= {"b_input_ids": call["input_ids"].numpy(), "b_attention_mask": call["attention_mask"].numpy(),
            "b_pixel_values": pixel_b.numpy(), "b_tokens": call["output"].numpy()}

    np.savez(args.out, **out)
    args.out.with_suffix(".json").write_text(json.dumps({
        "answers": answers, "transformers": transformers.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "attn_implementation": model.language_model.config.attn_implementation,
    }, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
