"""The Qwen2/Llama decoder over the engine's paged KV cache.

Weights come from a Hugging Face model loaded by transformers; projections are fused (QKV,
gate+up) so a step is a few large GEMMs over every scheduled token of every request. Attention
reads keys and values from the paged cache through per-request slot indices, so which tokens of
which request sit in which block is decided by the scheduler alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from flexmesh.actors.runner.quant import (
    PROJECTIONS,
    Int8Weight,
    UnsupportedQuantizationError,
    activation_dtype,
    check_quantization,
    quantize_int8,
)

Weight = torch.Tensor | Int8Weight
"""A projection weight: a tensor (plain or oneDNN-packed) or int8 with its scales (`quant.py`)."""

PACK_BATCH_HINT = 16
"""Batch size oneDNN lays packed weights out for (it serves every other batch size too)."""
EXACT_ROWS = 16
"""Token counts up to this (decode batches) run through oneDNN as they are; larger ones are
padded to one of 4 sizes per octave (`padded_rows`)."""


def padded_rows(rows: int) -> int:
    """The row count a packed projection runs at: `rows` up to `EXACT_ROWS`, beyond it the next
    of 4 sizes per octave (20, 24, 28, 32, 40, ...; at most 25% more rows).

    oneDNN builds a kernel per input shape (~0.5 ms per projection) and keeps the latest in a
    bounded cache (`KERNEL_CACHE_ENV`); prompt chunks come in every size, so without buckets
    nearly every mixed step would rebuild all of its kernels."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 3)
    return -(-rows // step) * step


SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM")


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture is not one the paged runner implements."""


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv_w: Weight  # [(heads + 2 * kv_heads) * head_dim, hidden]
    qkv_b: torch.Tensor | None
    o_w: Weight  # [hidden, heads * head_dim]
    post_norm: torch.Tensor  # [hidden]
    gate_up_w: Weight  # [2 * intermediate, hidden]
    down_w: Weight  # [hidden, intermediate]


@dataclass(frozen=True)
class AttentionGroup:
    """Requests whose queries are attended together as one padded batch.

    `q_valid` marks real query rows of the padded `[batch, max_q]` grid (row-major order equals
    the rows' order in the flat token batch); `kv_slots` lists each request's cache slots
    `[batch, max_ctx]`; `mask` is `[batch, 1, max_q, max_ctx]` (True = may attend), or None
    when plain causal attention over the whole context applies.
    """

    row_start: int
    num_rows: int
    q_valid: torch.Tensor
    kv_slots: torch.Tensor
    mask: torch.Tensor | None
    is_causal: bool


@dataclass(frozen=True)
class ForwardBatch:
    """Tensors of one step, built once and shared by every layer."""

    input_ids: torch.Tensor  # [tokens]
    positions: torch.Tensor  # [tokens]
    slot_mapping: torch.Tensor  # [tokens]  flat cache slot of each new token
    groups: tuple[AttentionGroup, ...]
    logit_rows: torch.Tensor  # [rows to sample]  rows whose next-token logits are needed


class PagedCausalLM:
    """Decoder-only transformer with fused weights and a paged KV cache per layer."""

    def __init__(
        self,
        hf_model: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        packed_weights: bool = False,
    ) -> None:
        cfg = hf_model.config
        arch = (getattr(cfg, "architectures", None) or [type(hf_model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedModelError(
                f"architecture {arch} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.config = cfg
        self.device = device
        self.dtype = dtype
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.eps = cfg.rms_norm_eps
        self.vocab_size = cfg.vocab_size
        self.max_model_len_tokens = cfg.max_position_embeddings
        inner = hf_model.model
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))

        def w(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=device, dtype=dtype).contiguous()

        self.embed = w(inner.embed_tokens.weight)  # [vocab, hidden]
        self.final_norm = w(inner.norm.weight)
        self.lm_head: Weight = w(hf_model.lm_head.weight)  # [vocab, hidden]
        self.tied_embeddings = self.lm_head.data_ptr() == self.embed.data_ptr()
        self.layers: list[LayerWeights] = []
        for layer in inner.layers:
            att, mlp = layer.self_attn, layer.mlp
            biases = [p.bias for p in (att.q_proj, att.k_proj, att.v_proj)]
            self.layers.append(
                LayerWeights(
                    input_norm=w(layer.input_layernorm.weight),
                    qkv_w=w(torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight])),
                    qkv_b=w(torch.cat(biases)) if biases[0] is not None else None,
                    o_w=w(att.o_proj.weight),
                    post_norm=w(layer.post_attention_layernorm.weight),
                    gate_up_w=w(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
                    down_w=w(mlp.down_proj.weight),
                )
            )
        self.num_layers = len(self.layers)
        self.packed = False
        self.quantization = "none"
        """Set by `quantize` (which runs before packing)."""
        if packed_weights:
            self.pack_weights()

    def quantize(self, quantization: str, lm_head: bool = True) -> None:
        """Quantise the projections in place from the plain weights ("none": nothing changes).
        With `lm_head`, the LM head too (a tied one becomes its own int8 copy); the embedding
        table stays as loaded, since a step reads one row of it."""
        check_quantization(quantization, self.device)
        if quantization == "none":
            return
        if self.packed:
            raise UnsupportedQuantizationError(f"{quantization}: quantise before packing")
        act = activation_dtype(self.dtype)
        for lw in self.layers:
            for name in PROJECTIONS:
                setattr(lw, name, quantize_int8(getattr(lw, name), act))
        if lm_head and isinstance(self.lm_head, torch.Tensor):
            self.lm_head = quantize_int8(self.lm_head, act)
            self.tied_embeddings = False
        self.quantization = quantization

    def pack_weights(self) -> None:
        """On CPU in fp32, replace every plain projection weight by its oneDNN-blocked layout
        (same bytes); int8 weights stay as they are. Elsewhere nothing changes.

        NOTE: measured here on demo-large (docs/engine.md): at 1 token a step's matrix-vector
        products stream 20-28 GB/s packed against ~16 through MKL's sgemm, and at 16 tokens
        the projections take 18.3 ms per step against 23.7 (sgemm repacks the weight on every
        call). Results differ from sgemm's in the last bits only; greedy output stays equal to
        Hugging Face's (tests/runner).
        """

        if self.packed or self.device.type != "cpu" or self.dtype != torch.float32:
            return

        def pack(t: Weight) -> Weight:
            if isinstance(t, Int8Weight):
                return t
            return torch.ops.mkldnn._reorder_linear_weight(t, PACK_BATCH_HINT)  # type: ignore[no-any-return]

        try:
            packed = [{f: pack(getattr(lw, f)) for f in PROJECTIONS} for lw in self.layers]
            lm_head = pack(self.lm_head)
        except (RuntimeError, AttributeError):  # a torch build without oneDNN
            return
        for lw, fields in zip(self.layers, packed, strict=True):
            for name, t in fields.items():
                setattr(lw, name, t)
        self.lm_head = lm_head
        self.packed = True

    def linear(self, x: torch.Tensor, w: Weight, b: torch.Tensor | None = None) -> torch.Tensor:
        """`x @ w.T + b` for `x` `[rows, in]`: the one seam every projection goes through (an
        int8 weight brings its device's kernel, `quant.Int8Weight.linear`)."""
        if isinstance(w, Int8Weight):
            return w.linear(x, b)
        if not self.packed:
            return F.linear(x, w, b)
        rows = x.shape[0]
        padded = padded_rows(rows)
        if padded != rows:
            x = F.pad(x, (0, 0, 0, padded - rows))
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return out if padded == rows else out[:rows]  # type: ignore[no-any-return]

    @property
    def weight_bytes(self) -> int:
        tensors: list[Weight] = [self.embed, self.final_norm]
        if not self.tied_embeddings:
            tensors.append(self.lm_head)
        for lw in self.layers:
            tensors += [t for t in vars(lw).values() if t is not None]
        return sum(t.nbytes for t in tensors)

    @property
    def step_read_bytes(self) -> int:
        """Bytes of weights one batch-1 decode step streams: all of them but the embedding
        table, of which a step reads one row (unless it is also the output projection)."""
        embed = self.embed.numel() * self.embed.element_size()
        return self.weight_bytes - (0 if self.tied_embeddings else embed)

    def decode_matrices(self) -> list[Weight]:
        """The matrices a decode step multiplies its hidden state by, in order (in the layout
        `linear` takes)."""
        mats = [w for lw in self.layers for w in (lw.qkv_w, lw.o_w, lw.gate_up_w, lw.down_w)]
        return [*mats, self.lm_head]

    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype.itemsize

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> torch.Tensor:
        """One tensor `[layers, 2, blocks, block_size, kv_heads, head_dim]`, indexed by block id."""
        shape = (self.num_layers, 2, num_blocks, block_size, self.num_kv_heads, self.head_dim)
        return torch.zeros(shape, device=self.device, dtype=self.dtype)

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # HF's Qwen2RMSNorm arithmetic: normalise in fp32, then scale in the model dtype.
        if x.dtype == torch.float32:
            return F.rms_norm(x, weight.shape, weight, self.eps)  # one fused kernel
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and "signed" sin `[tokens, 1, head_dim]` for `_rotate`.

        HF rotates `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat(-x2, x1)`; the
        sign moves into sin's first half (`-x2 * s == x2 * -s` exactly) so a rotation is one
        swap of the halves and three element-wise ops, with HF's results to the bit."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [tokens, head_dim / 2]
        cos = (torch.cat((freqs, freqs), dim=-1).cos() * self.rope_scale).to(self.dtype)
        sin = (freqs.sin() * self.rope_scale).to(self.dtype)
        return cos[:, None, :], torch.cat((-sin, sin), dim=-1)[:, None, :]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        *lead, dim = x.shape
        swapped = x.view(*lead, 2, dim // 2).flip(-2).view(*lead, dim)  # cat(x2, x1)
        return x * cos + swapped * signed_sin

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, kv_cache: torch.Tensor) -> torch.Tensor:
        """Run one step; return logits `[len(logit_rows), vocab]` in fp32."""
        h_dim, nh, nkv = self.head_dim, self.num_heads, self.num_kv_heads
        x = F.embedding(batch.input_ids, self.embed)  # [tokens, hidden]
        cos, sin = self._rope(batch.positions)
        num_tokens = x.shape[0]
        for li, lw in enumerate(self.layers):
            residual = x
            hs = self._rms_norm(x, lw.input_norm)
            qkv = self.linear(hs, lw.qkv_w, lw.qkv_b)
            # Queries and keys are rotated together: one rotation of [tokens, heads + kv, dim].
            qk = self._rotate(qkv[:, : (nh + nkv) * h_dim].view(num_tokens, -1, h_dim), cos, sin)
            q, k = qk[:, :nh], qk[:, nh:]
            v = qkv[:, (nh + nkv) * h_dim :].view(num_tokens, nkv, h_dim)
            cache = kv_cache[li].view(2, -1, nkv, h_dim)  # [k/v, slots, kv_heads, head_dim]
            cache[0].index_copy_(0, batch.slot_mapping, k)
            cache[1].index_copy_(0, batch.slot_mapping, v)
            if len(batch.groups) == 1:
                attn = self._attend(q, batch.groups[0], cache)
            else:
                attn = q.new_empty(q.shape)  # [tokens, heads, head_dim]
                for g in batch.groups:
                    rows = slice(g.row_start, g.row_start + g.num_rows)
                    attn[rows] = self._attend(q[rows], g, cache)
            x = residual + self.linear(attn.reshape(num_tokens, nh * h_dim), lw.o_w)
            residual = x
            hs = self._rms_norm(x, lw.post_norm)
            gate, up = self.linear(hs, lw.gate_up_w).chunk(2, dim=-1)
            x = residual + self.linear(F.silu(gate) * up, lw.down_w)
        x = self._rms_norm(x[batch.logit_rows], self.final_norm)
        return self.linear(x, self.lm_head).float()

    def _attend(self, q: torch.Tensor, g: AttentionGroup, cache: torch.Tensor) -> torch.Tensor:
        """Attention of one group's query rows over its requests' cached keys and values
        (`cache` is one layer's `[k/v, slots, kv_heads, head_dim]`)."""
        batch, max_q = g.q_valid.shape
        if max_q * batch == q.shape[0]:
            qp = q.reshape(batch, max_q, self.num_heads, self.head_dim)
        else:
            qp = q.new_zeros(batch, max_q, self.num_heads, self.head_dim)
            qp[g.q_valid] = q
        kv = cache.index_select(1, g.kv_slots.view(-1))  # keys and values in one gather
        kv = kv.view(2, batch, -1, self.num_kv_heads, self.head_dim).transpose(2, 3)
        q_heads = qp.transpose(1, 2)  # [batch, heads, max_q, head_dim]
        out = F.scaled_dot_product_attention(
            q_heads, kv[0], kv[1], attn_mask=g.mask, is_causal=g.is_causal, enable_gqa=True
        )
        out = out.transpose(1, 2)
        if max_q * batch == q.shape[0]:
            return out.reshape(q.shape)
        return out[g.q_valid]
