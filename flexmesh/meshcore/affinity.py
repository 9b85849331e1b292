"""Cache-aware placement: which worker probably holds a prompt's prefix, and how far that may
outweigh load (docs/pd.md, "Placement").

**The gateway keeps an approximate index of what it sent where** (as SGLang's router does),
rather than workers publishing the blocks they add and evict (as Dynamo's KV router does):
- it needs no new channel, no ordering of events against placements and nothing on restart
  but forgetting the worker;
- it runs unchanged in the simulator, which runs this gateway;
- it works on text: the gateway has no tokenizer, and most clients send text.
Its cost is that it is a guess. It does not see a worker evict a block early (its LRU per
worker mirrors the engine's over the same capacity, so both evict about the same blocks) nor a
request that failed before its prefill. A wrong guess costs one prefill, as without the cache.

A prompt's *keys* are names chained over fixed runs of it, so equal keys mean an equal prefix
up to there: `prefix_cache.chain_hashes` of its token ids when the client sent them (the
engine's own block names), else the same chaining over runs of `CHARS_PER_TOKEN` characters a
token, an estimate of the engine's blocks.

**Placement scores hit and load together, with a bounded imbalance** (`pick`): a worker is
eligible while its load stays within `balance × (least load + 1)`; among eligible workers the
longest expected hit wins, then the lower load. So affinity holds while workers are evenly
busy, and load wins once one of them runs ahead (the "death spiral" of misses that pure
affinity falls into under skewed prefixes). A prompt that no worker holds goes by load alone,
as without the cache. The controller turns `balance` like its other thresholds
(`controller_policy`, the balance lever).

The load of a prompt's worker is its requests before their first token: TTFT waits on them.
Counting every request held (decodes too) kept more hits on the shared-prefix workload but
piled long prompts onto their conversation's worker in the simulated Mooncake replay at scale,
where few prompts hit at all: goodput fell 8% below least-loaded placement, while counting
prefills alone gains 2% there (docs/pd.md has the runs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from flexmesh.meshcore.prefix_cache import block_hash, chain_hashes

CHARS_PER_TOKEN = 4
"""Characters a token, to cut text into runs of about one engine block (as the gateway
estimates prompt lengths without a tokenizer)."""
DEFAULT_CAPACITY_BLOCKS = 1 << 16
"""Blocks the index keeps per worker until the worker reports its KV capacity."""

T = TypeVar("T")


def prompt_keys(
    prompt: str, token_ids: Sequence[int], block_tokens: int, model: str
) -> list[bytes]:
    """The chained names of a prompt's full runs of `block_tokens` tokens (see module doc).

    The last token is left out, as the engine leaves it out of what it reuses (it must compute
    it for the logits)."""
    if token_ids:
        return chain_hashes(token_ids[:-1], block_tokens, model)
    run = block_tokens * CHARS_PER_TOKEN
    keys: list[bytes] = []
    parent: bytes | None = None
    for start in range(0, len(prompt) - CHARS_PER_TOKEN - run + 1, run):
        parent = block_hash(parent, prompt[start : start + run].encode("utf-8"), model)
        keys.append(parent)
    return keys


class PrefixIndex:
    """Per worker, the keys the gateway sent there, least recently used first."""

    def __init__(self) -> None:
        self._keys: dict[str, OrderedDict[Hashable, None]] = {}
        self._capacity: dict[str, int] = {}

    def match(self, worker: str, keys: Sequence[Hashable]) -> int:
        """How many leading `keys` the worker probably holds."""
        held = self._keys.get(worker)
        n = 0
        while held is not None and n < len(keys) and keys[n] in held:
            n += 1
        return n

    def add(self, worker: str, keys: Sequence[Hashable]) -> None:
        """The worker computes (or receives) these keys' blocks now: they become its most
        recent; the oldest go beyond its capacity, as its engine's LRU would drop them."""
        held = self._keys.setdefault(worker, OrderedDict())
        for k in keys:
            held[k] = None
            held.move_to_end(k)
        over = len(held) - self._capacity.get(worker, DEFAULT_CAPACITY_BLOCKS)
        for _ in range(max(0, over)):
            held.popitem(last=False)

    def set_capacity(self, worker: str, blocks: int) -> None:
        """The worker's KV capacity in the index's blocks (from its status report)."""
        self._capacity[worker] = max(1, blocks)

    def forget(self, worker: str) -> None:
        """The worker lost its cache (it died or restarted)."""
        self._keys.pop(worker, None)


def pick(
    candidates: Sequence[T], load: Callable[[T], int], hit: Callable[[T], int], balance: float
) -> T:
    """The candidate with the longest `hit` among those whose `load` is within `balance` times
    (the least load + 1); ties go to the lower load, then to the earlier candidate."""
    least = min(load(c) for c in candidates)
    bound = balance * (least + 1)
    eligible = [c for c in candidates if load(c) <= bound]
    order = {id(c): i for i, c in enumerate(candidates)}
    return min(eligible, key=lambda c: (-hit(c), load(c), order[id(c)]))
