"""Hypothesis strategies over every field of the requests a gateway takes (test_fuzz.py), the
settings every fuzz test shares (test_fuzz.py, test_http_fuzz.py), and the check that ends a
fuzz run against the real demo mesh: every KV block free again."""

from __future__ import annotations

import os
import time

import grpc
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from flexmesh.meshcore.config import WORKER_ROLES
from flexmesh.meshcore.routing import INTENTS
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc

EXAMPLES = int(os.environ.get("FLEXMESH_FUZZ_EXAMPLES", "300"))
"""Examples a fuzz test draws against fake workers (the README's figure: 10,000)."""
MESH_EXAMPLES = int(os.environ.get("FLEXMESH_MESH_FUZZ_EXAMPLES", "300"))
"""Examples a fuzz test sends to the real demo mesh."""
fuzz = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

MODELS = ("demo-small", "demo-large")
WORKERS = ("w-demo-small", "w-demo-large")

int32 = st.integers(-(2**31), 2**31 - 1)
small_ints = st.integers(-3, 8)
optional_int32 = st.none() | int32
float32 = st.floats(width=32)  # nan, infinities and subnormals included
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=64)  # valid UTF-8 only


def one_of_or_any(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Mostly a name the mesh knows, sometimes anything."""
    return st.sampled_from(("", *known)) | text


def _optional(msg: object, field: str, value: object) -> None:
    if value is not None:
        setattr(msg, field, value)


@st.composite
def generate_requests(
    draw: st.DrawFn, max_tokens: st.SearchStrategy[int | None] = optional_int32
) -> object:
    """Any `GenerateRequest`; `max_tokens` unset when `max_tokens` draws None (the default: 64
    tokens, which a fuzz of the real mesh leaves out to stay quick)."""
    req = pb.GenerateRequest(
        prompt=draw(text),
        prompt_token_ids=draw(st.lists(int32 | small_ints, max_size=24)),
        temperature=draw(float32 | st.sampled_from([0.0, 0.7])),
        top_k=draw(int32 | small_ints),
        stop=draw(st.lists(text, max_size=20)),
        ignore_eos=draw(st.booleans()),
        model=draw(one_of_or_any(("auto", *MODELS))),
        request_id=draw(text | st.text(max_size=200, alphabet="ab")),
        stop_token_ids=draw(st.lists(int32 | small_ints, max_size=70)),
        strategy=draw(one_of_or_any(("none", "pld", "spec"))),
    )
    _optional(req, "max_tokens", draw(max_tokens))
    _optional(req, "top_p", draw(st.none() | float32))
    _optional(req, "seed", draw(st.none() | st.integers(-(2**63), 2**63 - 1)))
    return req


REPEATED = ("prompt_token_ids", "stop", "stop_token_ids")
PRESENCE = ("max_tokens", "top_p", "seed")
FIELDS = tuple(pb.GenerateRequest.DESCRIPTOR.fields_by_name)
vocab_ids = st.lists(st.integers(0, 300), max_size=6)  # the demo vocabulary is 8192


@st.composite
def served_requests(draw: st.DrawFn, max_tokens: st.SearchStrategy[int]) -> object:
    """A `GenerateRequest` the mesh serves: its prompt in text or ids, at most 4 tokens."""
    req = pb.GenerateRequest(
        temperature=draw(st.sampled_from([0.0, 0.7, 1.5])),
        top_k=draw(st.integers(0, 50)),
        stop=draw(st.lists(st.text(min_size=1, max_size=4), max_size=3)),
        ignore_eos=draw(st.booleans()),
        model=draw(st.sampled_from(("", "auto", *MODELS))),
        stop_token_ids=draw(vocab_ids),
        strategy=draw(st.sampled_from(("", "none", "pld", "spec"))),
        max_tokens=draw(max_tokens),
    )
    if draw(st.booleans()):
        req.prompt = draw(st.text(min_size=1, max_size=48))
    else:
        req.prompt_token_ids.extend(draw(vocab_ids.filter(bool)))
    _optional(req, "top_p", draw(st.none() | st.sampled_from([0.5, 1.0])))
    _optional(req, "seed", draw(st.none() | st.integers(-(2**63), 2**63 - 1)))
    return req


@st.composite
def mesh_generate_requests(draw: st.DrawFn, max_tokens: st.SearchStrategy[int]) -> object:
    """A served request with 0-2 of its fields taken from `generate_requests` (any value):
    over the real mesh, most requests reach the engine, each field's refusal is still drawn."""
    req = draw(served_requests(st.integers(1, 4)))
    wild = draw(generate_requests(max_tokens=max_tokens))
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
        req.ClearField(field)
        if field in REPEATED:
            getattr(req, field).extend(getattr(wild, field))
        elif field not in PRESENCE or wild.HasField(field):
            setattr(req, field, getattr(wild, field))
    if not req.HasField("max_tokens"):  # unset means 64 tokens: too slow here
        req.max_tokens = 0
    return req


routes = st.builds(
    pb.IntentRoute,
    intent=one_of_or_any(INTENTS),
    model=one_of_or_any(("small", "large", *MODELS)),
    strategy=one_of_or_any(("none", "pld", "spec")),
    spillable=st.booleans(),
)


@st.composite
def policy_requests(draw: st.DrawFn) -> object:
    req = pb.SetPolicyRequest(
        routes=draw(st.lists(routes, max_size=4)), expected_version=draw(st.integers(-2, 5))
    )
    _optional(req, "confidence_threshold", draw(st.none() | float32))
    _optional(req, "spill_queue_ms", draw(st.none() | st.floats()))
    _optional(req, "return_queue_ms", draw(st.none() | st.floats()))
    _optional(req, "long_context_tokens", draw(st.none() | int32))
    return req


policy_fields = one_of_or_any(
    ("confidence_threshold", "spill_queue_ms", "routes", "routes.code", "routes.math.strategy")
)
worker = one_of_or_any(WORKERS)
admin_calls = st.one_of(
    st.tuples(st.just("GetStatus"), st.builds(pb.GetStatusRequest, cached=st.booleans())),
    st.tuples(st.just("GetPolicy"), st.just(pb.GetPolicyRequest())),
    st.tuples(st.just("SetPolicy"), policy_requests()),
    st.tuples(
        st.just("SetWorkerRole"),
        st.builds(pb.SetWorkerRoleRequest, worker=worker, role=one_of_or_any(WORKER_ROLES)),
    ),
    st.tuples(
        st.just("DrainWorker"),
        st.builds(pb.DrainWorkerRequest, worker=worker, resume=st.booleans()),
    ),
    st.tuples(st.just("UnpinWorker"), st.builds(pb.UnpinWorkerRequest, worker=worker)),
    st.tuples(
        st.just("UnpinPolicy"),
        st.builds(pb.UnpinPolicyRequest, fields=st.lists(policy_fields, max_size=3)),
    ),
)


def idle_worker(address: str, model: str, timeout_s: float = 10.0) -> pb.WorkerStatus:
    """`model`'s worker status once it holds no KV block and runs nothing, or at `timeout_s`."""
    with grpc.insecure_channel(address) as channel:
        admin = pb_grpc.AdminStub(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            status = admin.GetStatus(pb.GetStatusRequest(), timeout=10)
            w = next(w for w in status.workers if w.model == model)
            if (w.kv_blocks_used == 0 and w.running_requests == 0) or time.monotonic() > deadline:
                return w
            time.sleep(0.1)
