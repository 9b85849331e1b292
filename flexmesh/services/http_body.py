"""OpenAI request bodies read and checked field by field, and OpenAI error bodies: the wire
format of `services/http.py`, apart from its routes.

Whatever a hostile client sends, the answer is a 4xx naming the field wherever OpenAI's API
would refuse the body too: bytes that are not JSON (`NaN` and `Infinity` included), JSON that
nests deeper than `MAX_JSON_DEPTH` or holds a lone UTF-16 surrogate (`"\\ud800"`: Python's
json reads it, but no UTF-8 text can hold it, so the tokenizer would fail on it later), a
field of the wrong JSON type (a boolean is not an integer), a value outside OpenAI's range, a
chat message OpenAI's schema refuses (`chat_messages`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flexmesh.meshcore.errors import HTTP_STATUS, FlexMeshError, InvalidRequestError, status_name
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.inputs import DEFAULT_MAX_TOKENS

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    504: "timeout_error",
}
MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in a body (OpenAI's request shapes nest a few
levels); a deeper body is refused before anything walks it."""
INT64 = (-(2**63), 2**63 - 1)
UNSUPPORTED: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "n": (int, 1),
    "best_of": (int, 1),
    "echo": (bool, False),
    "suffix": (str, ""),
    "top_logprobs": (int, 0),
    "presence_penalty": (float, 0),
    "frequency_penalty": (float, 0),
    "logit_bias": (dict, {}),
    "tools": (list, []),
    "functions": (list, []),
    "tool_choice": ((str, dict), "none"),
    "function_call": ((str, dict), "none"),
    "response_format": (dict, {"type": "text"}),
}
"""OpenAI fields FlexMesh does not implement: the JSON type OpenAI takes, and the value that
means "not used". A wrong type, or any other value, is refused with 400 naming the field,
never silently ignored. (`logprobs` is an integer for completions, a boolean for chats.)"""
TYPED = {"model": str, "user": str, "store": bool, "metadata": dict, "service_tier": str}
"""Fields that change nothing here but whose type OpenAI checks, so FlexMesh does too."""
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # any \uD800-\uDFFF escape, paired or not


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body, read only up to `limit` bytes (`gateway.max_message_bytes`)
    and checked for depth and lone surrogates."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise InvalidRequestError("body", f"is over {limit} bytes (max_message_bytes)")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise InvalidRequestError("body", f"is over {limit} bytes (max_message_bytes)")
    try:
        # Strict UTF-8 first: `json.loads(bytes)` would let raw surrogate bytes through.
        data = json.loads(body.decode("utf-8"), parse_constant=_not_json)
    except RecursionError:  # the C parser's own bound (~1000 levels), before ours
        raise InvalidRequestError("body", f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError("body", f"is not valid JSON ({exc})") from exc
    # Walk only a body that could fail: the counts and the search are C-speed scans.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH or _SURROGATE.search(body):
        _check_tree(data)
    return data


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _check_tree(data: Any) -> None:
    """Depth and lone surrogates, iteratively (a recursive walk is what deep JSON breaks);
    a refusal names the top-level field that holds the fault."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "body")]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            if not value.isascii() and not _valid_unicode(value):
                raise InvalidRequestError(field, "holds a lone UTF-16 surrogate (not Unicode text)")
            continue
        if not isinstance(value, list | dict):
            continue
        if depth > MAX_JSON_DEPTH:
            raise InvalidRequestError(field, f"nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(value, list):
            stack.extend((v, depth + 1, field) for v in value)
            continue
        for k, v in value.items():
            name = k if depth == 1 and k and _valid_unicode(k) else field
            stack.extend(((k, depth + 1, field), (v, depth + 1, name)))


def _valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Body:
    """A request's JSON object, read field by field; a wrong type is a 400 naming the field."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise InvalidRequestError("body", "must be a JSON object")
        self.data = data

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        return checked(name, self.data.get(name), kind, default)

    def ranged(self, name: str, kind: type, lo: float, hi: float, default: Any = None) -> Any:
        """A number within [lo, hi] (OpenAI's range), or `default` when absent."""
        value = self.get(name, kind, default)
        if value is not None and not lo <= value <= hi:
            raise InvalidRequestError(name, f"must be between {lo} and {hi}, got {value}")
        return value

    def ints(self, name: str) -> tuple[int, ...]:
        values = self.get(name, list, [])
        if not _all_ints(values):
            raise InvalidRequestError(name, "must be a list of integers")
        return tuple(values)

    def check_fields(self, chat: bool) -> None:
        """Refuse unsupported values and wrong types of fields that are otherwise unused."""
        logprobs = (bool, False) if chat else (int, 0)
        for name, (kind, unused) in {**UNSUPPORTED, "logprobs": logprobs}.items():
            value = self.get(name, kind)
            if value is not None and value != unused:
                raise InvalidRequestError(
                    name, f"is not supported by FlexMesh (only {json.dumps(unused)})"
                )
        for name, kind in TYPED.items():
            self.get(name, kind)

    def streaming(self) -> tuple[bool, bool]:
        """`stream`, and `stream_options.include_usage` (which OpenAI takes only with it)."""
        stream = self.get("stream", bool, False)
        options = self.get("stream_options", dict)
        if options is None:
            return stream, False
        if not stream:
            raise InvalidRequestError("stream_options", "is only allowed when stream is true")
        return stream, checked("stream_options.include_usage", options.get("include_usage"), bool)


def checked(name: str, value: Any, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """`value` when it is of JSON type `kind` (an integer is a number, a boolean is neither),
    `default` when it is null or absent; else a 400 naming `name`."""
    if value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
        raise InvalidRequestError(name, f"must be {names}, got {json.dumps(value)[:40]}")
    return value


def _all_ints(values: list[Any]) -> bool:
    """Every value a JSON integer (not a boolean, which Python counts as one)."""
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
               list: "a list", dict: "an object"}  # fmt: skip


def top_k(value: int) -> int:
    """vLLM's -1 means "every token", as 0 does here; any other negative is refused (as gRPC
    refuses it)."""
    if value < -1:
        raise InvalidRequestError("top_k", f"must be >= 0 (or -1: no limit), got {value}")
    return max(0, value)


def sampling_params(body: Body, max_tokens_fields: Sequence[str]) -> SamplingParams:
    """OpenAI's sampling fields (and FlexMesh's extras) as `SamplingParams`, in OpenAI's
    ranges. As in OpenAI's API, `temperature` defaults to 1 (sampling); 0 is greedy."""
    stop = body.get("stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError("stop", "must be a string or a list of strings")
    max_tokens = next(
        (body.get(f, int) for f in max_tokens_fields if body.data.get(f) is not None),
        DEFAULT_MAX_TOKENS,
    )
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(body.ranged("temperature", float, 0, 2, 1.0)),
        top_p=float(body.ranged("top_p", float, 0, 1, 1.0)),
        top_k=top_k(body.get("top_k", int, 0)),
        seed=body.ranged("seed", int, *INT64),
        stop_token_ids=body.ints("stop_token_ids"),
        stop=tuple(stop),
        ignore_eos=body.get("ignore_eos", bool, False),
        strategy=body.get("strategy", str, ""),
    )


def completion_prompt(body: Body) -> tuple[str, tuple[int, ...]]:
    """`prompt`: a string, a list of token ids, or a list holding one of either."""
    prompt = body.get("prompt", (str, list), "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt, ()
    if prompt and _all_ints(prompt):
        return "", tuple(prompt)
    raise InvalidRequestError(
        "prompt", "must be one string or one list of token ids (send one prompt per request)"
    )


ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
"""Content part types OpenAI takes per role (others: text only); FlexMesh serves text."""


def chat_messages(body: Body) -> list[dict[str, Any]]:
    """`messages` as the chat template reads them (role, text content, and an assistant's
    `tool_calls` / a tool's `tool_call_id` when present), checked as OpenAI checks them."""
    messages = body.get("messages", list)
    if not messages:
        raise InvalidRequestError("messages", "must be a non-empty list of messages")
    call_ids: set[str] = set()  # a tool message answers an earlier assistant's tool call
    return [_message(f"messages[{i}]", m, call_ids) for i, m in enumerate(messages)]


def _message(at: str, m: Any, call_ids: set[str]) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InvalidRequestError(at, "must be an object with a role")
    role = m.get("role")
    if role not in ROLES:
        raise InvalidRequestError(f"{at}.role", f"must be one of {', '.join(ROLES)}")
    out: dict[str, Any] = {"role": role}
    name = checked(f"{at}.name", m.get("name"), str)
    if name is not None:
        out["name"] = name
    elif role == "function":
        raise InvalidRequestError(f"{at}.name", "is required in a function message")
    optional = role == "function"  # its content may be null
    if role == "assistant":
        given = checked(f"{at}.tool_calls", m.get("tool_calls"), list, [])
        calls = [_tool_call(f"{at}.tool_calls[{j}]", c) for j, c in enumerate(given)]
        call_ids.update(c["id"] for c in calls)
        out.update({"tool_calls": calls} if calls else {})
        if m.get("function_call") is not None:
            _function(f"{at}.function_call", m["function_call"])
        optional = bool(calls) or m.get("function_call") is not None
    if role == "tool":
        call_id = checked(f"{at}.tool_call_id", m.get("tool_call_id"), str)
        if call_id is None or call_id not in call_ids:
            raise InvalidRequestError(
                f"{at}.tool_call_id", "must name a tool call of an earlier assistant message"
            )
        out["tool_call_id"] = call_id
    out["content"] = _content(f"{at}.content", role, m.get("content"), optional)
    return out


def _content(at: str, role: str, content: Any, optional: bool) -> str:
    """A string, or a non-empty list of content parts whose text is joined."""
    if content is None and optional:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        what = "a string or a non-empty list of content parts"
        raise InvalidRequestError(at, f"must be {what} (role {role})")
    texts = []
    for j, part in enumerate(content):
        types = PART_TYPES.get(role, ("text",))
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in types:
            raise InvalidRequestError(f"{at}[{j}].type", f"must be one of {', '.join(types)}")
        if kind not in ("text", "refusal"):
            raise InvalidRequestError(f"{at}[{j}].type", f"{kind} is not served (text only)")
        text = checked(f"{at}[{j}].{kind}", part.get(kind), str)
        if text is None:
            raise InvalidRequestError(f"{at}[{j}].{kind}", "is required")
        texts.append(text)
    return "".join(texts)


def _tool_call(at: str, call: Any) -> dict[str, Any]:
    """`{id, type: "function", function: {name, arguments}}`, every part a string."""
    if not isinstance(call, dict) or call.get("type") != "function":
        raise InvalidRequestError(at, 'must be an object of type "function"')
    call_id = checked(f"{at}.id", call.get("id"), str)
    if call_id is None:
        raise InvalidRequestError(f"{at}.id", "is required")
    return {
        "id": call_id,
        "type": "function",
        "function": _function(f"{at}.function", call.get("function")),
    }


def _function(at: str, fn: Any) -> dict[str, str]:
    if not isinstance(fn, dict):
        raise InvalidRequestError(at, "must be an object with a name and arguments")
    name = checked(f"{at}.name", fn.get("name"), str)
    args = checked(f"{at}.arguments", fn.get("arguments"), str)
    if name is None or args is None:
        raise InvalidRequestError(at, "must have a name and arguments (strings)")
    return {"name": name, "arguments": args}


def error_response(exc: BaseException) -> Response:
    """OpenAI's error body, with the HTTP status of the error's gRPC status; `param` names the
    field (`model` for a model not served). ASCII JSON, so no text a client sent can make the
    error itself fail to encode."""
    code = status_name(exc)
    http = HTTP_STATUS.get(code, 500)
    message = str(exc) if isinstance(exc, FlexMeshError) else f"internal error: {exc}"
    body = {
        "message": message,
        "type": ERROR_TYPES.get(http, "server_error"),
        "param": getattr(exc, "field", None) or ("model" if code == "NOT_FOUND" else None),
        "code": code,
    }
    content = json.dumps({"error": body}, separators=(",", ":"))
    return Response(content, status_code=http, media_type="application/json")
