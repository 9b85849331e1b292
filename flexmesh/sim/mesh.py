"""A simulated mesh: the gateway's own core over simulated workers, on the virtual clock.

What runs for real: the `Frontend` (admission, routing with its load signal, the traffic
window), the `Dispatcher` and the route machine (placement, hand-off, fallback), `Operations`
(roles, budgets, policy writes, decisions), the routing policy, the controller's `decide` every
`controller.interval_ms` with its changes applied by `Operations.apply` as the gateway applies
them, and in each worker the scheduler with its block pool (`sim/worker.py`). The probe is the
real classifier on the prompt text, or its measured confusion matrix when there is no text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from flexmesh.loadgen.records import ReplayError, ReplayRequest, Sender, Stream, server_fields
from flexmesh.loadgen.status import StatusReader, policy_sample, status_sample
from flexmesh.meshcore.affinity import CHARS_PER_TOKEN
from flexmesh.meshcore.config import MeshConfig, ModelSpec
from flexmesh.meshcore.controller_policy import Action, ControllerState, decide
from flexmesh.meshcore.errors import FlexMeshError, InvalidRequestError, status_name
from flexmesh.meshcore.routing import INTENTS, ProbeResult
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.frontend import Chunk, Frontend, GenerationInput
from flexmesh.sim.profile import ModelShape, Profile, TransportFit
from flexmesh.sim.worker import TOKEN, SimWorker

SIM_VOCAB_MASK = 0xFFFF
"""Simulated token ids stay below 2**16."""
LOCAL = TransportFit()
"""A hand-off that moves nothing (costs nothing)."""


def scale_config(config: MeshConfig, workers: int) -> MeshConfig:
    """`config` with `workers` workers in all, each model keeping its share of them (at least
    one) and its roles in proportion."""
    total = sum(m.num_workers for m in config.models)
    if workers <= 0:
        raise InvalidRequestError("mesh_size", f"must be > 0, got {workers}")
    if workers < len(config.models):
        raise InvalidRequestError(
            "mesh_size", f"is {workers}, fewer than the config's {len(config.models)} models"
        )
    counts = [max(1, round(m.num_workers * workers / total)) for m in config.models]
    counts[0] += workers - sum(counts)  # rounding goes to the first model
    models = [_scale_model(m, n) for m, n in zip(config.models, counts, strict=True)]
    return replace(config, models=models)


def _scale_model(spec: ModelSpec, n: int) -> ModelSpec:
    if not spec.roles:
        return replace(spec, num_workers=n)
    roles: list[str] = []
    for i in range(n):  # each role keeps its share: worker i takes the role at its position
        roles.append(spec.roles[min(len(spec.roles) - 1, i * len(spec.roles) // n)])
    if n > 1 and len(set(roles)) < len(set(spec.roles)):
        roles[-1] = spec.roles[-1]
    return replace(spec, num_workers=n, roles=tuple(roles))


class ConfusionProbe:
    """The probe as its measured confusion matrix: the intent it names for a prompt of known
    intent is drawn from that intent's row (seeded by the prompt, so a run repeats)."""

    backend = "confusion"

    def __init__(self, truth: Mapping[str, str], seed: int, probe_ms: float) -> None:
        self.truth, self.seed, self.probe_ms = dict(truth), seed, probe_ms
        self.rows = confusion_rows()

    async def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        await asyncio.sleep(self.probe_ms / 1000.0)
        true = self.truth.get(prompt, "chat")
        row = self.rows.get(true, {true: 1.0})
        digest = hashlib.sha256(f"{self.seed}:{prompt}".encode()).digest()
        intent = _draw(row, int.from_bytes(digest[:8], "big") / 2**64)
        return ProbeResult(intent, row[intent], {intent: 1.0}, self.probe_ms, "confusion")


def _draw(row: Mapping[str, float], u: float) -> str:
    """The intent at cumulative probability `u` of `row` (in name order)."""
    acc = 0.0
    names = sorted(row)
    for name in names:
        acc += row[name]
        if u < acc:
            return name
    return names[-1]


def confusion_rows() -> dict[str, dict[str, float]]:
    """The shipped classifier's confusion on its held-out slice, per true intent (rows sum to
    1); long_context is the length rule's, exact."""
    files = resources.files("flexmesh.actors.probe") / "model" / "probe_classifier.json"
    meta = json.loads(files.read_text())
    counts: dict[str, dict[str, float]] = {}
    for source in meta["heldout_slice"]["by_source"].values():
        for true, row in source["confusion"].items():
            for named, n in row.items():
                counts.setdefault(true, {}).setdefault(named, 0.0)
                counts[true][named] += n
    rows = {
        t: {k: v / sum(r.values()) for k, v in r.items() if v}
        for t, r in counts.items()
        if sum(r.values())
    }
    rows["long_context"] = {"long_context": 1.0}
    return {t: r for t, r in rows.items() if t in INTENTS}


class ClassifierProbe:
    """The real probe front and classifier on the prompt text; its time is the profile's."""

    backend = "classifier"

    def __init__(self, long_context_tokens: int, probe_ms: float, part_confidence: float) -> None:
        from flexmesh.actors.probe.classifier import ClassifierProbe as Backend
        from flexmesh.actors.probe.front import ProbeFront

        self.front = ProbeFront(Backend(), long_context_tokens, part_confidence=part_confidence)
        self.probe_ms = probe_ms

    async def classify(self, prompt: str, long_context_tokens: int | None = None) -> ProbeResult:
        if long_context_tokens:
            self.front.long_context_tokens = long_context_tokens
        result = self.front.classify(prompt)
        await asyncio.sleep(self.probe_ms / 1000.0)
        return replace(result, probe_ms=self.probe_ms)


@dataclass
class SimMesh:
    """A running simulated mesh (build it inside the virtual loop with `start`)."""

    config: MeshConfig
    profile: Profile
    frontend: Frontend
    workers: dict[str, SimWorker]
    probe_backend: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def check(self) -> None:
        """Raise what broke a simulated worker's loop, if anything did (a simulator bug)."""
        for w in self.workers.values():
            if w.failure is not None:
                raise RuntimeError(f"simulated {w.name} failed: {w.failure!r}") from w.failure

    def stop(self) -> None:
        self.frontend.stop()
        for w in self.workers.values():
            w.stop()
        for t in self._tasks:
            t.cancel()

    async def _control(self) -> None:
        """The controller: `decide` on the gateway's snapshot every interval, applied by the
        gateway's `Operations` (what `actors/controller.py` does over Ray)."""
        cfg = self.config.controller
        state = ControllerState()
        ops = self.frontend.ops
        while True:
            await asyncio.sleep(cfg.interval_ms / 1000.0)
            snap = self.frontend.snapshot()
            actions, state = decide(snap, state, cfg)
            if actions:
                version = snap.policy.version if snap.policy is not None else 0
                await ops.apply(actions, version)
                self.decisions += [_decision(snap.t_s, a) for a in actions]

    def sender(self, model: str, strategy: str, temperature: float) -> Sender:
        """The replay's calls, straight into the gateway's core (what the gRPC servicer does)."""
        frontend = self.frontend

        async def send(
            req: ReplayRequest,
            request_id: str,
            timeout_s: float | None,
            stream: Stream,
            elapsed_s: Any,
        ) -> None:
            sampling = SamplingParams(
                max_tokens=req.max_tokens,
                temperature=temperature,
                ignore_eos=req.ignore_eos,
                strategy=strategy,
            )
            inp = GenerationInput(req.prompt, sim_token_ids(req), sampling, model, request_id)
            try:
                async for chunk in frontend.generate(inp, timeout_s):
                    if chunk.output.token_ids:
                        stream.add(elapsed_s(), len(chunk.output.token_ids))
                    if chunk.final:
                        stream.final = _final_fields(chunk)
            except FlexMeshError as exc:
                raise ReplayError(status_name(exc), str(exc)) from exc

        return send

    def status_reader(self) -> StatusReader:
        frontend = self.frontend

        async def read() -> dict[str, Any] | None:
            workers = await frontend.latest_status()
            policy = None
            if frontend.probe is not None:
                p = frontend.router.policy
                strategies = {i: p.routes.get(i).strategy for i in (*INTENTS, "low_confidence")}
                policy = policy_sample(p, strategies)
            gw = frontend.config.gateway
            version = frontend.router.policy.version
            return status_sample(frontend.in_flight, gw.max_queue_len, version, workers, policy)

        return read


def sim_token_ids(req: ReplayRequest) -> tuple[int, ...]:
    """`req.prompt_tokens` token ids that share a prefix exactly where prompt texts do (one id
    per `CHARS_PER_TOKEN` characters, then padding), so the engines' prefix caches and the
    gateway's index hit on the replay's real prefix reuse; nothing else reads their values."""
    n, text = max(1, req.prompt_tokens), req.prompt.encode("utf-8")
    ids = [
        zlib.crc32(text[i : i + CHARS_PER_TOKEN]) & SIM_VOCAB_MASK
        for i in range(0, min(len(text), n * CHARS_PER_TOKEN), CHARS_PER_TOKEN)
    ]
    return (*ids, *(TOKEN,) * (n - len(ids)))


def _final_fields(chunk: Chunk) -> dict[str, Any]:
    out = chunk.output
    route = chunk.route
    fields: dict[str, Any] = {
        "finish_reason": out.finish_reason,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
    }
    fields.update(
        server_fields(route=vars(route) if route is not None else None, timings=chunk.timings)
    )
    return fields


def _decision(t_s: float, a: Action) -> dict[str, Any]:
    return {
        "t_s": round(t_s, 6),
        "kind": a.kind,
        "target": a.target,
        "old": str(a.old),
        "new": str(a.new),
        "reason": a.reason,
        "model": a.model,
    }


def start(
    config: MeshConfig,
    profile: Profile,
    shapes: Mapping[str, ModelShape],
    truth: Mapping[str, str] | None = None,
    probe: str = "auto",
    seed: int = 0,
) -> SimMesh:
    """Build and start a simulated mesh of `config` on `profile` (inside the virtual loop).

    `shapes` gives each model's shape; `truth` maps prompt text to its intent for the
    confusion-matrix probe. `probe`: "classifier" (the real probe on the text), "confusion"
    or "auto" (the classifier when the config's probe backend is it; the `lm` backend needs
    the small model's forward pass, so its place takes the classifier's confusion matrix).
    """
    total = sum(m.num_workers for m in config.models)
    profile.check_size(total)
    loop = asyncio.get_running_loop()
    device = profile.device
    per_node = max(1, device.devices_per_node)
    nodes: dict[str, int] = {}
    workers: dict[str, SimWorker] = {}

    for name in {device.intra_node_transport, device.inter_node_transport} - {"local"}:
        profile.transport(name)  # refused by name when the profile has no such transport

    def link(src: SimWorker, dst: SimWorker) -> tuple[str, TransportFit]:
        same = nodes[src.name] == nodes[dst.name]
        name = device.intra_node_transport if same else device.inter_node_transport
        return name, LOCAL if name == "local" else profile.transport(name)

    index = 0
    for spec in config.models:
        shape = shapes.get(spec.name)
        if shape is None:
            raise InvalidRequestError(f"models.{spec.name}", "has no known shape")
        cost = profile.step_cost(spec.name, shape)
        for i in range(spec.num_workers):
            name = f"worker-{spec.name}-{i}"
            nodes[name] = index // per_node
            index += 1
            workers[name] = SimWorker(
                name,
                spec.name,
                shape,
                cost,
                config.engine,
                config.pd,
                profile.overheads,
                link,
                workers,
                spec.role_of(i),
                device.kind,
            )
    by_model: dict[str, list[Any]] = {}
    for w in workers.values():
        by_model.setdefault(w.model, []).append(w)
    backend = ""
    probe_client: Any = None
    if config.adaptive:
        if probe == "auto":
            probe = (
                "classifier" if config.probe.backend == "classifier" and not truth else "confusion"
            )
        ms = profile.overheads.probe_ms
        if probe == "classifier":
            probe_client = ClassifierProbe(
                config.routing.long_context_tokens, ms, config.probe.part_confidence
            )
        else:
            probe_client = ConfusionProbe(truth or {}, seed, ms)
        backend = probe
    frontend = Frontend(config, by_model, probe_client, clock=loop.time, wall_clock=loop.time)
    frontend.start()
    mesh = SimMesh(config, profile, frontend, workers, backend)
    if config.controller.enabled:
        mesh._tasks.append(loop.create_task(mesh._control()))
    return mesh


def utilisation(mesh: SimMesh, duration_s: float) -> dict[str, float]:
    """Fraction of the run each worker's engine was busy."""
    if duration_s <= 0 or not math.isfinite(duration_s):
        return {}
    return {n: round(w.busy_s / duration_s, 4) for n, w in mesh.workers.items()}
