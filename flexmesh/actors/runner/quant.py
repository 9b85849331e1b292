"""Int8 weight-only quantisation of a `PagedCausalLM`, with every kernel behind one seam.

`PagedCausalLM.quantize("int8")` replaces the projection weights (fused QKV, O, gate/up, down and
the LM head) by `Int8Weight`s built from the loaded checkpoint: symmetric int8 with one scale
per output channel. `PagedCausalLM.linear` hands an `Int8Weight` to `Int8Weight.linear`, which
picks the device's kernel, so the forward pass is the same code at every precision. The
embedding table stays as loaded: a step reads one row of it.

Kernels (figures in docs/engine.md, "Int8 weight-only models"):

- cpu: ATen's `_weight_int8pack_mm` with bf16 activations and scales (its AVX512/AVX2 path
  exists for bf16 only; with fp32 activations it runs a scalar loop at ~2 GB/s). It is compute
  bound (~1 ms per row on demo-large), so from `DEQUANT_ROWS` rows on (prompt chunks) the weight
  is dequantised and multiplied by oneDNN instead, which then costs ~1.1x fp32.
- npu: `torch_npu.npu_weight_quant_batchmatmul` (Ascend's weight-quantised matmul; x fp16 or
  bf16 `[M, K]`, weight int8 `[K, N]` given as the transposed view of `[N, K]`, the layout its
  documentation recommends per channel, antiquant_scale `[N]` in x's dtype). `torch_npu` is
  imported only there, on a worker that already runs on an NPU.
- cuda and anything else: refused at load (`check_quantization`), and by the mesh config.

`reference_linear` is the same quantised weight through a plain dequantise-then-matmul, what the
tests hold every kernel to.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flexmesh.meshcore.config import QUANTIZATION_DEVICES, QUANTIZATIONS

DEQUANT_ROWS = 128
"""From this many rows on, a CPU projection dequantises its weight and runs oneDNN's fp32 GEMM
(measured on demo-large's 49 projections: 122 ms against 136 for the int8 kernel at 128 rows,
390 against 533 at 512; the int8 kernel wins below 128)."""
K_MULTIPLE = 16
"""ATen's int8 kernel walks the input dimension 16 values at a time, without a tail."""
PROJECTIONS = ("qkv_w", "o_w", "gate_up_w", "down_w")
"""The per-layer weights that are quantised (`LayerWeights` fields)."""


class UnsupportedQuantizationError(ValueError):
    """The quantisation asked for is unknown, or not available on this device or model."""


def check_quantization(quantization: str, device: torch.device) -> None:
    """Refuse a quantisation this device cannot run, with the reason in the message."""
    if quantization not in QUANTIZATIONS:
        raise UnsupportedQuantizationError(
            f"quantization {quantization!r} is unknown; known: {', '.join(QUANTIZATIONS)}"
        )
    devices = QUANTIZATION_DEVICES.get(quantization)
    if devices is not None and device.type not in devices:
        raise UnsupportedQuantizationError(
            f"quantization {quantization} is not available on device {device.type}; it runs on "
            f"{' and '.join(devices)} (cpu: ATen's int8 weight-packed matmul, npu: "
            "torch_npu.npu_weight_quant_batchmatmul)"
        )


def activation_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """The dtype the int8 kernels take activations and scales in: the model's own when it is
    fp16 or bf16, else bf16 (neither kernel multiplies fp32 activations at speed)."""
    return model_dtype if model_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


@dataclass(frozen=True)
class Int8Weight:
    """A projection weight in int8 with one scale per output channel (`w ~ qweight * scale`).

    It stands where the model keeps a weight tensor, so it answers the questions asked of one
    (`shape`, `dtype`, `nbytes`)."""

    qweight: torch.Tensor  # [out, in] int8
    scales: torch.Tensor  # [out]  in `act_dtype`
    act_dtype: torch.dtype
    """Dtype of the kernel's activations and scales (`activation_dtype`)."""
    out_dtype: torch.dtype
    """The model's dtype: what `linear` takes and returns."""

    @property
    def shape(self) -> torch.Size:
        return self.qweight.shape

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations `linear` takes (the model's)."""
        return self.out_dtype

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes + self.scales.nbytes

    def dequantize(self) -> torch.Tensor:
        """The weight `[out, in]` in fp32, as the int8 values and scales give it."""
        return self.qweight.float() * self.scales.float()[:, None]

    def linear(self, x: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """`x @ W.T + b` for `x` `[rows, in]` through the device's kernel."""
        kernel = _npu_linear if x.device.type == "npu" else _cpu_linear
        y = kernel(x, self)
        return y if b is None else y + b


def quantize_int8(w: torch.Tensor, act_dtype: torch.dtype) -> Int8Weight:
    """Symmetric per-output-channel int8 of a plain `[out, in]` weight (scale = max|row| / 127,
    rounded to `act_dtype`; the int8 values are rounded against that rounded scale)."""
    if w.shape[1] % K_MULTIPLE:
        raise UnsupportedQuantizationError(
            f"int8: a projection's input size {w.shape[1]} is not a multiple of {K_MULTIPLE}"
        )
    wf = w.detach().float()
    scales = (wf.abs().amax(dim=1) / 127.0).clamp_min(1e-12).to(act_dtype)
    q = torch.round(wf / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(q.contiguous(), scales.contiguous(), act_dtype, w.dtype)


def reference_linear(x: torch.Tensor, w: Int8Weight, b: torch.Tensor | None = None) -> torch.Tensor:
    """The same quantised weight through a plain dequantise-then-matmul in x's dtype."""
    return F.linear(x, w.dequantize().to(x.dtype), b)


def _cpu_linear(x: torch.Tensor, w: Int8Weight) -> torch.Tensor:
    if x.shape[0] >= DEQUANT_ROWS:
        deq = w.dequantize().to(x.dtype)
        if x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, deq, None, "none", [], "")  # type: ignore[no-any-return]
        return F.linear(x, deq)
    # NOTE: the kernel loads activation rows with aligned 32-byte loads: a fresh tensor.
    xa = x.to(w.act_dtype) if x.dtype != w.act_dtype else x.clone()
    return torch.ops.aten._weight_int8pack_mm(xa, w.qweight, w.scales).to(x.dtype)  # type: ignore[no-any-return]


def _npu_linear(x: torch.Tensor, w: Int8Weight) -> torch.Tensor:
    torch_npu = importlib.import_module("torch_npu")
    xa = x if x.dtype == w.act_dtype else x.to(w.act_dtype)
    y = torch_npu.npu_weight_quant_batchmatmul(xa, w.qweight.t(), w.scales)
    return y if y.dtype == x.dtype else y.to(x.dtype)  # type: ignore[no-any-return]
