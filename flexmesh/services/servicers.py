"""Thin gRPC servicers: protobuf in, domain objects to the frontend, protobuf out."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from contextlib import aclosing
from typing import Any

import grpc

from flexmesh.meshcore.config import GatewayConfig
from flexmesh.meshcore.errors import FlexMeshError, InvalidRequestError
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.meshcore.routing import THRESHOLDS, RoutingConfig
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.frontend import Chunk, Frontend, GenerationInput
from flexmesh.services.core.inputs import DEFAULT_MAX_TOKENS, check_prompt, generation_input
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc


def to_input(req: pb.GenerateRequest, gw: GatewayConfig) -> GenerationInput:
    """Validate and convert a GenerateRequest; bad fields raise InvalidRequestError by name."""
    sampling = SamplingParams(
        max_tokens=req.max_tokens if req.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=req.temperature,
        top_p=req.top_p if req.HasField("top_p") else 1.0,
        top_k=req.top_k,
        seed=req.seed if req.HasField("seed") else None,
        stop_token_ids=tuple(req.stop_token_ids),
        stop=tuple(req.stop),
        ignore_eos=req.ignore_eos,
        strategy=req.strategy,
    )
    return generation_input(
        gw, req.prompt, req.prompt_token_ids, sampling, req.model, req.request_id
    )


def to_response(chunk: Chunk) -> pb.GenerateResponse:
    out = chunk.output
    msg = pb.GenerateResponse(
        request_id=chunk.request_id, token_ids=out.token_ids, text=out.text, offset=chunk.offset
    )
    if chunk.final:
        msg.finish_reason = out.finish_reason
        msg.usage.CopyFrom(
            pb.Usage(prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens)
        )
        msg.timings.CopyFrom(pb.Timings(**chunk.timings))
        r = chunk.route
        assert r is not None
        msg.route.CopyFrom(
            pb.Route(
                model=r.model,
                worker=r.worker,
                intent=r.intent,
                confidence=r.confidence,
                strategy=r.strategy,
                probe_ms=r.probe_ms,
                draft_tokens_accepted=out.draft_tokens_accepted,
                draft_tokens_proposed=out.draft_tokens_proposed,
                prefill_worker=r.prefill_worker or r.worker,
                kv_transport=r.kv_transport,
                kv_bytes=r.kv_bytes,
                kv_transfer_ms=r.kv_transfer_ms,
                migrations=r.migrations,
                demanding=r.demanding,
                downgraded=r.downgraded,
                intents=r.intents,
                quantised=r.quantised,
            )
        )
    return msg


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> None:
        """Stream the request's chunks with `context.write` (no generator layer of its own)."""
        remaining = context.time_remaining()
        timeout_s = remaining if remaining is not None and math.isfinite(remaining) else None
        try:
            inp = to_input(request, self.frontend.config.gateway)
        except FlexMeshError as exc:
            self.frontend.record_failure(request.model or "auto", exc.status)
            raise
        # Closed at once when the client leaves mid-write: the request is aborted on its workers.
        async with aclosing(self.frontend.generate(inp, timeout_s=timeout_s)) as chunks:
            async for chunk in chunks:
                await context.write(to_response(chunk))

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        check_prompt(request.prompt, self.frontend.config.gateway)
        r = await self.frontend.classify(request.prompt)
        return pb.ClassifyResponse(
            intent=r.intent,
            confidence=r.confidence,
            scores=r.scores,
            probe_ms=r.probe_ms,
            backend=r.backend,
            intents=r.intents,
        )


def policy_to_proto(
    p: RoutingConfig, pinned: Iterable[str] = (), balance: Mapping[str, float] | None = None
) -> pb.Policy:
    """The routing policy, its pins and the placement balance per model (`balance`)."""
    routes = [
        pb.IntentRoute(
            intent=f.name,
            model=p.model_name(route.model),
            strategy=route.strategy,
            spillable=route.spillable,
            variant=route.variant,
        )
        for f in dataclasses.fields(p.routes)
        for route in [p.routes.get(f.name)]
    ]
    return pb.Policy(
        version=p.version,
        routes=routes,
        confidence_threshold=p.confidence_threshold,
        spill_queue_ms=p.spill_queue_ms,
        return_queue_ms=p.return_queue_ms,
        small_spill_queue_ms=p.small_spill_queue_ms,
        small_return_queue_ms=p.small_return_queue_ms,
        long_context_tokens=p.long_context_tokens,
        large_model=p.large_model,
        small_model=p.small_model,
        pinned=sorted(pinned),
        placement_balance=dict(balance or {}),
    )


def changes_from_request(
    req: pb.SetPolicyRequest, current: RoutingConfig, resident: Iterable[str] = ()
) -> dict[str, Any]:
    """The fields a SetPolicyRequest sets, as a nested mapping for `apply_update`; a route's
    variant must be one of the `resident` models."""
    changes: dict[str, Any] = {
        name: getattr(req, name)
        for name in (*THRESHOLDS, "long_context_tokens")
        if req.HasField(name)
    }
    roles = {
        current.small_model: "small",
        current.large_model: "large",
        "small": "small",
        "large": "large",
    }
    routes: dict[str, Any] = {}
    for r in req.routes:
        if r.model not in roles:
            raise InvalidRequestError("routes.model", f"{r.model!r} is not {sorted(roles)}")
        if r.variant and r.variant not in set(resident):
            raise InvalidRequestError("routes.variant", f"{r.variant!r} is not a resident model")
        routes[r.intent] = {
            "model": roles[r.model],
            "strategy": r.strategy or "none",
            "spillable": r.spillable,
            "variant": r.variant,
        }
    if routes:
        changes["routes"] = routes
    return changes


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        frontend = self.frontend
        workers = await (frontend.latest_status() if request.cached else frontend.status())
        return pb.GetStatusResponse(
            workers=[worker_to_proto(w) for w in workers],
            decisions=[pb.Decision(**dataclasses.asdict(d)) for d in self.frontend.ops.decisions],
            in_flight=self.frontend.in_flight,
            max_queue_len=self.frontend.config.gateway.max_queue_len,
            policy_version=self.frontend.router.policy.version,
            policy=self._policy() if self.frontend.probe is not None else None,
        )

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Policy:
        return self._policy()

    async def SetPolicy(
        self, request: pb.SetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Policy:
        ops = self.frontend.ops
        changes = changes_from_request(request, self.frontend.router.policy, self.frontend.workers)
        for model, ratio in request.placement_balance.items():
            ops.set_balance(model, ratio)
        if changes or not request.placement_balance:
            ops.set_policy(changes, request.expected_version)
        return self._policy()

    async def UnpinPolicy(
        self, request: pb.UnpinPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Policy:
        self.frontend.ops.unpin_policy(list(request.fields))
        return self._policy()

    def _policy(self) -> pb.Policy:
        f = self.frontend
        return policy_to_proto(f.router.policy, f.ops.policy_pins, f.pool.balance)

    async def SetWorkerRole(
        self, request: pb.SetWorkerRoleRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerStatus:
        return worker_to_proto(await self.frontend.ops.set_role(request.worker, request.role))

    async def DrainWorker(
        self, request: pb.DrainWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerStatus:
        return worker_to_proto(await self.frontend.ops.drain(request.worker, not request.resume))

    async def UnpinWorker(
        self, request: pb.UnpinWorkerRequest, context: grpc.aio.ServicerContext
    ) -> pb.WorkerStatus:
        return worker_to_proto(await self.frontend.ops.unpin(request.worker))


def worker_to_proto(w: WorkerStatus) -> pb.WorkerStatus:
    """Every `WorkerStatus` field has a proto field of the same name."""
    return pb.WorkerStatus(**dataclasses.asdict(w))
