"""Draft-model speculation: a small resident model proposes tokens, the engine's model verifies.

The draft keeps its own paged KV cache. Each request has a shadow `Request` whose tokens are
what the draft has seen; before proposing, the shadow is cut back to the longest prefix it
shares with the real request (rejected drafts, preemption), so only new tokens are computed.
"""

from __future__ import annotations

from pathlib import Path

from flexmesh.actors.runner.runner import ModelRunner
from flexmesh.meshcore.block_pool import BlockPool, blocks_needed
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.plan import SchedulerOutput, plan_chunk
from flexmesh.meshcore.request import Request
from flexmesh.meshcore.sampling import SamplingParams

_GREEDY = SamplingParams(max_tokens=1 << 30)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class DraftProposer:
    """Greedy drafts from a second model sharing the target's tokenizer."""

    def __init__(
        self, model_path: str | Path, config: EngineConfig, target_vocab_size: int
    ) -> None:
        self.runner = ModelRunner(model_path, config)
        if self.runner.model.vocab_size != target_vocab_size:
            raise ValueError(
                f"draft model {model_path} has vocabulary {self.runner.model.vocab_size}, "
                f"the target has {target_vocab_size}: they must share a tokenizer"
            )
        self.pool = BlockPool(self.runner.num_blocks)
        self.block_size = config.block_size_tokens
        self.shadows: dict[str, Request] = {}

    def propose(self, requests: list[Request], num_tokens: dict[str, int]) -> dict[str, list[int]]:
        """Up to `num_tokens[rid]` greedy draft tokens for each request (fewer if KV is short)."""
        shadows = [
            s for r in requests if (s := self._sync(r, num_tokens[r.request_id])) is not None
        ]
        drafts: dict[str, list[int]] = {s.request_id: [] for s in shadows}
        active = shadows
        while active:
            chunks = [plan_chunk(s, s.num_tokens - s.num_computed_tokens) for s in active]
            sampled = self.runner.execute(SchedulerOutput(tuple(chunks)))
            still: list[Request] = []
            for s in active:
                s.num_computed_tokens = s.num_tokens
                token = sampled[s.request_id][0]
                drafts[s.request_id].append(token)
                if len(drafts[s.request_id]) < num_tokens[s.request_id]:
                    s.prompt_token_ids.append(token)
                    still.append(s)
            active = still
        return drafts

    def _sync(self, req: Request, k: int) -> Request | None:
        """Align the shadow with `req` and give it blocks for k more tokens; None if KV is short."""
        tokens = req.all_token_ids
        shadow = self.shadows.get(req.request_id)
        if shadow is None:
            shadow = Request(req.request_id, [], _GREEDY)
            self.shadows[req.request_id] = shadow
        keep = _common_prefix(shadow.prompt_token_ids, tokens)
        # At least the last token is recomputed: its logits give the first draft.
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, keep, len(tokens) - 1)
        shadow.prompt_token_ids = list(tokens)
        need = blocks_needed(len(tokens) + k, self.block_size) - len(shadow.block_ids)
        if need > 0:
            if not self.pool.can_allocate(need):
                return None
            shadow.block_ids += self.pool.allocate(need)
        return shadow

    def release(self, request_id: str) -> None:
        shadow = self.shadows.pop(request_id, None)
        if shadow is not None and shadow.block_ids:
            self.pool.free(shadow.block_ids)
        self.runner.release(request_id)
