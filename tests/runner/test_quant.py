"""Int8 weight-only models: the kernels against their own reference, the quality figures
against a hand-made case, and the refusals.

The reference is the same quantised weights through a plain dequantise-then-matmul in fp32.
The CPU kernel takes activations in bf16 and returns bf16 (a bf16 step at a logit of ~2 is
0.0156), so below `DEQUANT_ROWS` rows logits differ from the reference by up to ~0.02 on the
demo models (measured: 0.009 demo-small, 0.021 demo-large); from `DEQUANT_ROWS` rows on (a
dequantised weight through oneDNN) by ~1e-6. `LOGIT_TOL` bounds both; greedy tokens must be
the reference's arg-max wherever the reference's top two logits are at least `LOGIT_TOL` apart.
"""

from __future__ import annotations

import copy
import math
import sys
import types
from functools import cache

import pytest
import torch

from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.runner.model import PagedCausalLM
from flexmesh.actors.runner.quant import (
    DEQUANT_ROWS,
    Int8Weight,
    UnsupportedQuantizationError,
    _npu_linear,
    check_quantization,
    quantize_int8,
    reference_linear,
)
from flexmesh.bench.quant_bench import agreement, quality, teacher_forced_logits
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS

LOGIT_TOL = 0.05
NEW_TOKENS = 24


@cache
def _int8_engine(path: str) -> Engine:
    return Engine(path, quantization="int8")


def _reference(model: PagedCausalLM) -> PagedCausalLM:
    """The same model (same weights) with every int8 projection through `reference_linear`."""
    ref = copy.copy(model)

    def linear(x: torch.Tensor, w: object, b: torch.Tensor | None = None) -> torch.Tensor:
        assert isinstance(w, Int8Weight), "every projection of an int8 model is int8"
        return reference_linear(x, w, b)

    ref.linear = linear  # type: ignore[method-assign]
    return ref


def _prompts(engine: Engine) -> list[list[int]]:
    return [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]


def test_int8_model_holds_int8_weights(small_path: str) -> None:
    model = _int8_engine(small_path).model
    fp32 = Engine(small_path).model
    weights = [w for lw in model.layers for w in (lw.qkv_w, lw.o_w, lw.gate_up_w, lw.down_w)]
    assert all(isinstance(w, Int8Weight) for w in [*weights, model.lm_head])
    assert all(w.qweight.dtype == torch.int8 for w in weights)  # type: ignore[union-attr]
    assert model.embed.dtype == torch.float32  # read one row a step: left as loaded
    # Projections and LM head at a quarter of the bytes (+ scales); the embedding unchanged.
    assert model.step_read_bytes < 0.27 * fp32.step_read_bytes
    assert model.quantization == "int8" and fp32.quantization == "none"


@pytest.mark.parametrize("batched", [False, True], ids=["batch1", "batched"])
def test_logits_match_reference(model_path: str, batched: bool) -> None:
    model = _int8_engine(model_path).model
    seqs = _prompts(_int8_engine(model_path))
    batches = [seqs] if batched else [[s] for s in seqs]
    if batched:  # one pass over every prompt: the dequantise-then-GEMM path
        assert sum(map(len, seqs)) >= DEQUANT_ROWS
    ref = _reference(model)
    for batch in batches:
        got, want = teacher_forced_logits(model, batch), teacher_forced_logits(ref, batch)
        for g, w in zip(got, want, strict=True):
            assert (g - w).abs().max().item() <= LOGIT_TOL


@pytest.mark.parametrize("batched", [False, True], ids=["batch1", "batched"])
def test_greedy_tokens_match_reference(model_path: str, batched: bool) -> None:
    engine = _int8_engine(model_path)
    prompts = _prompts(engine)
    sp = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = (
        engine.generate(prompts, sp) if batched else [engine.generate([p], sp)[0] for p in prompts]
    )
    ref = _reference(engine.model)
    checked = 0
    for prompt, out in zip(prompts, outs, strict=True):
        # The reference reads the engine's own tokens (teacher forced), so one near-tie does
        # not excuse every later position.
        logits = teacher_forced_logits(ref, [prompt + out[:-1]])[0][len(prompt) - 1 :]
        top2 = logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) >= LOGIT_TOL
        want = logits.argmax(-1)
        got = torch.tensor(out)
        assert torch.equal(got[clear], want[clear]), (prompt, out)
        checked += int(clear.sum())
    assert checked >= 0.5 * NEW_TOKENS * len(prompts)  # the exemption stays the exception


def test_agreement_against_a_hand_made_case() -> None:
    ln3 = math.log(3.0)
    ref = [torch.tensor([[0.0, ln3], [1.0, 0.0]])]  # softmax: [1/4, 3/4], then [e/(e+1), ...]
    other = [torch.tensor([[ln3, 0.0], [1.0, 0.0]])]  # [3/4, 1/4] (top-1 flips), then equal
    got = agreement(ref, other)
    # KL([1/4, 3/4] || [3/4, 1/4]) = 1/4 ln(1/3) + 3/4 ln 3 = ln(3) / 2; the second is 0.
    assert got["top1_agreement"] == 0.5 and got["positions"] == 2
    assert got["kl"] == pytest.approx(ln3 / 4, rel=1e-6)  # fp32 logits


def test_quality_comes_from_real_forward_passes(small_path: str) -> None:
    fp32, int8 = Engine(small_path), _int8_engine(small_path)
    prompts = _prompts(fp32)[:3]
    # teacher_forced_logits is a real forward pass: its last row is the engine's own answer.
    last = teacher_forced_logits(fp32.model, [prompts[0]])[0][-1]
    assert torch.allclose(last, torch.tensor(fp32.next_token_logits(prompts[0])), atol=1e-5)
    q = quality({"fp32": fp32.model, "same": fp32.model, "int8": int8.model}, prompts)
    assert q["same"]["top1_agreement"] == 1.0 and q["same"]["kl"] < 1e-9
    assert 0.0 < q["int8"]["kl"] < 0.01 and 0.5 < q["int8"]["top1_agreement"] <= 1.0
    assert q["int8"]["positions"] == sum(map(len, prompts))


def test_npu_kernel_call_matches_its_documented_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch_npu.npu_weight_quant_batchmatmul(x [M, K] fp16/bf16, weight [K, N] int8,
    antiquant_scale [N] in x's dtype, ...): checked by a stand-in, since no NPU is here."""
    calls = []

    def fake(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        assert x.dtype in (torch.float16, torch.bfloat16) and x.dim() == 2
        assert weight.dtype == torch.int8 and weight.shape == (x.shape[1], scale.shape[0])
        assert scale.dtype == x.dtype and scale.dim() == 1
        calls.append(1)
        return (x.float() @ (weight.float() * scale.float()[None, :])).to(x.dtype)

    monkeypatch.setitem(
        sys.modules, "torch_npu", types.SimpleNamespace(npu_weight_quant_batchmatmul=fake)
    )
    w = quantize_int8(torch.randn(48, 64) * 0.02, torch.bfloat16)
    x = torch.randn(3, 64)
    got = _npu_linear(x, w)
    assert calls and got.dtype == torch.float32
    assert torch.allclose(got, reference_linear(x, w), atol=2e-2)


def test_cpu_path_never_imports_torch_npu(small_path: str) -> None:
    had = "torch_npu" in sys.modules
    _int8_engine(small_path).generate([[1, 2, 3]], SamplingParams(max_tokens=2))
    assert ("torch_npu" in sys.modules) == had


def test_refusals_are_clear(small_path: str) -> None:
    with pytest.raises(UnsupportedQuantizationError, match="not available on device cuda"):
        check_quantization("int8", torch.device("cuda"))
    with pytest.raises(UnsupportedQuantizationError, match="'int4' is unknown"):
        Engine(small_path, quantization="int4")  # refused before loading anything
    with pytest.raises(UnsupportedQuantizationError, match="not a multiple of 16"):
        quantize_int8(torch.randn(8, 40), torch.bfloat16)
    packed = Engine(small_path).model
    assert packed.packed
    with pytest.raises(UnsupportedQuantizationError, match="before packing"):
        packed.quantize("int8")
