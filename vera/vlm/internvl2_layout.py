"""Where each tensor of an original InternVL2 checkpoint goes in the native transformers model.

Original layout (``InternVLChatModel``):

- ``vision_model.*``: InternViT. Per layer ``attn.qkv`` (rows: all query, all
  key, all value), ``attn.proj``, optional ``attn.q_norm``/``k_norm``,
  ``mlp.fc1``/``fc2``, ``norm1``/``norm2``, layer scales ``ls1``/``ls2``;
  embeddings ``class_embedding``, ``patch_embedding``, ``position_embedding``.
- ``mlp1.{0,1,3}``: LayerNorm, Linear, (GELU), Linear: the projector.
- ``language_model.*``: InternLM2 (``tok_embeddings``, per layer
  ``attention.wqkv``/``wo``, ``feed_forward.w1``/``w3``/``w2`` = gate/up/down,
  ``attention_norm``/``ffn_norm``, final ``norm``, ``output``), or a
  Qwen2/Phi-3/Llama model already in transformers' names.

InternLM2's ``wqkv`` rows are grouped per key-value head: for each of the
``num_key_value_heads`` groups, that group's ``heads / kv_heads`` query heads,
then its key head, then its value head, ``head_dim`` rows each.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vera.errors import VeraError

Transform = Callable[[torch.Tensor], torch.Tensor]
LLM_ARCHS = {"InternLM2ForCausalLM": "internlm2", "Qwen2ForCausalLM": "qwen2", "Phi3ForCausalLM": "phi3",
             "LlamaForCausalLM": "llama"}
# What InternViT's configuration class (``InternVisionConfig``) gives a key that config.json leaves out; a
# checkpoint is built from the class, so a missing key means this value, not whatever a converter prefers.
VISION_DEFAULTS = {
    "num_channels": 3, "patch_size": 14, "image_size": 224, "qkv_bias": False, "hidden_size": 3200,
    "num_attention_heads": 25, "intermediate_size": 12800, "qk_normalization": True, "num_hidden_layers": 48,
    "hidden_act": "gelu", "norm_type": "rms_norm", "layer_norm_eps": 1e-6,
}
# Keys of the language model's config that describe the original run, not the model.
_RUNTIME_KEYS = ("architectures", "auto_map", "_name_or_path", "attn_implementation", "torch_dtype", "dtype",
                 "transformers_version", "use_flash_attn", "_attn_implementation", "_flash_attn_2_enabled")

_VISION_LAYER = {
    "attn.proj": "attention.projection_layer", "attn.q_norm": "attention.q_norm", "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2", "norm1": "layernorm_before", "norm2": "layernorm_after",
}
_VISION_EMBEDDINGS = {
    "class_embedding": "cls_token", "position_embedding": "position_embeddings",
    "patch_embedding.weight": "patch_embeddings.projection.weight",
    "patch_embedding.bias": "patch_embeddings.projection.bias",
}
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_INTERNLM2_LAYER = {
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
VISION = "model.vision_tower."
TEXT = "model.language_model."


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _part(index: int, parts: int) -> Transform:
    """The ``index``-th of ``parts`` equal row blocks (InternViT's fused q, k, v)."""
    return lambda tensor: tensor.chunk(parts, dim=0)[index]


def split_internlm2_wqkv(tensor: torch.Tensor, heads: int, kv_heads: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """(q, k, v) rows of InternLM2's fused ``wqkv`` weight or bias (layout: see the module docstring)."""
    groups = heads // kv_heads
    grouped = tensor.reshape(kv_heads, groups + 2, head_dim, *tensor.shape[1:])
    rest = tensor.shape[1:]
    return (grouped[:, :groups].reshape(heads * head_dim, *rest),
            grouped[:, groups].reshape(kv_heads * head_dim, *rest),
            grouped[:, groups + 1].reshape(kv_heads * head_dim, *rest))


def _rope_parameters(llm: dict) -> dict:
    rope = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        kind = scaling.get("type") or scaling.get("rope_type")
        if kind not in ("linear", "dynamic"):
            raise VeraError(f"InternLM2 rope scaling {kind!r} is not supported (linear and dynamic are)")
        # InternLM2's dynamic NTK and transformers' "dynamic" change the base only past
        # max_position_embeddings (32k for InternVL2-8B), far beyond VERA's prompts.
        rope.update(rope_type=kind, factor=float(scaling["factor"]))
    return rope


def vision_settings(config: dict) -> dict:
    """The checkpoint's ``vision_config``, each key it leaves out read as ``InternVisionConfig`` reads it."""
    return {**VISION_DEFAULTS, **(config.get("vision_config") or {})}


@dataclass
class SourceLayout:
    """An original InternVL2 config, and the name/shape mapping it implies."""

    config: dict
    llm_arch: str
    template: str
    image_size: int
    image_tokens: int
    dtype: str

    @classmethod
    def from_config(cls, config: dict, src: Path) -> SourceLayout:
        where = src / "config.json"
        if "InternVLChatModel" not in (config.get("architectures") or []):
            raise VeraError(f"{where}: not an original InternVL2 checkpoint (architectures "
                            f"{config.get('architectures')}, expected InternVLChatModel)")
        llm, vision = config.get("llm_config") or {}, vision_settings(config)
        arch = (llm.get("architectures") or [None])[0]
        if arch not in LLM_ARCHS:
            raise VeraError(f"{where}: language model {arch} is not supported ({', '.join(LLM_ARCHS)} are)")
        if config.get("ps_version", "v1") != "v2":
            raise VeraError(f"{where}: ps_version {config.get('ps_version')!r}: the native pixel shuffle is 'v2'")
        image_size = config.get("force_image_size") or vision.get("image_size")
        if image_size != vision.get("image_size"):
            raise VeraError(f"{where}: force_image_size {image_size} differs from the vision image size "
                            f"{vision.get('image_size')}; not supported")
        if vision["qk_normalization"] and vision["layer_norm_eps"] != 1e-6:
            raise VeraError(f"{where}: query/key norms with eps {vision['layer_norm_eps']} are not supported")
        ratio = float(config.get("downsample_ratio", 0.5))
        tokens = int((image_size // vision["patch_size"]) ** 2 * ratio ** 2)
        dtype = str(config.get("torch_dtype") or llm.get("torch_dtype") or "bfloat16")
        return cls(config, LLM_ARCHS[arch], config.get("template", ""), int(image_size), tokens, dtype)

    # -- config -------------------------------------------------------------------------------

    def _text_config(self) -> dict:
        llm = self.config["llm_config"]
        if self.llm_arch != "internlm2":
            text = {key: value for key, value in llm.items() if key not in _RUNTIME_KEYS}
            text["model_type"] = self.llm_arch
            return text
        heads = llm["num_attention_heads"]
        return {
            "model_type": "llama", "vocab_size": llm["vocab_size"], "hidden_size": llm["hidden_size"],
            "intermediate_size": llm["intermediate_size"], "num_hidden_layers": llm["num_hidden_layers"],
            "num_attention_heads": heads, "num_key_value_heads": llm.get("num_key_value_heads", heads),
            "head_dim": llm["hidden_size"] // heads, "hidden_act": llm.get("hidden_act", "silu"),
            "max_position_embeddings": llm.get("max_position_embeddings", 2048),
            "rms_norm_eps": llm.get("rms_norm_eps", 1e-6), "attention_bias": bool(llm.get("bias", False)),
            "mlp_bias": False, "rope_parameters": _rope_parameters(llm),
            "tie_word_embeddings": bool(llm.get("tie_word_embeddings", False)),
            "bos_token_id": llm.get("bos_token_id", 1), "eos_token_id": llm.get("eos_token_id", 2),
            "pad_token_id": llm.get("pad_token_id", 0),
        }

    def _vision_config(self) -> dict:
        vision = vision_settings(self.config)
        return {
            "hidden_size": vision["hidden_size"], "intermediate_size": vision["intermediate_size"],
            "num_attention_heads": vision["num_attention_heads"], "num_hidden_layers": vision["num_hidden_layers"],
            "image_size": [self.image_size] * 2, "patch_size": [vision["patch_size"]] * 2,
            "num_channels": vision["num_channels"], "attention_bias": bool(vision["qkv_bias"]),
            "use_qk_norm": bool(vision["qk_normalization"]), "norm_type": vision["norm_type"],
            "layer_norm_eps": vision["layer_norm_eps"], "hidden_act": vision["hidden_act"], "use_mean_pooling": True,
            "attention_dropout": 0.0, "projection_dropout": 0.0, "hidden_dropout_prob": 0.0,
        }

    def native_config(self, image_token_id: int) -> dict:
        """Keyword arguments of ``InternVLConfig`` for the converted model."""
        text = self._text_config()
        return {
            "vision_config": self._vision_config(), "text_config": text, "image_token_id": image_token_id,
            "image_seq_length": self.image_tokens, "downsample_ratio": float(self.config.get("downsample_ratio", 0.5)),
            "projector_hidden_act": "gelu", "vision_feature_layer": int(self.config.get("select_layer", -1)),
            "vision_feature_select_strategy": "default",
            "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        }

    # -- tensors ------------------------------------------------------------------------------

    def skip_reason(self, name: str) -> str | None:
        """Why a source tensor that has no target is left out on purpose (None: it is an error)."""
        if name.endswith("rotary_emb.inv_freq"):
            return "rotary frequencies: recomputed from the config"
        tied_heads = ("language_model.lm_head.weight", "language_model.output.weight")
        if name in tied_heads and self._text_config().get("tie_word_embeddings"):
            return "tied to the input embeddings, as in the original model"
        return None

    def targets(self, name: str) -> list[tuple[str, Transform]] | None:
        """The native ``(name, transform)`` pairs that ``name`` becomes; None when it has no place."""
        if name.startswith("vision_model."):
            return self._vision_targets(name.removeprefix("vision_model."))
        match = re.fullmatch(r"mlp1\.(\d+)\.(weight|bias)", name)
        if match:
            module = _PROJECTOR.get(match[1])
            return [(f"model.multi_modal_projector.{module}.{match[2]}", _same)] if module else None
        if name.startswith("language_model."):
            rest = name.removeprefix("language_model.")
            if self.llm_arch == "internlm2":
                return self._internlm2_targets(rest)
            if rest == "lm_head.weight":
                return None if self.skip_reason(name) else [("lm_head.weight", _same)]
            return [(TEXT + rest.removeprefix("model."), _same)] if rest.startswith("model.") else None
        return None

    def _vision_targets(self, name: str) -> list[tuple[str, Transform]] | None:
        if name.startswith("embeddings."):
            target = _VISION_EMBEDDINGS.get(name.removeprefix("embeddings."))
            return [(f"{VISION}embeddings.{target}", _same)] if target else None
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if match:
            layer, module, kind = match.groups()
            prefix = f"{VISION}encoder.layer.{layer}."
            if module == "attn.qkv":
                return [(f"{prefix}attention.{part}_proj.{kind}", _part(index, 3))
                        for index, part in enumerate("qkv")]
            target = _VISION_LAYER.get(module)
            return [(f"{prefix}{target}.{kind}", _same)] if target else None
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.ls([12])", name)
        if match:
            return [(f"{VISION}encoder.layer.{match[1]}.lambda_{match[2]}", _same)]
        return None

    def _internlm2_targets(self, name: str) -> list[tuple[str, Transform]] | None:
        llm = self.config["llm_config"]
        fixed = {"model.tok_embeddings.weight": f"{TEXT}embed_tokens.weight", "model.norm.weight": f"{TEXT}norm.weight",
                 "output.weight": "lm_head.weight"}
        if name in fixed:
            if name == "output.weight" and self._text_config()["tie_word_embeddings"]:
                return None
            return [(fixed[name], _same)]
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if not match:
            return None
        layer, module, kind = match.groups()
        prefix = f"{TEXT}layers.{layer}."
        if module == "attention.wqkv":
            heads = llm["num_attention_heads"]
            kv_heads = llm.get("num_key_value_heads", heads)
            head_dim = llm["hidden_size"] // heads
            return [(f"{prefix}self_attn.{part}_proj.{kind}",
                     lambda tensor, index=index: split_internlm2_wqkv(tensor, heads, kv_heads, head_dim)[index])
                    for index, part in enumerate("qkv")]
        target = _INTERNLM2_LAYER.get(module)
        return [(f"{prefix}{target}.{kind}", _same)] if target else None
