"""InternVL2 conversion, on small random checkpoints in the *original* layout that these tests write by hand.

The original layout is taken from InternVL2's published description (no
original code here): InternLM2's fused ``wqkv`` holds, per key-value group,
that group's query heads, then its key head, then its value head (``head_dim``
rows each); InternViT's ``qkv`` holds all queries, all keys, all values;
``mlp1`` is LayerNorm, Linear, GELU, Linear. The tokenizer is a SentencePiece
BPE model trained here, read by the original *slow* tokenizer, which cuts the
text at its added tokens and runs ``SentencePieceProcessor.encode`` on each
piece in between. The expected values below are built from those facts with
loops, never with the converter's own functions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vera.errors import VeraError
from vera.vlm.prompts import DEFAULT_LEARNER_TEMPLATE, build_learner_prompt, learner_request
from vera.constants import PRESET_QUESTIONS

spm = pytest.importorskip("sentencepiece")

# InternVL2's system message, as the issue spells it out.
SYSTEM = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，"
          "英文名叫InternVL, 是一个有用无害的人工智能助手。")
HEADS, KV_HEADS, HEAD_DIM, HIDDEN, LAYERS = 8, 2, 8, 64, 2
VIT_HIDDEN, VIT_HEADS, IMAGE, PATCH = 32, 2, 32, 8
TOKENS_PER_TILE = (IMAGE // PATCH) ** 2 // 4
RESERVED = ["[UNUSED_TOKEN_0]", "[UNUSED_TOKEN_1]", "[UNUSED_TOKEN_145]", "[UNUSED_TOKEN_146]"]
RENAMED = {"[UNUSED_TOKEN_145]": "<|im_end|>", "[UNUSED_TOKEN_146]": "<|im_start|>"}
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>",
                   "</box>"]
TRICKY = ["", " ", "   ", "\n", "\n\n\n", "a", " leading", "trailing ", "two  spaces", "\ttab\tand\r\nCRLF",
          "这是一个测试。你好，世界！", "视频中是否有异常？", "emoji 😀🎉🚓 and ✅", "ﬁ ① ｈｅｌｌｏ ǅ",
          "x" * 40, "    four-space indent\n        eight", "Frame1: <image>\nFrame2: <image>", "<s>hi</s>",
          "<unk>", "<|im_start|>user\nQ<|im_end|><|im_start|>assistant\n",
          "<img><IMG_CONTEXT><IMG_CONTEXT></img>", "text<|im_end|>text", "[UNUSED_TOKEN_0] and [UNUSED_TOKEN_1]x",
          "Output: 1", " 0", "0", "1"]


def _corpus() -> str:
    texts = [DEFAULT_LEARNER_TEMPLATE] + [q for questions in PRESET_QUESTIONS.values() for q in questions]
    return "\n".join(texts) + "\n这是一个测试。你好，世界！视频中是否有异常？\n    indented\tcode  here\n"


def _train_sentencepiece(folder: Path, **options) -> Path:
    """A small BPE model with byte fallback (unk 0, <s> 1, </s> 2), trained on our prompt texts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(_corpus(), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=420, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   minloglevel=2, num_threads=1, **options)
    return folder / "tokenizer.model"


def slow_encode(sp, added: dict[str, int], text: str) -> list[int]:
    """The original slow tokenizer: cut at the longest added token at each position, SentencePiece in between."""
    ids, start, position = [], 0, 0
    longest_first = sorted(added, key=len, reverse=True)
    while position < len(text):
        token = next((token for token in longest_first if text.startswith(token, position)), None)
        if token is None:
            position += 1
            continue
        if start < position:
            ids += sp.encode(text[start:position])
        ids.append(added[token])
        position += len(token)
        start = position
    if start < len(text):
        ids += sp.encode(text[start:])
    return ids


# -- an original InternVL2 checkpoint (InternLM2 language model), written by hand ----------------

def _write_tokenizer(src: Path) -> dict[str, int]:
    """InternLM2's tokenizer files: reserved user-defined pieces, two renamed to the chat tokens."""
    model = _train_sentencepiece(src / "sp", add_dummy_prefix=False, remove_extra_whitespaces=False,
                                 normalization_rule_name="identity", user_defined_symbols=RESERVED)
    (src / "tokenizer.model").write_bytes(model.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    added = {"<unk>": 0, "<s>": 1, "</s>": 2}
    added.update({new: sp.piece_to_id(old) for old, new in RENAMED.items()})
    added.update({token: sp.get_piece_size() + index for index, token in enumerate(INTERNVL_TOKENS)})
    decoder = {str(index): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True} for token, index in added.items()}
    config = {"added_tokens_decoder": decoder, "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
              "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
              "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
              "clean_up_tokenization_spaces": False, "tokenizer_class": "InternLM2Tokenizer"}
    (src / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return added


def _original_weights(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=generator) * scale + offset

    weights = {
        "vision_model.embeddings.class_embedding": rand(1, 1, VIT_HIDDEN),
        "vision_model.embeddings.patch_embedding.weight": rand(VIT_HIDDEN, 3, PATCH, PATCH),
        "vision_model.embeddings.patch_embedding.bias": rand(VIT_HIDDEN),
        "vision_model.embeddings.position_embedding": rand(1, (IMAGE // PATCH) ** 2 + 1, VIT_HIDDEN),
    }
    for layer in range(LAYERS):
        p = f"vision_model.encoder.layers.{layer}."
        weights |= {
            p + "attn.qkv.weight": rand(3 * VIT_HIDDEN, VIT_HIDDEN), p + "attn.qkv.bias": rand(3 * VIT_HIDDEN),
            p + "attn.proj.weight": rand(VIT_HIDDEN, VIT_HIDDEN), p + "attn.proj.bias": rand(VIT_HIDDEN),
            p + "mlp.fc1.weight": rand(64, VIT_HIDDEN), p + "mlp.fc1.bias": rand(64),
            p + "mlp.fc2.weight": rand(VIT_HIDDEN, 64), p + "mlp.fc2.bias": rand(VIT_HIDDEN),
            p + "norm1.weight": rand(VIT_HIDDEN, offset=1), p + "norm1.bias": rand(VIT_HIDDEN),
            p + "norm2.weight": rand(VIT_HIDDEN, offset=1), p + "norm2.bias": rand(VIT_HIDDEN),
            p + "ls1": rand(VIT_HIDDEN, offset=0.5), p + "ls2": rand(VIT_HIDDEN, offset=0.5),
        }
    weights |= {"mlp1.0.weight": rand(4 * VIT_HIDDEN, offset=1), "mlp1.0.bias": rand(4 * VIT_HIDDEN),
                "mlp1.1.weight": rand(HIDDEN, 4 * VIT_HIDDEN), "mlp1.1.bias": rand(HIDDEN),
                "mlp1.3.weight": rand(HIDDEN, HIDDEN), "mlp1.3.bias": rand(HIDDEN),
                "language_model.model.tok_embeddings.weight": rand(vocab, HIDDEN, scale=1.0),
                "language_model.model.norm.weight": rand(HIDDEN, offset=1),
                "language_model.output.weight": rand(vocab, HIDDEN)}
    qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    for layer in range(LAYERS):
        p = f"language_model.model.layers.{layer}."
        weights |= {
            p + "attention.wqkv.weight": rand(qkv_rows, HIDDEN), p + "attention.wo.weight": rand(HIDDEN, HIDDEN),
            p + "feed_forward.w1.weight": rand(96, HIDDEN), p + "feed_forward.w3.weight": rand(96, HIDDEN),
            p + "feed_forward.w2.weight": rand(HIDDEN, 96),
            p + "attention_norm.weight": rand(HIDDEN, offset=1), p + "ffn_norm.weight": rand(HIDDEN, offset=1),
        }
    return weights


def _original_config(vocab: int) -> dict:
    return {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internlm2-chat",
        "downsample_ratio": 0.5, "force_image_size": IMAGE, "ps_version": "v2", "select_layer": -1,
        "dynamic_image_size": True, "max_dynamic_patch": 12, "min_dynamic_patch": 1, "use_thumbnail": True,
        "torch_dtype": "float32",
        "vision_config": {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b",
                          "hidden_size": VIT_HIDDEN, "intermediate_size": 64, "num_attention_heads": VIT_HEADS,
                          "num_hidden_layers": LAYERS, "image_size": IMAGE, "patch_size": PATCH, "qkv_bias": True,
                          "qk_normalization": False, "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                          "hidden_act": "gelu", "initializer_factor": 0.1, "use_flash_attn": False},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "vocab_size": vocab,
                       "hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": LAYERS,
                       "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "hidden_act": "silu",
                       "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "bias": False,
                       "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0},
                       "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
                       "attn_implementation": "eager"},
    }


def write_original(src: Path, extra: dict[str, torch.Tensor] | None = None, drop: str | None = None) -> dict:
    """An original-layout InternVL2 folder in two shards; returns its weights and added tokens."""
    src.mkdir(parents=True, exist_ok=True)
    added = _write_tokenizer(src)
    vocab = max(added.values()) + 1
    weights = _original_weights(vocab) | (extra or {})
    weights.pop(drop, None)
    shards = {"model-00001-of-00002.safetensors": {k: v for k, v in weights.items() if not k.startswith("lang")},
              "model-00002-of-00002.safetensors": {k: v for k, v in weights.items() if k.startswith("lang")}}
    for name, tensors in shards.items():
        save_file(tensors, str(src / name))
    index = {"metadata": {}, "weight_map": {key: name for name, tensors in shards.items() for key in tensors}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text(json.dumps(_original_config(vocab)))
    return {"weights": weights, "added": added, "vocab": vocab}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from vera.vlm.convert_internvl2 import convert

    root = tmp_path_factory.mktemp("internvl2")
    original = write_original(root / "original")
    report = convert(root / "original", root / "converted")
    sp = spm.SentencePieceProcessor(model_file=str(root / "original" / "tokenizer.model"))
    return {"src": root / "original", "dst": root / "converted", "report": report, "sp": sp, **original}


# -- layout facts, written as loops -------------------------------------------------------------

def _wqkv_rows(kind: str, head: int) -> slice:
    """Rows of InternLM2's wqkv for query head ``head`` (or key/value head ``head``)."""
    groups = HEADS // KV_HEADS
    if kind == "q":
        group, position = divmod(head, groups)
    else:
        group, position = head, groups + (0 if kind == "k" else 1)
    start = (group * (groups + 2) + position) * HEAD_DIM
    return slice(start, start + HEAD_DIM)


def unfuse(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original names → native names, head by head (the test's own forward mapping)."""
    native = {}
    vision_names = {"attn.proj": "attention.projection_layer", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                    "norm1": "layernorm_before", "norm2": "layernorm_after"}
    text_names = {"attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
                  "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
                  "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    v, t = "model.vision_tower.", "model.language_model."
    native[v + "embeddings.cls_token"] = original["vision_model.embeddings.class_embedding"]
    native[v + "embeddings.position_embeddings"] = original["vision_model.embeddings.position_embedding"]
    for kind in ("weight", "bias"):
        native[f"{v}embeddings.patch_embeddings.projection.{kind}"] = \
            original[f"vision_model.embeddings.patch_embedding.{kind}"]
    for layer in range(LAYERS):
        src, dst = f"vision_model.encoder.layers.{layer}.", f"{v}encoder.layer.{layer}."
        for kind in ("weight", "bias"):
            qkv = original[f"{src}attn.qkv.{kind}"]
            for index, part in enumerate("qkv"):
                native[f"{dst}attention.{part}_proj.{kind}"] = qkv[index * VIT_HIDDEN:(index + 1) * VIT_HIDDEN]
            for old, new in vision_names.items():
                native[f"{dst}{new}.{kind}"] = original[f"{src}{old}.{kind}"]
        native[dst + "lambda_1"], native[dst + "lambda_2"] = original[src + "ls1"], original[src + "ls2"]
        src, dst = f"language_model.model.layers.{layer}.", f"{t}layers.{layer}."
        wqkv = original[src + "attention.wqkv.weight"]
        native[dst + "self_attn.q_proj.weight"] = torch.cat([wqkv[_wqkv_rows("q", h)] for h in range(HEADS)])
        native[dst + "self_attn.k_proj.weight"] = torch.cat([wqkv[_wqkv_rows("k", h)] for h in range(KV_HEADS)])
        native[dst + "self_attn.v_proj.weight"] = torch.cat([wqkv[_wqkv_rows("v", h)] for h in range(KV_HEADS)])
        for old, new in text_names.items():
            native[f"{dst}{new}.weight"] = original[f"{src}{old}.weight"]
    for index, name in (("0", "layer_norm"), ("1", "linear_1"), ("3", "linear_2")):
        for kind in ("weight", "bias"):
            native[f"model.multi_modal_projector.{name}.{kind}"] = original[f"mlp1.{index}.{kind}"]
    native[t + "embed_tokens.weight"] = original["language_model.model.tok_embeddings.weight"]
    native[t + "norm.weight"] = original["language_model.model.norm.weight"]
    native["lm_head.weight"] = original["language_model.output.weight"]
    return native


def refuse(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native names → original names (the inverse conversion), fusing head by head."""
    original = {}
    for name, tensor in native.items():
        parts = name.split(".")
        if ".vision_tower.encoder.layer." in name and parts[-2] in ("q_proj", "k_proj", "v_proj"):
            continue  # fused below
        if ".language_model.layers." in name and parts[-2] in ("q_proj", "k_proj", "v_proj"):
            continue
        original[_original_name(name)] = tensor
    for layer in range(LAYERS):
        for kind in ("weight", "bias"):
            base = f"model.vision_tower.encoder.layer.{layer}.attention."
            original[f"vision_model.encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat(
                [native[f"{base}{part}_proj.{kind}"] for part in "qkv"])
        base = f"model.language_model.layers.{layer}.self_attn."
        q, k, v = (native[f"{base}{part}_proj.weight"] for part in "qkv")
        rows = []
        for group in range(KV_HEADS):
            for head in range(group * HEADS // KV_HEADS, (group + 1) * HEADS // KV_HEADS):
                rows.append(q[head * HEAD_DIM:(head + 1) * HEAD_DIM])
            rows += [k[group * HEAD_DIM:(group + 1) * HEAD_DIM], v[group * HEAD_DIM:(group + 1) * HEAD_DIM]]
        original[f"language_model.model.layers.{layer}.attention.wqkv.weight"] = torch.cat(rows)
    return original


def _original_name(name: str) -> str:
    renames = [("model.vision_tower.embeddings.cls_token", "vision_model.embeddings.class_embedding"),
               ("model.vision_tower.embeddings.position_embeddings", "vision_model.embeddings.position_embedding"),
               ("model.vision_tower.embeddings.patch_embeddings.projection", "vision_model.embeddings.patch_embedding"),
               ("model.vision_tower.encoder.layer.", "vision_model.encoder.layers."),
               (".attention.projection_layer", ".attn.proj"), (".layernorm_before", ".norm1"),
               (".layernorm_after", ".norm2"), (".lambda_1", ".ls1"), (".lambda_2", ".ls2"),
               ("model.multi_modal_projector.layer_norm", "mlp1.0"), ("model.multi_modal_projector.linear_1", "mlp1.1"),
               ("model.multi_modal_projector.linear_2", "mlp1.3"),
               ("model.language_model.embed_tokens", "language_model.model.tok_embeddings"),
               ("model.language_model.", "language_model.model."), ("lm_head", "language_model.output"),
               (".self_attn.o_proj", ".attention.wo"), (".mlp.gate_proj", ".feed_forward.w1"),
               (".mlp.up_proj", ".feed_forward.w3"), (".mlp.down_proj", ".feed_forward.w2"),
               (".input_layernorm", ".attention_norm"), (".post_attention_layernorm", ".ffn_norm")]
    for old, new in renames:
        name = name.replace(old, new)
    return name


def _converted_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for shard in sorted(folder.glob("*.safetensors")):
        weights |= load_file(shard)
    return weights


# -- weights ------------------------------------------------------------------------------------

def test_every_source_tensor_is_used_once_and_the_round_trip_is_exact(converted):
    native = _converted_weights(converted["dst"])
    assert converted["report"]["source_tensors"] == len(converted["weights"])
    assert converted["report"]["skipped_source_tensors"] == {}
    back = refuse(native)
    assert sorted(back) == sorted(converted["weights"])
    for name, tensor in converted["weights"].items():
        assert torch.equal(back[name], tensor), name
    assert sorted(native) == sorted(unfuse(converted["weights"]))
    # Streamed shard by shard: the first output shard holds exactly what the first input shard held.
    first = load_file(converted["dst"] / "model-00001-of-00002.safetensors")
    visual = ("model.vision_tower.", "model.multi_modal_projector.")
    assert set(first) == {name for name in unfuse(converted["weights"]) if name.startswith(visual)}


def test_native_model_loads_every_parameter_with_its_shape(converted):
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(converted["dst"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert state["model.language_model.layers.0.self_attn.q_proj.weight"].shape == (HEADS * HEAD_DIM, HIDDEN)
    assert state["model.language_model.layers.0.self_attn.k_proj.weight"].shape == (KV_HEADS * HEAD_DIM, HIDDEN)
    assert state["model.multi_modal_projector.linear_1.weight"].shape == (HIDDEN, 4 * VIT_HIDDEN)
    assert not torch.equal(state["lm_head.weight"], state["model.language_model.embed_tokens.weight"])
    for name, tensor in unfuse(converted["weights"]).items():
        assert torch.equal(state[name], tensor), name
    # The class a serving engine (vLLM) instantiates for the folder, as the model's own save_pretrained writes it.
    assert json.loads((converted["dst"] / "config.json").read_text())["architectures"] == \
        ["InternVLForConditionalGeneration"]


def test_fused_projections_split_as_the_original_forward_reads_them(converted):
    """InternLM2's forward views wqkv's output as (kv_heads, groups + 2, head_dim); InternViT's as (3, heads, dim)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(converted["dst"]).eval()
    x = torch.randn(5, HIDDEN, generator=torch.Generator().manual_seed(1))
    fused = x @ converted["weights"]["language_model.model.layers.1.attention.wqkv.weight"].T
    fused = fused.view(5, KV_HEADS, HEADS // KV_HEADS + 2, HEAD_DIM)
    attention = model.model.language_model.layers[1].self_attn
    with torch.no_grad():
        q = attention.q_proj(x).view(5, HEADS, HEAD_DIM)
        k, v = (proj(x).view(5, KV_HEADS, HEAD_DIM) for proj in (attention.k_proj, attention.v_proj))
    assert torch.allclose(q, fused[:, :, :-2].reshape(5, HEADS, HEAD_DIM), atol=1e-6)
    assert torch.allclose(k, fused[:, :, -2], atol=1e-6) and torch.allclose(v, fused[:, :, -1], atol=1e-6)
    y = torch.randn(5, VIT_HIDDEN, generator=torch.Generator().manual_seed(2))
    prefix = "vision_model.encoder.layers.0.attn.qkv."
    qkv = (y @ converted["weights"][prefix + "weight"].T + converted["weights"][prefix + "bias"]).view(5, 3, -1)
    vision = model.model.vision_tower.encoder.layer[0].attention
    with torch.no_grad():
        for index, proj in enumerate((vision.q_proj, vision.k_proj, vision.v_proj)):
            assert torch.allclose(proj(y), qkv[:, index], atol=1e-6)


def test_logits_equal_a_native_model_built_from_the_unfused_weights(converted):
    from transformers import AutoModelForImageTextToText, InternVLConfig, InternVLForConditionalGeneration

    vocab = converted["vocab"]
    config = InternVLConfig(
        vision_config=dict(hidden_size=VIT_HIDDEN, intermediate_size=64, num_attention_heads=VIT_HEADS,
                           num_hidden_layers=LAYERS, image_size=[IMAGE, IMAGE], patch_size=[PATCH, PATCH],
                           attention_bias=True, use_qk_norm=False, norm_type="layer_norm", layer_norm_eps=1e-6),
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=96,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         rms_norm_eps=1e-5, max_position_embeddings=4096, tie_word_embeddings=False,
                         rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0}),
        image_token_id=converted["added"]["<IMG_CONTEXT>"], image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5, tie_word_embeddings=False)
    reference = InternVLForConditionalGeneration(config).eval()
    missing, unexpected = reference.load_state_dict(unfuse(converted["weights"]), strict=False)
    assert not missing and not unexpected
    model = AutoModelForImageTextToText.from_pretrained(converted["dst"]).eval()
    added = converted["added"]
    ids = [added["<s>"], 40, 41, added["<img>"]] + [added["<IMG_CONTEXT>"]] * 2 * TOKENS_PER_TILE
    ids = torch.tensor([ids + [added["</img>"], 50, 60, 70, added["<|im_end|>"]]])
    pixels = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pixels).logits
        expected = reference(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(got, expected)
    assert got.abs().max() > 0


def test_unused_or_missing_source_tensors_are_refused(tmp_path):
    from vera.vlm.convert_internvl2 import convert

    write_original(tmp_path / "extra", extra={"language_model.model.layers.0.attention.stray.weight": torch.ones(2)})
    with pytest.raises(VeraError, match=r"1 source tensors have no place.*attention\.stray\.weight"):
        convert(tmp_path / "extra", tmp_path / "out")
    write_original(tmp_path / "short", drop="language_model.model.layers.1.ffn_norm.weight")
    with pytest.raises(VeraError, match=r"1 native parameters have no source tensor.*layers\.1\.post_attention"):
        convert(tmp_path / "short", tmp_path / "out")
    wrong = {"language_model.model.layers.0.attention.wqkv.weight": torch.ones(HEADS * HEAD_DIM + 1, HIDDEN)}
    write_original(tmp_path / "wrong", extra=wrong)
    with pytest.raises(VeraError, match=r"do not fit the native shapes, e\.g\. .*layers\.0\.attention\.wqkv"):
        convert(tmp_path / "wrong", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_converts_and_refuses_a_full_folder(converted, tmp_path, capsys):
    from vera.errors import run_cli
    from vera.vlm.convert_internvl2 import main

    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    command = [sys.executable, "-m", "vera.vlm.convert_internvl2", str(converted["src"]), str(dst)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {dst} is not empty; choose a new folder or pass --overwrite"
    assert run_cli(main, [str(converted["src"]), str(dst), "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["native_tensors"] == len(unfuse(converted["weights"]))
    assert not (dst / "keep.txt").exists() and (dst / "vera_conversion.json").is_file()
    assert run_cli(main, [str(tmp_path / "absent"), str(tmp_path / "x")]) == 2
    assert "argument SRC: folder not found" in capsys.readouterr().err


# -- tokenizer, chat query, generation ------------------------------------------------------------

def _strings(shared_data: Path | None) -> list[str]:
    strings = list(TRICKY)
    if shared_data is not None:
        for path in sorted((shared_data / "prompts").glob("*.txt")):
            text = path.read_text(encoding="utf-8")
            strings += [text, text.replace("[$Data]", "Frame1: <image>"), " " + text, text + "<|im_end|>"]
    return strings


def test_fast_tokenizer_encodes_like_the_slow_one(converted, shared_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted["dst"])
    added = {token: index for token, index in converted["added"].items()}
    strings = _strings(shared_data)
    for text in strings:
        expected = slow_encode(converted["sp"], added, text)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, repr(text[:60])
        assert tokenizer(text)["input_ids"] == expected  # no BOS added outside the chat template
    assert len(strings) > 30


@pytest.mark.parametrize("options", [
    dict(),  # SentencePiece's defaults: NFKC, dummy prefix, extra spaces removed (Llama-like)
    dict(add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity"),
])
def test_other_sentencepiece_settings_encode_alike(tmp_path, options, shared_data):
    from vera.vlm.sentencepiece_fast import build_fast_tokenizer

    model = _train_sentencepiece(tmp_path, **options)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    added = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|user|>": sp.get_piece_size(), "<|end|>": sp.get_piece_size() + 1}
    specs = {index: {"content": token, "special": True} for token, index in added.items()}
    tokenizer = build_fast_tokenizer(model, specs)
    for text in _strings(shared_data) + ["<|user|>\nhello<|end|>", "a<|end|> b"]:
        assert tokenizer.encode(text, add_special_tokens=False).ids == slow_encode(sp, added, text), repr(text[:60])


def test_decoding_matches_sentencepiece(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted["dst"])
    sp = converted["sp"]
    for text in ("Answers to Prompt Questions: 1. No.\nOutput:\n0", "这是一个测试。 😀", "  two  spaces\t"):
        ids = sp.encode(text)
        assert tokenizer.decode(ids) == sp.decode(ids) == text


def test_chat_template_renders_the_internlm2_chat_query(converted):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted["dst"])
    expected = ("<s><|im_start|>system\n" + SYSTEM + "<|im_end|><|im_start|>user\nIs it odd?<|im_end|>"
                "<|im_start|>assistant\n")
    for content in ("Is it odd?", [{"type": "text", "text": "Is it odd?"}]):
        messages = [{"role": "user", "content": content}]
        assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == expected
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"},
               {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
    assert processor.apply_chat_template(history, add_generation_prompt=True, tokenize=False) == (
        "<s><|im_start|>system\nBe brief.<|im_end|><|im_start|>user\nQ1<|im_end|><|im_start|>assistant\nA1"
        "<|im_end|><|im_start|>user\nQ2<|im_end|><|im_start|>assistant\n")


def test_bos_appears_once_however_the_query_is_tokenized(converted):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(converted["dst"])
    tokenizer = processor.tokenizer
    bos = converted["added"]["<s>"]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Is it odd?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    variants = [
        tokenizer(text)["input_ids"],
        tokenizer(text, add_special_tokens=False)["input_ids"],
        list(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"][0]),
        processor(text=[text], return_tensors="pt")["input_ids"][0].tolist(),
    ]
    expected = [bos] + slow_encode(converted["sp"], converted["added"], text.removeprefix("<s>"))
    for ids in variants:
        assert [int(i) for i in ids] == expected


def test_generation_config_is_greedy_1024_and_stops_at_im_end_alone(converted):
    config = json.loads((converted["dst"] / "generation_config.json").read_text())
    assert config["do_sample"] is False and config.get("num_beams", 1) == 1
    assert config["max_new_tokens"] == 1024
    assert config["eos_token_id"] == converted["added"]["<|im_end|>"]
    assert config["pad_token_id"] == converted["added"]["</s>"]


# -- the hf backend feeds what the original batch_chat fed ----------------------------------------

def _batch_chat_inputs(prompts: list[str], frames_per_prompt: int, sp, added: dict[str, int]):
    """input_ids and attention_mask as InternVL2's batch_chat built them (internlm2-chat, left padding)."""
    rows = []
    for question in prompts:
        if "<image>" not in question:
            question = "<image>\n" + question
        query = ("<|im_start|>system\n" + SYSTEM + "<|im_end|>" + "<|im_start|>user\n" + question + "<|im_end|>"
                 + "<|im_start|>assistant\n")
        block = "<img>" + "<IMG_CONTEXT>" * TOKENS_PER_TILE * frames_per_prompt + "</img>"
        query = query.replace("<image>", block, 1)
        rows.append([added["<s>"]] + slow_encode(sp, added, query))  # the slow tokenizer's add_bos_token
    width = max(len(row) for row in rows)
    pad = added["</s>"]
    ids = [[pad] * (width - len(row)) + row for row in rows]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
    return torch.tensor(ids), torch.tensor(mask)


def test_hf_backend_builds_the_batch_chat_inputs_for_the_released_layout(converted, shared_data):
    from vera.vlm.backends import load_backend
    from vera.vlm.prompts import load_template

    template = load_template(shared_data / "prompts" / "VERA_learner_instruct.txt")
    prompts = [build_learner_prompt(template, PRESET_QUESTIONS["ucf"]),
               build_learner_prompt(template, PRESET_QUESTIONS["xd"][:2])]
    rng = np.random.default_rng(4)
    frames = [[rng.integers(0, 256, (IMAGE, IMAGE, 3), dtype=np.uint8) for _ in range(8)] for _ in prompts]
    requests = [learner_request(prompt, frame_list, f"v{index}", "released")
                for index, (prompt, frame_list) in enumerate(zip(prompts, frames))]
    backend = load_backend("hf", str(converted["dst"]), device="cpu", dtype="float32", local_files_only=True)
    inputs = backend._batch(requests).inputs
    ids, mask = _batch_chat_inputs(prompts, 8, converted["sp"], converted["added"])
    assert ids.shape[0] == 2 and (mask[1] == 0).any()  # the second row is left-padded
    assert torch.equal(inputs["input_ids"], ids)
    assert torch.equal(inputs["attention_mask"], mask)
    # Pixels: InternVL2's own transform (torchvision on PIL: bicubic resize to the tile, ToTensor, Normalize).
    from PIL import Image
    from torchvision import transforms

    original = transforms.Compose([
        transforms.Resize((IMAGE, IMAGE), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    expected = torch.stack([original(Image.fromarray(frame)) for frame_list in frames for frame in frame_list])
    assert torch.equal(inputs["pixel_values"], expected)
    larger = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    assert torch.equal(backend._internvl_tiles(larger), torch.stack([original(Image.fromarray(f)) for f in larger]))
    # A GPU looks the values up on the device (benchmarks/gpu_checks.py compares the two there); the lookup, here:
    from vera.vlm.backends.hf import lookup_on_device

    processor = backend.processor.image_processor
    table = torch.tensor([[(value / 255 - mean) / std for value in range(256)]
                          for mean, std in zip(processor.image_mean, processor.image_std)], dtype=torch.float64)
    pixels = np.stack([np.asarray(frame) for frame in frames[0]])
    looked_up = lookup_on_device(table, pixels, torch.device("cpu"))
    expected = torch.stack([table[c][torch.from_numpy(pixels[..., c]).long()] for c in range(3)], dim=1)
    assert looked_up.shape == (8, 3, IMAGE, IMAGE) and torch.equal(looked_up, expected)
    assert looked_up[3, 1, IMAGE // 3, IMAGE // 2] == table[1, pixels[3, IMAGE // 3, IMAGE // 2, 1]]
    answers = backend.generate(requests, max_new_tokens=3)
    assert len(answers) == 2 and all(answer.extra["new_tokens"] <= 3 for answer in answers)


# -- the other language models of InternVL2 (1B: Qwen2, 4B: Phi-3): already in transformers' names ----

def _write_other(src: Path, arch: str) -> dict:
    """A Qwen2 (Hermes-2 template, byte-level tokenizer) or Phi-3 (phi3-chat, Llama SentencePiece) source."""
    from vera.vlm.tiny_model import _byte_level_tokenizer

    src.mkdir(parents=True)
    chat_tokens = ["<|im_start|>", "<|im_end|>"] if arch == "qwen2" else ["<|system|>", "<|user|>",
                                                                          "<|assistant|>", "<|end|>"]
    if arch == "qwen2":
        tokenizer = _byte_level_tokenizer(["<|endoftext|>"] + chat_tokens + INTERNVL_TOKENS)
        tokenizer.save_pretrained(src)
        config = json.loads((src / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "Qwen2Tokenizer"
        (src / "tokenizer_config.json").write_text(json.dumps(config))
        vocab, sp = len(tokenizer), None
    else:
        model = _train_sentencepiece(src / "sp")  # SentencePiece defaults: dummy prefix, like Llama's
        (src / "tokenizer.model").write_bytes(model.read_bytes())
        sp = spm.SentencePieceProcessor(model_file=str(model))
        added = {"<unk>": 0, "<s>": 1, "</s>": 2}
        added |= {token: sp.get_piece_size() + i for i, token in enumerate(chat_tokens + INTERNVL_TOKENS)}
        decoder = {str(i): {"content": token, "special": True} for token, i in added.items()}
        (src / "tokenizer_config.json").write_text(json.dumps(
            {"added_tokens_decoder": decoder, "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
             "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}))
        vocab = max(added.values()) + 1
    weights = {name: tensor for name, tensor in _original_weights(vocab).items()
               if not name.startswith("language_model.")}
    generator = torch.Generator().manual_seed(5)
    layer_shapes = {"self_attn.o_proj.weight": (HIDDEN, HIDDEN), "mlp.down_proj.weight": (HIDDEN, 96),
                    "input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,)}
    if arch == "qwen2":
        layer_shapes |= {"self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.q_proj.bias": (HIDDEN,),
                         "self_attn.k_proj.weight": (16, HIDDEN), "self_attn.k_proj.bias": (16,),
                         "self_attn.v_proj.weight": (16, HIDDEN), "self_attn.v_proj.bias": (16,),
                         "mlp.gate_proj.weight": (96, HIDDEN), "mlp.up_proj.weight": (96, HIDDEN)}
    else:
        layer_shapes |= {"self_attn.qkv_proj.weight": (3 * HIDDEN, HIDDEN), "mlp.gate_up_proj.weight": (192, HIDDEN)}
    for layer in range(LAYERS):
        for name, shape in layer_shapes.items():
            weights[f"language_model.model.layers.{layer}.{name}"] = torch.randn(*shape, generator=generator) * 0.2
    weights["language_model.model.embed_tokens.weight"] = torch.randn(vocab, HIDDEN, generator=generator)
    weights["language_model.model.norm.weight"] = torch.ones(HIDDEN)
    weights["language_model.lm_head.weight"] = torch.randn(vocab, HIDDEN, generator=generator)
    save_file(weights, str(src / "model.safetensors"))
    config = _original_config(vocab)
    common = {"hidden_size": HIDDEN, "intermediate_size": 96, "num_hidden_layers": LAYERS, "vocab_size": vocab,
              "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "attn_implementation": "eager"}
    if arch == "qwen2":
        config["template"] = "Hermes-2"
        config["llm_config"] = common | {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                         "num_attention_heads": 4, "num_key_value_heads": 1,
                                         "tie_word_embeddings": True, "rope_theta": 1000000.0}
    else:
        config["template"] = "phi3-chat"
        config["llm_config"] = common | {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
                                         "num_attention_heads": 4, "num_key_value_heads": 4,
                                         "tie_word_embeddings": False, "rope_scaling": None,
                                         "original_max_position_embeddings": 4096, "bos_token_id": 1,
                                         "eos_token_id": 2, "pad_token_id": 2}
    (src / "config.json").write_text(json.dumps(config))
    return {"weights": weights, "sp": sp}


@pytest.mark.parametrize("arch", ["qwen2", "phi3"])
def test_qwen2_and_phi3_checkpoints_convert(tmp_path, arch, shared_data):
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from vera.vlm.convert_internvl2 import convert

    source = _write_other(tmp_path / "src", arch)
    report = convert(tmp_path / "src", tmp_path / "dst")
    tied = arch == "qwen2"
    assert report["skipped_source_tensors"] == (
        {"language_model.lm_head.weight": "tied to the input embeddings, as in the original model"} if tied else {})
    native = _converted_weights(tmp_path / "dst")
    renamed = {name.replace("model.language_model.", "language_model.model.").replace(
        "lm_head.", "language_model.lm_head."): tensor for name, tensor in native.items()
        if not name.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    expected = {name: tensor for name, tensor in source["weights"].items()
                if name.startswith("language_model.") and not (tied and "lm_head" in name)}
    assert sorted(renamed) == sorted(expected)
    assert all(torch.equal(renamed[name], tensor) for name, tensor in expected.items())
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.text_config.model_type == arch
    head, embed = model.lm_head.weight, model.model.language_model.embed_tokens.weight
    assert (head.data_ptr() == embed.data_ptr()) == tied

    processor = AutoProcessor.from_pretrained(tmp_path / "dst")
    messages = [{"role": "user", "content": "Q"}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if arch == "qwen2":
        assert rendered == f"<|im_start|>system\n{SYSTEM}<|im_end|><|im_start|>user\nQ<|im_end|><|im_start|>assistant\n"
        original = AutoTokenizer.from_pretrained(tmp_path / "src")
        reference = lambda text: original(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    else:
        assert rendered == f"<s><|system|>\n{SYSTEM}<|end|><|user|>\nQ<|end|><|assistant|>\n"
        # The special tokens' ids as the source checkpoint's own tokenizer_config.json assigns them.
        decoder = json.loads((tmp_path / "src" / "tokenizer_config.json").read_text())["added_tokens_decoder"]
        added = {entry["content"]: int(index) for index, entry in decoder.items()}
        assert set(added) == {"<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
                              *INTERNVL_TOKENS}
        reference = lambda text: slow_encode(source["sp"], added, text)  # noqa: E731
    for text in _strings(shared_data) + [rendered]:
        assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == reference(text), repr(text[:60])
    sep = "<|im_end|>" if arch == "qwen2" else "<|end|>"
    generation = json.loads((tmp_path / "dst" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == (original.convert_tokens_to_ids(sep) if arch == "qwen2" else added[sep])


# -- keys a config leaves out -------------------------------------------------------------------

def _without(src: Path, *keys: str) -> None:
    """Drop ``keys`` from the checkpoint's vision_config, as a config written with the class defaults may."""
    config = json.loads((src / "config.json").read_text())
    for key in keys:
        config["vision_config"].pop(key)
    (src / "config.json").write_text(json.dumps(config))


def test_a_vision_config_without_qk_normalization_builds_query_key_norms(tmp_path):
    """InternVisionConfig's own default is qk_normalization=True (InternVL2-26B and larger use the norms)."""
    from transformers import AutoModelForImageTextToText

    from vera.errors import run_cli
    from vera.vlm.convert_internvl2 import main

    norms = {f"vision_model.encoder.layers.{layer}.attn.{name}.weight": torch.rand(VIT_HIDDEN) + 0.5
             for layer in range(LAYERS) for name in ("q_norm", "k_norm")}
    original = write_original(tmp_path / "src", extra=norms)
    _without(tmp_path / "src", "qk_normalization")
    assert run_cli(main, [str(tmp_path / "src"), str(tmp_path / "dst")]) == 0
    vision = json.loads((tmp_path / "dst" / "config.json").read_text())["vision_config"]
    assert vision["use_qk_norm"] is True
    assert (vision["attention_bias"], vision["norm_type"]) == (True, "layer_norm")  # stated, so kept
    model, info = AutoModelForImageTextToText.from_pretrained(tmp_path / "dst", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    for layer in range(LAYERS):
        for name in ("q_norm", "k_norm"):
            got = state[f"model.vision_tower.encoder.layer.{layer}.attention.{name}.weight"]
            assert torch.equal(got, original["weights"][f"vision_model.encoder.layers.{layer}.attn.{name}.weight"])


def test_absent_vision_keys_take_the_original_class_defaults(tmp_path):
    """Without qkv_bias the class builds qkv without a bias (False), without norm_type RMSNorms (no bias), without
    qk_normalization the query/key norms: a checkpoint whose tensors say otherwise is refused."""
    from vera.vlm.convert_internvl2 import convert

    write_original(tmp_path / "bias")
    _without(tmp_path / "bias", "qkv_bias")
    with pytest.raises(VeraError, match=r"^6 tensors do not fit the native shapes, e\.g\. "
                                        r"vision_model\.encoder\.layers\.0\.attn\.qkv\.bias .*: native None$"):
        convert(tmp_path / "bias", tmp_path / "out")
    write_original(tmp_path / "rms")
    _without(tmp_path / "rms", "norm_type")
    with pytest.raises(VeraError, match=r"^4 tensors do not fit the native shapes, e\.g\. "
                                        r"vision_model\.encoder\.layers\.0\.norm1\.bias .*: native None$"):
        convert(tmp_path / "rms", tmp_path / "out")
    write_original(tmp_path / "norms")
    _without(tmp_path / "norms", "qk_normalization")
    with pytest.raises(VeraError, match=r"^4 native parameters have no source tensor, e\.g\. "
                                        r"model\.vision_tower\.encoder\.layer\.0\.attention\.k_norm\.weight"):
        convert(tmp_path / "norms", tmp_path / "out")
    assert not (tmp_path / "out").exists()
