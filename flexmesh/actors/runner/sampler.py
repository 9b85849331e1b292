"""Random sampling (temperature, top-k, top-p) and speculative verification of point drafts."""

from __future__ import annotations

import torch

from flexmesh.meshcore.sampling import SamplingParams, position_seed


def probabilities(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    """Logits `[rows, vocab]` to the sampling distribution (temperature, then top-k, then top-p)."""
    logits = logits / sp.temperature
    if sp.top_k > 0 and sp.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sp.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sp.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= sp.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_chunk(
    logits: torch.Tensor,
    drafts: list[int],
    sp: SamplingParams,
    gen: torch.Generator,
    seed: int,
    position: int,
) -> list[int]:
    """Sample one request's next tokens from `logits` `[len(drafts) + 1, vocab]`, the first
    for sequence `position`.

    Drafts are point proposals (PLD, or a greedy draft model), so speculative sampling accepts
    draft d with probability p(d) and on rejection samples from p with d removed: the output
    distribution equals sampling without drafts. Each position's draws come from `gen`
    seeded with `position_seed(seed, position)`: the tokens depend on the seed and the
    sequence alone, not on which worker or batch drew them.
    """
    probs = probabilities(logits, sp).cpu()
    out: list[int] = []
    for i, draft in enumerate(drafts):
        p = probs[i]
        gen.manual_seed(position_seed(seed, position + i))
        if torch.rand((), generator=gen).item() < p[draft].item():
            out.append(draft)
            continue
        residual = p.clone()
        residual[draft] = 0.0  # rand < 1, so a draft holding all the mass is always accepted
        out.append(int(torch.multinomial(residual, 1, generator=gen).item()))
        return out
    gen.manual_seed(position_seed(seed, position + len(drafts)))
    out.append(int(torch.multinomial(probs[len(drafts)], 1, generator=gen).item()))
    return out
