"""Hypothesis strategies for hostile OpenAI-API requests (test_http_fuzz.py): a valid body with
0-3 of its fields made wrong (a wrong type, out of range, null, a chat message OpenAI's schema
refuses, a lone surrogate, an unsupported value), any JSON value, and bytes that are not JSON
(cut or spliced, nested without bound, `NaN`, raw surrogates). A valid body alone is
served, so both ways through the API are drawn.

Every body asks for at most 3 tokens, or for an invalid count (never the default 64): the
fuzz runs against the real demo mesh too, where each token costs a forward pass."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.mesh.fuzz_requests import MODELS

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
MAX_TOKENS = ("max_tokens", "max_completion_tokens")

text = st.text(max_size=16)
# What a hostile client adds: lone surrogates (Python's json writes them as `\udXXX`
# escapes, which parse back into a str no UTF-8 can hold), NUL, emoji.
odd_text = text | st.sampled_from(["\ud800", "a\udfffb", "\x00", "😀", ""])
ints = st.integers(-3, 8) | st.integers(-(2**64), 2**64) | st.sampled_from([2**31, 2**63])
floats = st.floats(allow_nan=False) | st.sampled_from([2.5, -0.5, 1e308])
json_values = st.recursive(
    st.none() | st.booleans() | ints | floats | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)
"""Any JSON value (no NaN: `json.dumps` would write it; the raw bodies below send it)."""
ids = st.lists(st.integers(0, 300), min_size=1, max_size=6)

VALID: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["auto", "", *MODELS]),
    "temperature": st.sampled_from([0, 0.0, 0.7, 1, 2]),
    "top_p": st.sampled_from([0.05, 0.9, 1]),
    "top_k": st.integers(-1, 50),
    "seed": st.integers(-(2**63), 2**63 - 1),
    "stop": st.text(min_size=1, max_size=4) | st.lists(st.text(min_size=1, max_size=4), max_size=4),
    "stop_token_ids": st.lists(st.integers(0, 300), max_size=4),
    "ignore_eos": st.booleans(),
    "return_token_ids": st.booleans(),
    "strategy": st.sampled_from(["", "none", "pld", "spec"]),
    "stream": st.booleans(),
    "user": text,
    "n": st.just(1),
    "echo": st.just(False),
    "presence_penalty": st.just(0),
    "logit_bias": st.just({}),
    "tools": st.just([]),
    "response_format": st.just({"type": "text"}),
}
"""Optional fields, each at a value the API serves."""
WRONG: dict[str, st.SearchStrategy[Any]] = {
    "model": odd_text,
    "temperature": st.sampled_from([-0.1, 2.01, 1e308, True, "1"]),
    "top_p": st.sampled_from([0, -1, 1.5, False]),
    "top_k": st.sampled_from([-2, -(2**40), 2**40, 1.5, True]),
    "seed": st.sampled_from([2**63, -(2**63) - 1, 2**70, 1.0, True]),
    "stop": st.sampled_from(["", [""], [1], ["x"] * 17, ["x" * 257], {}]),
    "stop_token_ids": st.sampled_from([[-1], [10**9], [True], [1.0], [0] * 65, 5]),
    "ignore_eos": st.sampled_from([1, "true"]),
    "stream": st.sampled_from([1, "yes"]),
    "stream_options": st.fixed_dictionaries({"include_usage": json_values}),
    "n": st.sampled_from([0, 2, 129, True, 1.0]),
    "best_of": st.sampled_from([0, 2, True]),
    "echo": st.sampled_from([True, 0]),
    "logprobs": st.sampled_from([True, 1, 6, -1, 0, False]),
    "top_logprobs": st.sampled_from([1, 21, True]),
    "frequency_penalty": st.sampled_from([0.5, -3, "0"]),
    "logit_bias": st.dictionaries(text, ints, min_size=1, max_size=2),
    "tools": st.lists(json_values, min_size=1, max_size=2),
    "tool_choice": st.sampled_from(["auto", "required", {"type": "function"}]),
    "response_format": st.sampled_from([{"type": "json_object"}, "text"]),
    "prompt": st.sampled_from([[], [[]], ["a", "b"], [[1], [2]], [-1], [10**6], [True], 5, ""]),
    "max_tokens": st.sampled_from([0, -1, 1.5, True, "2", [2], 2**31, 2**70, 10**6]),
}
"""Values OpenAI's API or FlexMesh's limits refuse, per field (and any JSON value besides)."""

text_parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1)
content = text | text_parts
calls = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["c1", "c2"]),
        "type": st.just("function"),
        "function": st.fixed_dictionaries({"name": text, "arguments": text}),
    }
)
good_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": content}
    ),
    st.just({"role": "function", "name": "f", "content": None}),
)
loose_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", "function"]) | odd_text,
        "content": st.one_of(content, json_values, st.lists(json_values, max_size=2)),
        "name": json_values,
        "tool_call_id": st.sampled_from(["c1", "c2"]) | json_values,
        "tool_calls": st.lists(calls | json_values, max_size=2) | json_values,
    },
)
"""A message with any of its fields missing, wrong or right."""


@st.composite
def chats(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A conversation OpenAI accepts, sometimes through a tool call and its answer."""
    chat = draw(st.lists(good_message, max_size=2))
    if draw(st.booleans()):
        call = draw(calls)
        chat += [{"role": "assistant", "content": None, "tool_calls": [call]}]
        chat += [{"role": "tool", "tool_call_id": call["id"], "content": draw(content)}]
    return [*chat, {"role": "user", "content": draw(content)}]


@st.composite
def structured(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid body with 0-3 of its fields made wrong or taken out."""
    chat = draw(st.booleans())
    body = draw(st.fixed_dictionaries({}, optional=VALID))
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    if chat:
        body["messages"] = draw(chats())
    else:
        body["prompt"] = draw(st.one_of(text.filter(bool), ids, st.tuples(text.filter(bool))))
    max_tokens = draw(st.sampled_from(MAX_TOKENS if chat else MAX_TOKENS[:1]))
    body[max_tokens] = draw(st.integers(1, 3))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))):
        field = draw(st.sampled_from([*WRONG, "messages", "x-unknown"]))
        if field == "messages" or (chat and field == "prompt"):
            field = "messages"
            body[field] = draw(
                st.one_of(st.lists(loose_message, min_size=1, max_size=3), json_values)
            )
        elif field != "max_tokens" and draw(st.integers(0, 4)) == 0:  # left out
            body.pop(field, None)
        else:
            key = max_tokens if field == "max_tokens" else field
            body[key] = draw(WRONG.get(field, json_values) | json_values)
        if body.get(max_tokens) is None:  # null means 64 tokens: too slow on the real mesh
            body[max_tokens] = 0
    return (CHAT if chat else COMPLETIONS), body


def _encode(body: Any, ascii_only: bool) -> bytes:
    """JSON bytes; non-ASCII output writes lone surrogates raw (not UTF-8: not JSON)."""
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    """Bytes a parser must refuse or survive: cut or spliced JSON, deep nesting, `NaN`."""
    _, body = draw(structured())
    data = _encode(body, draw(st.booleans()))
    kind = draw(st.sampled_from(["cut", "splice", "deep", "constant", "bytes", "empty"]))
    if kind == "cut":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(max_size=8)) + data[at:]
    if kind == "deep":
        depth = draw(st.sampled_from([62, 63, 64, 999, 5000, 100_000]))
        open_, close = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = open_ * depth + b"1" + close * depth
        return b'{"model": "demo-small", "prompt": ' + inner + b', "max_tokens": 1}'
    if kind == "constant":
        name = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]))
        return data.replace(b"1", name, 1) if b"1" in data else name
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    return b""


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, bytes]:
    # Weighted by hand: `st.one_of` would count a strategy given twice once.
    kind = draw(st.sampled_from(["ascii"] * 5 + ["utf-8", "json", "raw"]))
    if kind in ("ascii", "utf-8"):
        path, body = draw(structured())
        return path, _encode(body, kind == "ascii")
    path = draw(st.sampled_from([COMPLETIONS, CHAT]))
    return path, _encode(draw(json_values), True) if kind == "json" else draw(raw_bodies())


requests = _requests()
"""(path, body bytes): mostly OpenAI-shaped bodies (5 in 8 ASCII-escaped, 1 in 8 UTF-8), then
any JSON value, then bytes."""
