"""Prefill on one engine, decode on another: the KV seams give exactly co-located output."""

from __future__ import annotations

import time
from functools import cache

import pytest
import torch

from flexmesh.actors.runner.engine import Engine
from flexmesh.meshcore.config import EngineConfig
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.request import RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS, hf_greedy

NEW_TOKENS = 20
NONE: frozenset[int] = frozenset()
CFG = EngineConfig(block_size_tokens=16, max_batched_tokens=512, max_num_seqs=8)


class Pair:
    """A prefill engine and a decode engine of one model, KV handed over in process."""

    def __init__(self, model_path: str) -> None:
        self.p = Engine(model_path, CFG)
        self.d = Engine(model_path, CFG)
        self.outputs: dict[str, list[RequestOutput]] = {}

    def run(
        self,
        prompts: list[list[int]],
        sps: list[SamplingParams],
        lose: frozenset[int] = frozenset(),
    ) -> list[list[int]]:
        """Submit prompts at staggered steps; hand each over after its first token.

        The KV of the prompts whose index is in `lose` never arrives: their decode side
        recomputes them.
        """
        rids: list[str] = []
        pending = list(zip(prompts, sps, strict=True))
        step = 0
        while pending or self.p.has_unfinished() or self.d.has_unfinished():
            if pending and step % 2 == 0:
                ids, sp = pending.pop(0)
                rids.append(self.p.add_request(prompt_token_ids=ids, sampling=sp, hand_off=True))
            handed = []
            for out in self.p.step():
                self._collect(out)
                if out.handoff is not None:
                    handed.append(out)
            exported = dict(self.p.export_handed_off())  # the step's planned export
            assert sorted(exported) == sorted(o.request_id for o in handed)
            assert not any(self.p.request_ids()), "exported: the prefill side holds nothing"
            for out in handed:
                lose_kv = rids.index(out.request_id) in lose
                self._hand_over(out, exported[out.request_id], lose_kv)
            for out in self.d.step():
                self._collect(out)
            step += 1
        return [[t for o in self.outputs[r] for t in o.token_ids] for r in rids]

    def _collect(self, out: RequestOutput) -> None:
        self.outputs.setdefault(out.request_id, []).append(out)

    def _hand_over(self, out: RequestOutput, kv: torch.Tensor, lose_kv: bool) -> None:
        state = out.handoff
        assert state is not None
        blocks = self.d.resume(state, kv_deadline=time.monotonic() + 60)
        assert blocks, "blocks are free: the decode side must reserve them"
        if lose_kv:  # as the worker and the gateway's route do: abort, resume without KV
            self.d.abort(state.request_id)
            assert self.d.resume(state, kv_deadline=None) == []
        else:
            self.d.import_kv(state.request_id, kv, state.num_kv_tokens)

    def all_free(self) -> bool:
        return all(
            e.load(time.monotonic()).kv_blocks_used == 0 and not e.request_ids()
            for e in (self.p, self.d)
        )


@cache
def _pairs(model_path: str) -> Pair:
    return Pair(model_path)


def _pair(model_path: str) -> Pair:
    pair = _pairs(model_path)
    pair.outputs.clear()
    return pair


def _prompts(engine: Engine) -> list[list[int]]:
    ids = [engine.tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    # Prompts ending exactly on a block boundary, and one block and a token.
    base = ids[1] * 3
    return [*ids, base[:16], base[:32], base[:17]]


def test_disaggregated_greedy_equals_hugging_face(model_path: str) -> None:
    pair = _pair(model_path)
    prompts = _prompts(pair.p)
    strategies = ["none", "pld"] * len(prompts)
    sps = [SamplingParams(max_tokens=NEW_TOKENS, strategy=s) for s in strategies[: len(prompts)]]
    got = pair.run(prompts, sps)
    for ids, out in zip(prompts, got, strict=True):
        assert out == hf_greedy(model_path, tuple(ids), NEW_TOKENS)
    for outs in pair.outputs.values():
        offsets = [o.offset for o in outs]
        lengths = [len(o.token_ids) for o in outs]
        assert offsets == [sum(lengths[:i]) for i in range(len(outs))], "offsets contiguous"
        final = outs[-1]
        assert final.finished and final.completion_tokens == sum(lengths)
        assert sum(1 for o in outs if o.handoff is not None) == 1
    assert pair.all_free()


def test_seeded_sampling_gives_the_same_tokens_both_ways(small_path: str) -> None:
    pair = _pair(small_path)
    prompts = _prompts(pair.p)[:4]
    sps = [
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.9, top_p=0.95, seed=s)
        for s in range(len(prompts))
    ]
    disaggregated = pair.run(prompts, sps)
    colocated = [pair.d.generate([p], sp)[0] for p, sp in zip(prompts, sps, strict=True)]
    assert disaggregated == colocated
    assert pair.all_free()


@pytest.mark.parametrize("strategy", ["none", "pld"])
def test_seeded_sampling_continues_with_the_same_tokens_after_a_migration(
    small_path: str, strategy: str
) -> None:
    """A migration hands the new worker only the tokens streamed so far (no sampler state):
    it recomputes them and draws the rest, the same tokens as an uninterrupted run."""
    pair = _pair(small_path)
    ids = _prompts(pair.p)[0]
    sp = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.9, top_p=0.95, seed=5,
                        strategy=strategy)  # fmt: skip
    whole = pair.p.generate([ids], sp)[0]
    for cut in (1, NEW_TOKENS // 2):
        state = RequestState(f"moved-{strategy}-{cut}", tuple(ids), tuple(whole[:cut]), sp,
                             sent_tokens=cut)  # fmt: skip
        assert pair.d.resume(state, kv_deadline=None) == []  # recomputes, as a migration does
        rest: list[int] = []
        while pair.d.has_unfinished():
            rest += [t for out in pair.d.step() for t in out.token_ids]
        assert whole[:cut] + rest == whole
    assert pair.all_free()


def test_lost_kv_is_recomputed_with_the_same_tokens(small_path: str) -> None:
    pair = _pair(small_path)
    prompts = _prompts(pair.p)[:3]
    sps = [SamplingParams(max_tokens=NEW_TOKENS)] * 3
    got = pair.run(prompts, sps, lose=frozenset({0, 2}))
    for ids, out in zip(prompts, got, strict=True):
        assert out == hf_greedy(small_path, tuple(ids), NEW_TOKENS)
    assert pair.all_free()


def test_abort_and_expiry_free_blocks_on_both_sides(small_path: str) -> None:
    pair = _pair(small_path)
    ids = _prompts(pair.p)[3]
    sp = SamplingParams(max_tokens=NEW_TOKENS)
    handed: list[RequestOutput] = []
    for _ in range(3):
        pair.p.add_request(prompt_token_ids=ids, sampling=sp, hand_off=True)
    while pair.p.has_unfinished():
        handed += [o for o in pair.p.step() if o.handoff is not None]
    a, b, c = (o.handoff for o in handed)
    assert a is not None and b is not None and c is not None
    assert pair.p.load(time.monotonic()).kv_blocks_in_flight > 0 and not pair.p.has_unfinished()
    # a: aborted on both sides while its KV waits; b: the hold on P and the wait on D expire.
    pair.d.resume(a, kv_deadline=time.monotonic() + 60)
    assert pair.p.abort(a.request_id) and pair.d.abort(a.request_id)
    pair.d.resume(b, kv_deadline=time.monotonic() - 1)
    pair.p.scheduler.requests[b.request_id].deadline = 0.0  # white-box: holds run out
    pair.p.scheduler.requests[c.request_id].deadline = 0.0
    assert sorted(pair.p.expire()) == sorted([b.request_id, c.request_id])
    pair.d.expire()  # b's KV wait is over: it is recomputed on D
    assert pair.d.scheduler.requests[b.request_id].num_computed_tokens == 0
    pair.d.abort(b.request_id)
    assert pair.p.export_handed_off() == [], "nothing left to export: aborted and expired"
    assert pair.all_free()


def test_a_hand_off_whose_decode_worker_died_continues_on_the_prefill_worker(
    small_path: str,
) -> None:
    """Migration onto the worker that still holds the request's KV for the dead one."""
    pair = _pair(small_path)
    ids = _prompts(pair.p)[1]
    sp = SamplingParams(max_tokens=NEW_TOKENS)
    rid = pair.p.add_request(prompt_token_ids=ids, sampling=sp, hand_off=True)
    state = None
    while state is None:
        state = next((o.handoff for o in pair.p.step() if o.handoff is not None), None)
    held = pair.p.scheduler.requests[rid]
    assert held.status == RequestStatus.KV_IN_FLIGHT  # held for the decode worker that died
    pair.p.resume(state, kv_deadline=None)  # what the gateway's migration sends
    tokens = list(state.output_token_ids)
    while pair.p.has_unfinished():
        tokens += [t for o in pair.p.step() for t in o.token_ids]
    assert tokens == hf_greedy(small_path, tuple(ids), NEW_TOKENS)
    assert pair.all_free()
