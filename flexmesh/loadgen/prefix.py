"""Prefix reuse in the load generator: a shared-prefix workload and reference hit rates.

The shared-prefix workload is SGLang's `generated-shared-prefix` benchmark dataset: `groups`
groups of requests share a system prompt of `prefix_tokens`, each request adds a question of its
own of `suffix_tokens`. Its requests carry prefix-block ids like Mooncake's `hash_ids`, so the
same prompt synthesis (`synth.py`: equal ids, equal text) and the same references apply. Only
the whole blocks of a prefix are shared: a block that straddles the prefix and the question is
the request's own (as the engine shares full blocks only).

The references say what a server's prefix cache could reach on the replayed stream, taken in
arrival order, each request as if it ran alone: the hit rate of an infinite cache, and that of
an LRU cache of the server's own KV capacity. Both run `meshcore.prefix_cache`, the code that
decides in the engine, so the reference and the server cannot drift. A hit rate is prompt
tokens found cached over prompt tokens; only a prompt's full blocks can hit.

The server's own figures over a replay (`server_prefix_figures`) are the growth of its workers'
cumulative counters between the replay's first and last status sample: its hit rate (hit over
queried tokens, as the workers count them), the same hits over the replay's prompt tokens (the
references' definition, like against like), and the prompt tokens each worker computed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flexmesh.loadgen.traces import TraceRequest, renewal_arrivals
from flexmesh.meshcore.block_pool import BlockPool
from flexmesh.meshcore.prefix_cache import PrefixCache

Arrival = Literal["poisson", "burst"]


@dataclass(frozen=True)
class SharedPrefixConfig:
    """The `shared-prefix` format: groups sharing a system prompt, one question each."""

    groups: int = 8
    """Groups of requests; each group shares one system prompt."""
    requests_per_group: int = 16
    """Requests in each group."""
    prefix_tokens: int = 384
    """Length of a group's shared system prompt."""
    suffix_tokens: int = 64
    """Length of each request's own question."""
    output_tokens: int = 64
    """Tokens to generate per request."""
    block_tokens: int = 16
    """Tokens per prefix block id (the engine's KV block size, so ids align with its blocks)."""
    rate_rps: float = 1.0
    """Mean request rate of the Poisson arrivals."""
    arrival: Arrival = "poisson"
    """"poisson" at `rate_rps`, or "burst": every request at time 0."""

    def __post_init__(self) -> None:
        for name in ("groups", "requests_per_group", "output_tokens", "block_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("prefix_tokens", "suffix_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.prefix_tokens + self.suffix_tokens < 1:
            raise ValueError("prefix_tokens + suffix_tokens: must be >= 1, got 0")
        if self.rate_rps <= 0:
            raise ValueError(f"rate_rps: must be > 0, got {self.rate_rps}")
        if self.arrival not in ("poisson", "burst"):
            raise ValueError(f"arrival: must be 'poisson' or 'burst', got {self.arrival!r}")


def add_shared_prefix_arguments(parser: argparse.ArgumentParser) -> None:
    """The `shared-prefix` format's options and the reference's KV capacity on `parser`."""
    sp = parser.add_argument_group("shared-prefix (SGLang's generated-shared-prefix)")
    sp.add_argument("--groups", type=int, default=8, help="groups sharing a system prompt")
    sp.add_argument("--requests-per-group", type=int, default=16, help="requests per group")
    sp.add_argument("--prefix-tokens", type=int, default=384, help="shared system prompt length")
    sp.add_argument("--suffix-tokens", type=int, default=64, help="each request's question length")
    sp.add_argument(
        "--prefix-block-tokens", type=int, default=16, help="tokens per prefix block id"
    )
    sp.add_argument(
        "--arrival",
        choices=("poisson", "burst"),
        default="poisson",
        help="Poisson arrivals at --rate-rps, or every request at once",
    )
    sp.add_argument(
        "--kv-capacity-tokens",
        type=int,
        help="the server's KV capacity (blocks x block size): the report's LRU prefix-cache "
        "reference caches this many tokens (traces with prefix block ids only)",
    )


def shared_prefix_config(args: argparse.Namespace) -> SharedPrefixConfig:
    """The workload from `add_shared_prefix_arguments`' options (with `--rate-rps` and
    `--output-tokens`, which the synthetic formats share)."""
    return SharedPrefixConfig(
        groups=args.groups,
        requests_per_group=args.requests_per_group,
        prefix_tokens=args.prefix_tokens,
        suffix_tokens=args.suffix_tokens,
        output_tokens=args.output_tokens,
        block_tokens=args.prefix_block_tokens,
        rate_rps=args.rate_rps,
        arrival=args.arrival,
    )


def shared_prefix_trace(config: SharedPrefixConfig, seed: int = 0) -> list[TraceRequest]:
    """The workload's requests in arrival order; groups interleaved in a seeded random order.

    Block ids: group g's shared block j is `g * shared + j`; request i's own blocks follow all
    the groups' blocks, so no id is used by two groups or two requests' questions.
    """
    rng = np.random.default_rng([seed, 13])
    n = config.groups * config.requests_per_group
    order = rng.permutation(np.repeat(np.arange(config.groups), config.requests_per_group))
    if config.arrival == "burst":
        arrivals = np.zeros(n)
    else:
        arrivals = renewal_arrivals(rng, config.rate_rps, 1.0, None, n)
    input_tokens = config.prefix_tokens + config.suffix_tokens
    shared = config.prefix_tokens // config.block_tokens
    own = -(-input_tokens // config.block_tokens) - shared
    first_own = config.groups * shared
    return [
        TraceRequest(
            float(arrivals[i]),
            input_tokens,
            config.output_tokens,
            tuple(range(g * shared, (g + 1) * shared))
            + tuple(range(first_own + i * own, first_own + (i + 1) * own)),
        )
        for i, g in enumerate(order.tolist())
    ]


def lru_hit_tokens(
    requests: Sequence[TraceRequest], block_tokens: int, capacity_blocks: int
) -> list[int]:
    """Prompt tokens each request finds cached in an LRU prefix cache of `capacity_blocks`
    blocks, requests taken one at a time in order. A request with more full blocks than the
    cache holds caches its first ones only."""
    cache = PrefixCache(BlockPool(max(capacity_blocks, 1)), block_tokens)
    hits: list[int] = []
    for r in requests:
        hashes = r.hash_ids[: r.input_tokens // block_tokens]
        hit = cache.match(hashes)
        cache.hold(hit)
        rest = hashes[len(hit) :]
        # Blocks that cannot all be cached at once are not (a server refuses such a prompt).
        take = max(0, min(len(rest), capacity_blocks - len(hit)))
        new = cache.allocate(take)
        for h, b in zip(rest, new, strict=False):
            cache.insert(h, b)
        cache.release(hit + new)
        hits.append(len(hit) * block_tokens)
    return hits


def prefix_references(
    requests: Sequence[TraceRequest], block_tokens: int, capacity_tokens: int | None
) -> dict[str, Any]:
    """The ideal (infinite cache) and LRU (`capacity_tokens` of KV) prefix hit rates.

    Values are None when no request carries prefix-block ids, or (the LRU's) when no capacity
    is given; `capacity_tokens` counts whole blocks of `block_tokens` only.
    """
    out: dict[str, Any] = {
        "block_tokens": None,
        "prompt_tokens": None,
        "ideal_hit_rate": None,
        "lru_capacity_tokens": capacity_tokens,
        "lru_capacity_blocks": None,
        "lru_hit_rate": None,
    }
    if block_tokens < 1 or not any(r.hash_ids for r in requests):
        return out
    prompt_tokens = sum(r.input_tokens for r in requests)
    # An infinite cache: room for every block of the stream, so nothing is ever evicted.
    everything = sum(len(r.hash_ids) for r in requests)
    ideal = sum(lru_hit_tokens(requests, block_tokens, everything))
    out.update(
        block_tokens=block_tokens,
        prompt_tokens=prompt_tokens,
        ideal_hit_rate=round(ideal / prompt_tokens, 4) if prompt_tokens else None,
    )
    if capacity_tokens is not None:
        blocks = capacity_tokens // block_tokens
        lru = sum(lru_hit_tokens(requests, block_tokens, blocks)) if blocks else 0
        out.update(
            lru_capacity_blocks=blocks,
            lru_hit_rate=round(lru / prompt_tokens, 4) if prompt_tokens else None,
        )
    return out


def _growth(first: float, last: float) -> float:
    # A worker restarted between the samples counts from zero again: its last value is the
    # growth since (a lower bound).
    return last - first if last >= first else last


def server_prefix_figures(
    samples: Sequence[Mapping[str, Any]], prompt_tokens: int
) -> dict[str, Any] | None:
    """The server's prefix-cache figures over a replay from its status `samples` (in time
    order; `status.status_sample`'s shape) and the prompt tokens of its completed requests.

    Counters are summed over the workers in both the first and the last sample (by name);
    `hit_rate` is None while the cache is off (no worker counts queries), `prompt_tokens_computed`
    is None when no worker reports it. None without two samples.
    """
    if len(samples) < 2:
        return None
    before = {w["name"]: w for w in samples[0].get("workers", ())}
    after = {w["name"]: w for w in samples[-1].get("workers", ())}
    both = [name for name in after if name in before]
    grew: dict[str, float] = dict.fromkeys(("hit_tokens", "queried_tokens", "evictions"), 0.0)
    computed: dict[str, int] = {}
    for name in sorted(both):
        b, a = before[name], after[name]
        for key in grew:
            grew[key] += _growth((b.get("prefix_cache") or {}).get(key, 0.0),
                                 (a.get("prefix_cache") or {}).get(key, 0.0))  # fmt: skip
        key = "prompt_tokens_computed"
        computed[name] = int(_growth(b.get(key, 0), a.get(key, 0)))
    reported = any(after[name].get("prompt_tokens_computed") for name in both)
    hit, queried = grew["hit_tokens"], grew["queried_tokens"]
    on = queried > 0  # a cache that is off counts nothing
    return {
        "workers": len(both),
        "hit_tokens": int(hit),
        "queried_tokens": int(queried),
        "hit_rate": round(hit / queried, 4) if on else None,
        "prompt_tokens": prompt_tokens,
        "hit_rate_of_prompt_tokens": (
            round(hit / prompt_tokens, 4) if on and prompt_tokens else None
        ),
        "evictions": int(grew["evictions"]),
        "prompt_tokens_computed": computed if reported else None,
        "prompt_tokens_computed_total": sum(computed.values()) if reported else None,
    }


def references_line(ref: dict[str, Any] | None, server: dict[str, Any] | None = None) -> str:
    """One line for the CLI: both references, "-" where there is none; with `server`, the
    server's own hit rate over the replay (and the prompt tokens each worker computed) after
    them."""
    ref = ref or {}

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    cap = ref.get("lru_capacity_tokens")
    line = (
        f"prefix hit rate references: ideal {fmt(ref.get('ideal_hit_rate'))}, "
        f"LRU of {'-' if cap is None else cap} KV tokens {fmt(ref.get('lru_hit_rate'))}"
    )
    if server is None:
        return line
    line += (
        f"; server {fmt(server.get('hit_rate_of_prompt_tokens'))} of prompt tokens "
        f"({fmt(server.get('hit_rate'))} of queried)"
    )
    computed = server.get("prompt_tokens_computed")
    if computed:
        line += ", prompt tokens computed " + ", ".join(f"{k} {v}" for k, v in computed.items())
    return line
