"""ModelRunner: turns a scheduler plan into tensors, runs the model, samples, and returns tokens.

It owns the model weights, the KV cache tensor and the sampler's generator; it holds no
scheduling state. Device choice is npu, then cuda, then cpu; `torch_npu` is imported only when
it is installed (without Ascend's CANN toolkit it breaks `import torch`).
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Sequence
from pathlib import Path

import torch

from flexmesh.actors.runner.model import (
    SUPPORTED_ARCHITECTURES,
    AttentionGroup,
    ForwardBatch,
    PagedCausalLM,
    UnsupportedModelError,
)
from flexmesh.actors.runner.sampler import sample_chunk
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.plan import ScheduledChunk, SchedulerOutput

SMALL_QUERY_TOKENS = 16
"""Chunks with at most this many query tokens (decodes, draft verification) share one batch."""


def pick_device(requested: str = "auto") -> torch.device:
    """npu, then cuda, then cpu (or the one asked for)."""
    if requested in ("auto", "npu") and importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401  (registers the "npu" device with torch)

        if torch.npu.is_available():  # type: ignore[attr-defined]
            return torch.device("npu", 0)
    if requested == "npu":
        raise RuntimeError("device npu requested but torch_npu is not installed or sees no NPU")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    if requested == "cuda":
        raise RuntimeError("device cuda requested but no CUDA device is visible")
    return torch.device("cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        # No native bf16 on the development CPUs (5-7x slower); accelerators prefer bf16.
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    return getattr(torch, requested)  # type: ignore[no-any-return]


def check_architecture(model_path: str | Path) -> None:
    """Refuse an unsupported checkpoint before spending time loading its weights."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(
        str(model_path), trust_remote_code=False, local_files_only=True
    )
    arch = (cfg.architectures or ["<none>"])[0]
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{model_path}: architecture {arch} is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


class ModelRunner:
    """Executes scheduler plans for one model on one device."""

    def __init__(self, model_path: str | Path, config: EngineConfig) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        check_architecture(model_path)
        self.config = config
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(config.dtype, self.device)
        hf_logging.disable_progress_bar()
        hf = AutoModelForCausalLM.from_pretrained(
            str(model_path),
            dtype=self.dtype,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
        )
        self.model = PagedCausalLM(hf, self.device, self.dtype, config.cpu_packed_weights)
        self.generation_config = hf.generation_config
        del hf
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(model_path), trust_remote_code=False, local_files_only=True
        )
        self.block_size = config.block_size_tokens
        self.num_blocks = config.kv_blocks(self.model.kv_bytes_per_token())
        self.kv_cache = self.model.allocate_kv_cache(self.num_blocks, self.block_size)
        self._generator = torch.Generator(device="cpu")
        """Reseeded for every sampled position (`sampler.sample_chunk`)."""
        self._seeds: dict[str, int] = {}
        """Per unseeded request sampling here: the seed drawn for it at its first sample."""

    # -- step ------------------------------------------------------------------------------

    def execute(self, plan: SchedulerOutput) -> dict[str, list[int]]:
        """Run one step; return, per sampling request, accepted draft tokens + one new token."""
        if not plan.chunks:
            return {}
        batch, sample_rows = self.prepare(plan)
        logits = self.model.forward(batch, self.kv_cache)
        out: dict[str, list[int]] = {}
        greedy_ids = logits.argmax(dim=-1).tolist()
        for chunk, first_row in sample_rows:
            rows = range(first_row, first_row + chunk.num_draft + 1)
            rid, drafts = chunk.request_id, list(chunk.draft_token_ids)
            if chunk.sampling.greedy:
                out[rid] = accept_greedy(drafts, [greedy_ids[r] for r in rows])
            else:
                seed = chunk.sampling.seed
                if seed is None:
                    seed = self._seeds.setdefault(rid, secrets.randbits(64))
                position = chunk.start + chunk.num_tokens - chunk.num_draft
                out[rid] = sample_chunk(
                    logits[first_row : rows.stop], drafts, chunk.sampling, self._generator,
                    seed, position,
                )  # fmt: skip
        return out

    def next_token_logits(self, token_ids: list[int]) -> list[float]:
        """One stand-alone forward pass (own scratch KV, outside any batch): last row's logits."""
        n = len(token_ids)
        scratch = self.model.allocate_kv_cache(-(-n // self.block_size), self.block_size)
        slots = torch.arange(n, device=self.device)
        group = AttentionGroup(
            0, n, torch.ones(1, n, dtype=torch.bool, device=self.device), slots[None], None, True
        )
        batch = ForwardBatch(
            input_ids=torch.tensor(token_ids, dtype=torch.long, device=self.device),
            positions=slots,
            slot_mapping=slots,
            groups=(group,),
            logit_rows=torch.tensor([n - 1], device=self.device),
        )
        return self.model.forward(batch, scratch)[0].tolist()  # type: ignore[no-any-return]

    # -- KV that moves with a request -------------------------------------------------------

    def kv_shape(self, num_blocks: int) -> tuple[int, ...]:
        """Shape of `num_blocks` blocks as `gather_kv` returns them."""
        c = self.kv_cache.shape
        return (c[0], c[1], num_blocks, *c[3:])

    def gather_kv(self, block_ids: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """A contiguous copy of these blocks `[layers, 2, blocks, block, kv_heads, dim]`,
        into `out` when given (reused memory is ~7x faster to fill than fresh memory). It stays
        on the cache's device: `out` must be there too (a collective sends device memory)."""
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        if out is None:
            return self.kv_cache.index_select(2, index)
        self._on_cache_device(out, "staging buffer")
        return torch.index_select(self.kv_cache, 2, index, out=out)

    def scatter_kv(self, block_ids: Sequence[int], kv: torch.Tensor) -> None:
        """Write `kv` (as `gather_kv` returns it, on the cache's device) into these blocks."""
        expected = self.kv_shape(len(block_ids))
        if tuple(kv.shape) != expected:
            raise ValueError(f"KV of shape {tuple(kv.shape)} does not fit {expected}")
        self._on_cache_device(kv, "KV to import")
        index = torch.tensor(block_ids, dtype=torch.long, device=self.device)
        self.kv_cache.index_copy_(2, index, kv.to(dtype=self.dtype))

    def _on_cache_device(self, t: torch.Tensor, what: str) -> None:
        # NOTE: no hidden device<->host copy in the hand-off: whoever moves bytes across says so.
        if t.device != self.kv_cache.device:
            raise ValueError(f"{what} on {t.device}, the KV cache on {self.kv_cache.device}")

    def release(self, request_id: str) -> None:
        """Forget per-request state (an unseeded request's seed) once the request ends."""
        self._seeds.pop(request_id, None)

    # -- turning a plan into tensors -------------------------------------------------------

    def _slots(self, block_ids: Sequence[int], start: int, stop: int) -> list[int]:
        bs = self.block_size
        return [block_ids[p // bs] * bs + p % bs for p in range(start, stop)]

    def prepare(
        self, plan: SchedulerOutput
    ) -> tuple[ForwardBatch, list[tuple[ScheduledChunk, int]]]:
        """Order chunks (small queries first, as one padded group), build the step's tensors."""
        small = [c for c in plan.chunks if c.num_tokens <= SMALL_QUERY_TOKENS]
        large = [c for c in plan.chunks if c.num_tokens > SMALL_QUERY_TOKENS]
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_rows: list[int] = []
        sample_rows: list[tuple[ScheduledChunk, int]] = []
        for c in small + large:
            ids += c.token_ids
            positions += range(c.start, c.start + c.num_tokens)
            slots += self._slots(c.block_ids, c.start, c.start + c.num_tokens)
            if c.samples:
                first = len(ids) - c.num_draft - 1
                sample_rows.append((c, len(logit_rows)))
                logit_rows += range(first, len(ids))
        groups: list[AttentionGroup] = []
        row = 0
        if small:
            groups.append(self._small_group(small, row))
            row += sum(c.num_tokens for c in small)
        for c in large:
            groups.append(self._large_group(c, row))
            row += c.num_tokens
        dev = self.device
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=dev),
            positions=torch.tensor(positions, dtype=torch.long, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            groups=tuple(groups),
            logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=dev),
        )
        return batch, sample_rows

    def _small_group(self, chunks: list[ScheduledChunk], row_start: int) -> AttentionGroup:
        dev = self.device
        max_q = max(c.num_tokens for c in chunks)
        ctx = [c.start + c.num_tokens for c in chunks]
        max_ctx = max(ctx)
        kv_slots = torch.zeros(len(chunks), max_ctx, dtype=torch.long)
        for b, c in enumerate(chunks):
            kv_slots[b, : ctx[b]] = torch.tensor(self._slots(c.block_ids, 0, ctx[b]))
        n_q = torch.tensor([c.num_tokens for c in chunks])
        q_valid = torch.arange(max_q)[None, :] < n_q[:, None]  # [batch, max_q]
        # Query i of chunk b sits at position start + i and sees keys up to it; padded query
        # rows see key 0 only (their output is dropped, but a fully masked row gives NaN).
        q_pos = torch.tensor([c.start for c in chunks])[:, None] + torch.arange(max_q)[None, :]
        q_pos = torch.where(q_valid, q_pos, torch.zeros_like(q_pos))
        mask = torch.arange(max_ctx)[None, None, :] <= q_pos[:, :, None]  # [batch, max_q, max_ctx]
        return AttentionGroup(
            row_start=row_start,
            num_rows=int(n_q.sum()),
            q_valid=q_valid.to(dev),
            kv_slots=kv_slots.to(dev),
            # One decoding request sees its whole context: no mask to build or apply.
            mask=None if max_q * len(chunks) == 1 else mask[:, None].to(dev),
            is_causal=False,
        )

    def _large_group(self, c: ScheduledChunk, row_start: int) -> AttentionGroup:
        dev = self.device
        ctx = c.start + c.num_tokens
        kv_slots = torch.tensor([self._slots(c.block_ids, 0, ctx)], device=dev)
        q_valid = torch.ones(1, c.num_tokens, dtype=torch.bool, device=dev)
        if c.start == 0:
            return AttentionGroup(row_start, c.num_tokens, q_valid, kv_slots, None, is_causal=True)
        q_pos = torch.arange(c.start, ctx)[:, None]
        mask = (torch.arange(ctx)[None, :] <= q_pos)[None, None].to(dev)  # [1, 1, q, ctx]
        return AttentionGroup(row_start, c.num_tokens, q_valid, kv_slots, mask, is_causal=False)


def accept_greedy(drafts: list[int], targets: list[int]) -> list[int]:
    """Greedy verification: keep drafts while they equal the model's arg-max, then add its token."""
    out: list[int] = []
    for draft, target in zip(drafts, targets, strict=False):
        if draft != target:
            break
        out.append(draft)
    out.append(targets[len(out)])
    return out
