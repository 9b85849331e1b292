"""Prefill on one engine, decode on another: the KV seams give exactly co-located output, and
every buffer of a hand-off sits on the cache's device (a real CUDA/NPU device where there is
one, else the `meta` device, recorded op by op with a TorchDispatchMode)."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from types import SimpleNamespace
from typing import Any

import pytest
import ray
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from flexmesh.actors.kv import describe, to_numpy
from flexmesh.actors.kv_mover import KVMover
from flexmesh.actors.runner.engine import Engine
from flexmesh.actors.runner.runner import ModelRunner, pick_device
from flexmesh.meshcore.config import EngineConfig, PDConfig
from flexmesh.meshcore.errors import KVTransferError
from flexmesh.meshcore.messages import RequestOutput, RequestState
from flexmesh.meshcore.request import RequestStatus
from flexmesh.meshcore.sampling import SamplingParams
from tests.runner.conftest import PROMPTS, hf_greedy

NEW_TOKENS = 20
NONE: frozenset[int] = frozenset()
CFG = EngineConfig(block_size_tokens=16, max_batched_tokens=512, max_num_seqs=8)


class Pair:
    """A prefill engine and a decode engine of one model, KV handed over in process."""

    def __init__(self, model_path: str, cfg: EngineConfig = CFG) -> None:
        self.p = Engine(model_path, cfg)
        self.d = Engine(model_path, cfg)
        self.outputs: dict[str, list[RequestOutput]] = {}
        self.moved_blocks = 0
        """KV blocks handed over so far (those the decode side held already stay)."""

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
        held, blocks = self.d.resume(state, kv_deadline=time.monotonic() + 60)
        assert blocks, "blocks are free: the decode side must reserve them"
        if lose_kv:  # as the worker and the gateway's route do: abort, resume without KV
            self.d.abort(state.request_id)
            assert self.d.resume(state, kv_deadline=None) == (0, 0)
        else:  # only the blocks the decode side does not hold travel, as the mover sends them
            self.moved_blocks += blocks
            self.d.import_kv(state.request_id, kv[:, :, held:], state.num_kv_tokens)

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
        assert pair.d.resume(state, kv_deadline=None) == (0, 0)  # recomputes, as a migration does
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


# -- where a hand-off's buffers live ---------------------------------------------------------


class DeviceLog(TorchDispatchMode):
    """Records the device of every tensor each op reads or writes."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.device]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves = tree_leaves((args, kwargs, out))
        self.seen += [(str(func), t.device) for t in leaves if isinstance(t, torch.Tensor)]
        return out


_ACCELERATOR = pick_device("auto")
DEVICES = [
    pytest.param("meta", id="meta"),
    pytest.param(
        str(_ACCELERATOR),
        id="accelerator",
        marks=pytest.mark.skipif(
            _ACCELERATOR.type == "cpu", reason="no CUDA or NPU device here: `meta` stands in"
        ),
    ),
]
CACHE_SHAPE = (2, 2, 8, 4, 2, 8)  # [layers, 2, blocks, block_size, kv_heads, head_dim]


def _runner(device: str) -> ModelRunner:
    runner = ModelRunner.__new__(ModelRunner)  # the KV seams alone: no weights
    runner.device, runner.dtype = torch.device(device), torch.float32
    runner.kv_cache = torch.randn(CACHE_SHAPE).to(device)
    return runner


def _mover(runner: ModelRunner, into: list[int], imported: list[torch.device]) -> KVMover:
    """A worker's mover around `runner`: the engine's import writes into blocks `into`."""

    def import_kv(rid: str, kv: torch.Tensor, num_kv_tokens: int) -> None:
        imported.append(kv.device)
        runner.scatter_kv(into, kv)

    async def call(fn: Callable[[], Any]) -> Any:
        return fn()

    engine = SimpleNamespace(
        device=runner.device, dtype=runner.dtype, kv_shape=runner.kv_shape, import_kv=import_kv
    )
    aengine = SimpleNamespace(engine=engine, exports=None, call=call)
    metrics = SimpleNamespace(transfer=lambda *_: None)
    return KVMover("d", "m", "ns", PDConfig(), aengine, metrics)  # type: ignore[arg-type]


@pytest.fixture
def on_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    context = SimpleNamespace(get_node_id=lambda: "node-1")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)


@pytest.mark.parametrize("device", DEVICES)
def test_a_hand_offs_buffers_stay_on_the_cache_device(device: str, on_one_node: None) -> None:
    """The planned export gathers into P's staging buffer and D scatters from its receive
    buffer: every tensor of both sits on the cache's device (a collective send/recv needs
    device memory, and a host buffer made every NPU or CUDA hand-off fall back to recompute)."""
    p, d = _runner(device), _runner(device)
    sender, receiver = _mover(p, [], []), _mover(d, [], [])
    assert sender.aengine.exports is not None
    stage, _ = sender.aengine.exports
    with DeviceLog() as log:
        kv = p.gather_kv([1, 3, 5], stage(p.kv_shape(3)))  # the planned export on P
        received = receiver.buffers.take(d.kv_shape(3), d.dtype)  # D's receive buffer
        received.copy_(kv)  # what the pair's collective send/recv does
        d.scatter_kv([0, 2, 4], received)
    assert {dev for _, dev in log.seen} == {p.kv_cache.device}, log.seen
    if device != "meta":
        assert torch.equal(d.kv_cache[:, :, [0, 2, 4]], p.kv_cache[:, :, [1, 3, 5]])


@pytest.mark.parametrize("device", DEVICES)
async def test_the_object_store_fallback_copies_through_the_host_and_says_so(
    device: str, on_one_node: None
) -> None:
    """Without a shared group the bytes go device → host → object store → host → device, as
    explicit copies, and the route names the hops; the import gets device memory."""
    d = _runner(device)
    p = _runner("cpu" if device == "meta" else device)  # a meta tensor has no bytes to send
    imported: list[torch.device] = []
    receiver = _mover(d, [0, 2, 4], imported)
    kv = p.gather_kv([1, 3, 5])
    array, meta = to_numpy(kv), describe(kv, "r1", "m")

    async def send_kv(rid: str, dst_rank: int, skip_blocks: int) -> tuple[bytes, list[Any]]:
        assert dst_rank < 0 and skip_blocks == 0  # the object store, every block
        ref = asyncio.get_running_loop().create_future()
        ref.set_result(array)
        return meta.pack(), [ref]

    receiver._peers["p"] = SimpleNamespace(send_kv=SimpleNamespace(remote=send_kv))
    state = RequestState("r1", (1,) * 12, (2,), SamplingParams(), num_kv_tokens=12,
                         kv_node="node-1")  # fmt: skip
    route = await receiver.take(state, "p", -1, (0, 3), time.monotonic() + 30)
    hops = "→".join(t for t in (p.device.type, "host", d.device.type) if t != "cpu")
    assert route["kv_transport"] == f"object_store ({hops})"
    assert imported == [d.kv_cache.device]
    if device != "meta":
        assert torch.equal(d.kv_cache[:, :, [0, 2, 4]], p.kv_cache[:, :, [1, 3, 5]])


class Wire:
    """Both ends' collective group in process, with gloo's rules: a send meets the posted recv
    of the same dtype and size, and both take contiguous memory."""

    name, backend, rank, broken = "kv-m", "gloo", 1, ""

    def __init__(self) -> None:
        self.sent: queue.Queue[torch.Tensor] = queue.Queue()

    def send(self, kv: torch.Tensor, dst_rank: int) -> None:
        assert kv.is_contiguous(), "gloo sends contiguous memory"
        self.sent.put(kv.clone())

    def recv(self, buffer: torch.Tensor, src_rank: int) -> None:
        kv = self.sent.get(timeout=10)
        assert buffer.is_contiguous() and buffer.dtype == kv.dtype
        if buffer.numel() != kv.numel():
            raise RuntimeError(f"gloo: {kv.numel()} elements sent, {buffer.numel()} posted")
        buffer.view(-1).copy_(kv.view(-1))


class Ref:
    """An object store's reference in process: awaiting it gives the value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Any:
        yield from ()
        return self.value


@pytest.mark.parametrize("transport", ["object_store", "gloo"])
async def test_only_the_blocks_the_decode_side_lacks_travel(
    transport: str, on_one_node: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode side holds the first 2 of a request's 5 blocks (its prefix cache): the sender
    sends the other 3 (copied out of its staged KV, contiguous, checksummed), the receiver
    checks them against its reservation and imports them, and the route counts the bytes
    moved. A reservation that does not match what is sent fails the transfer."""
    p, d = _runner("cpu"), _runner("cpu")
    sender, receiver = _mover(p, [], []), _mover(d, [0, 2, 4], [])
    wire = Wire()
    sender.group = receiver.group = wire  # type: ignore[assignment]
    monkeypatch.setattr(ray, "put", lambda array: Ref(array.copy()))  # the store copies
    receiver._peers["p"] = SimpleNamespace(send_kv=SimpleNamespace(remote=sender.send))
    assert sender.aengine.exports is not None
    stage, _ = sender.aengine.exports
    group = wire.name if transport == "gloo" else ""
    for rid in ("r1", "r2"):  # the planned exports on P, all 5 blocks each
        sender._stage(rid, p.gather_kv([1, 3, 5, 6, 7], stage(p.kv_shape(5))))
    state = RequestState("r1", (1,) * 20, (2,), SamplingParams(), num_kv_tokens=20,
                         kv_group=group, kv_node="node-1")  # fmt: skip
    route = await receiver.take(state, "p", 0, (2, 3), time.monotonic() + 30)
    assert route["kv_transport"] == transport
    assert route["kv_bytes"] == 3 * p.kv_cache[:, :, :1].nbytes
    assert torch.equal(d.kv_cache[:, :, [0, 2, 4]], p.kv_cache[:, :, [5, 6, 7]])
    assert "r1" not in sender._staged, "sent: the staged copy is freed"
    with pytest.raises(KVTransferError):  # 4 blocks sent (1 skipped), room for 3 here
        await receiver.take(replace(state, request_id="r2"), "p", 0, (1, 3), time.monotonic() + 30)
