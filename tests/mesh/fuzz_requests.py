"""Hypothesis strategies over every field of the requests a gateway takes (test_fuzz.py)."""

from __future__ import annotations

from hypothesis import strategies as st

from flexmesh.meshcore.config import WORKER_ROLES
from flexmesh.meshcore.routing import INTENTS
from flexmesh.v1 import flexmesh_pb2 as pb

MODELS = ("demo-small", "demo-large")
WORKERS = ("w-demo-small", "w-demo-large")

int32 = st.integers(-(2**31), 2**31 - 1)
small_ints = st.integers(-3, 8)
float32 = st.floats(width=32)  # nan, infinities and subnormals included
text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=64)  # valid UTF-8 only


def one_of_or_any(known: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Mostly a name the mesh knows, sometimes anything."""
    return st.sampled_from(("", *known)) | text


def _optional(msg: object, field: str, value: object) -> None:
    if value is not None:
        setattr(msg, field, value)


@st.composite
def generate_requests(draw: st.DrawFn, max_tokens: st.SearchStrategy[int] = int32) -> object:
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
    _optional(req, "max_tokens", draw(st.none() | max_tokens))
    _optional(req, "top_p", draw(st.none() | float32))
    _optional(req, "seed", draw(st.none() | st.integers(-(2**63), 2**63 - 1)))
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
