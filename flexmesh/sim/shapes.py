"""Model shapes the simulator predicts step costs from when a profile has no fit of the model.

A shape comes from the model's own `config.json` when its folder is under `models_dir` (what
the mesh would load), else from `KNOWN_SHAPES`: the Qwen2.5 family, transcribed from the public
Hugging Face configs and cited in `SOURCES`. Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim.profile import ModelShape

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
"""Bytes per weight and KV value of a config's `torch_dtype` (newer configs say `dtype`)."""
DEFAULT_DTYPE_BYTES = 2
"""A config with no dtype is taken as bf16, as FlexMesh serves it (`engine.dtype`)."""

_KITHARA = "AI-Hypercomputer/kithara @ 5e71f0aa4e47730e9f45df571443ad61cbe3ba11"
_SUROGATE = (
    "invergent-ai/surogate @ fc4b5200c443f86420637794409f5f844a1b806f : "
    "csrc/src/models/qwen25/qwen25.cpp (create_from_preset_name)"
)
_CARDS = "ZHUI/paddlenlp_model_readme @ 40a7101e89dcf9a0dedb0e0d48c8c357fcc95996"


def _qwen(
    hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int, ctx: int
) -> ModelShape:
    return ModelShape(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        intermediate_size=inter,
        vocab_size=vocab,
        dtype_bytes=2,
        max_position_tokens=ctx,
    )


# (hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size,
# vocab_size, max_position_embeddings) of each Qwen2.5 base model; head_dim is hidden / heads
# (64 for 0.5B, 128 for the rest).
_QWEN25 = {
    "0.5B": _qwen(896, 24, 14, 2, 4864, 151936, 32768),
    "1.5B": _qwen(1536, 28, 12, 2, 8960, 151936, 131072),
    "3B": _qwen(2048, 36, 16, 2, 11008, 151936, 32768),
    "7B": _qwen(3584, 28, 28, 4, 18944, 152064, 131072),
    "14B": _qwen(5120, 48, 40, 8, 13824, 152064, 131072),
    "32B": _qwen(5120, 64, 40, 8, 27648, 152064, 131072),
    "72B": _qwen(8192, 80, 64, 8, 29568, 152064, 131072),
}
INSTRUCT_CONTEXT_TOKENS = 32768
"""`max_position_embeddings` of the Instruct configs: their cards' 131,072 tokens for 7B and up
need YaRN `rope_scaling` added to the config, which the served configs do not carry."""
_CONFIG_SOURCE = {
    "0.5B": f"{_KITHARA} : kithara/model/hf_compatibility/qwen_model_configs.py (qwen25_d5_config)",
    "1.5B": f"{_KITHARA} : tests/model/hf_compatibility/testdata/qwen2.5-1.5b_config.json",
    "3B": f"{_KITHARA} : tests/model/hf_compatibility/testdata/qwen2.5-3b_config.json",
    "7B": f"{_KITHARA} : tests/model/hf_compatibility/testdata/qwen2.5-7b_config.json",
    "14B": f"{_KITHARA} : tests/model/hf_compatibility/testdata/qwen2.5-14b_config.json",
    "32B": f"{_KITHARA} : tests/model/hf_compatibility/testdata/qwen2.5-32b_config.json",
    "72B": f"{_KITHARA} : kithara/model/hf_compatibility/qwen_model_configs.py (qwen25_72b_config)",
}

KNOWN_SHAPES: dict[str, ModelShape] = {
    **{f"Qwen2.5-{size}": shape for size, shape in _QWEN25.items()},
    **{
        f"Qwen2.5-{size}-Instruct": replace(shape, max_position_tokens=INSTRUCT_CONTEXT_TOKENS)
        for size, shape in _QWEN25.items()
    },
}
"""Shapes of models the simulator knows without their files (bf16), by served model name."""

SOURCES: dict[str, str] = {
    **{
        f"Qwen2.5-{size}": (
            f"https://huggingface.co/Qwen/Qwen2.5-{size}/blob/main/config.json as vendored in "
            f"{_CONFIG_SOURCE[size]}; all six fields cross-checked against {_SUROGATE} (vocab_size "
            f"aside: that file writes 151936 for every size)"
        )
        for size in _QWEN25
    },
    **{
        f"Qwen2.5-{size}-Instruct": (
            f"https://huggingface.co/Qwen/Qwen2.5-{size}-Instruct/blob/main/config.json: "
            f"layers and Q/KV heads from its model card "
            f"({_CARDS} : Qwen/Qwen2.5-{size}-Instruct/index.md, 'Number of Layers', "
            f"'Number of Attention Heads (GQA)'); hidden, intermediate and "
            f"vocab sizes from the base model's config (Qwen2.5-{size}), which the instruction "
            f"tuning keeps"
        )
        for size in _QWEN25
    },
}
"""Where each known shape's numbers come from (read through public mirrors of the configs)."""

UNVERIFIED: tuple[str, ...] = tuple(f"Qwen2.5-{size}-Instruct" for size in _QWEN25)
"""Shapes whose own config.json was not read here: an Instruct model's layers and heads are from
its model card, its hidden, intermediate and vocab sizes from the base model's config. The
parameter count these give matches the Instruct card's (0.49B ... 72.7B) to its rounding, except
32B: 32.76B against the card's 32.5B, which the card also says for the base model whose config
was read."""


def shape_of(name: str, models_dir: str | None) -> ModelShape | None:
    """`name`'s shape: from `<models_dir>/<name>/config.json` when that folder exists, else
    `KNOWN_SHAPES` (by the whole name, then by its last path part), else None."""
    if models_dir:
        folder = Path(models_dir) / name
        if (folder / "config.json").is_file():
            return _from_config(folder / "config.json")
    return KNOWN_SHAPES.get(name) or KNOWN_SHAPES.get(name.rsplit("/", 1)[-1])


def _from_config(path: Path) -> ModelShape:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(str(path), f"is not a readable JSON config: {exc}") from exc
    if not isinstance(cfg, Mapping):
        raise InvalidRequestError(str(path), "is not a JSON object")
    # A multimodal config nests its language model's fields.
    text = cfg.get("text_config")
    if "hidden_size" not in cfg and isinstance(text, Mapping):
        cfg = {**text, **{k: v for k, v in cfg.items() if k in ("torch_dtype", "dtype")}}
    try:
        return ModelShape.from_hf_config(cfg, _dtype_bytes(cfg, path))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, InvalidRequestError):
            raise
        raise InvalidRequestError(str(path), f"lacks a shape field: {exc!r}") from exc


def _dtype_bytes(cfg: Mapping[str, Any], path: Path) -> int:
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    if dtype is None:
        return DEFAULT_DTYPE_BYTES
    bytes_ = DTYPE_BYTES.get(str(dtype).removeprefix("torch."))
    if bytes_ is None:
        raise InvalidRequestError(
            f"{path}: torch_dtype", f"is {dtype!r}; known dtypes are {sorted(DTYPE_BYTES)}"
        )
    return bytes_
