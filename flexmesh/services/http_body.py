"""OpenAI request bodies read field by field (a wrong type or an unsupported field is a 400
naming it), and OpenAI error bodies: the wire format of `services/http.py`, apart from its
routes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.responses import JSONResponse

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
UNSUPPORTED = {
    "n": 1,
    "best_of": 1,
    "echo": False,
    "suffix": "",
    "logprobs": False,
    "top_logprobs": 0,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logit_bias": {},
    "tools": [],
    "functions": [],
}
"""OpenAI fields FlexMesh does not implement, with the value that means "not used": any other
value is refused with 400 naming the field, never silently ignored."""


class Body:
    """A request's JSON object, read field by field; a wrong type is a 400 naming the field."""

    def __init__(self, data: Any) -> None:
        if not isinstance(data, dict):
            raise InvalidRequestError("body", "must be a JSON object")
        self.data = data

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(name)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds:
            kinds = (*kinds, int)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise InvalidRequestError(name, f"must be {names}, got {json.dumps(value)[:40]}")
        return value

    def ints(self, name: str) -> tuple[int, ...]:
        values = self.get(name, list, [])
        if not _all_ints(values):
            raise InvalidRequestError(name, "must be a list of integers")
        return tuple(values)

    def check_unsupported(self) -> None:
        for name, unused in UNSUPPORTED.items():
            value = self.data.get(name)
            if value is not None and value != unused:
                raise InvalidRequestError(
                    name, f"is not supported by FlexMesh (only {json.dumps(unused)})"
                )


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
    """OpenAI's sampling fields (and FlexMesh's extras) as `SamplingParams`. As in OpenAI's
    API, `temperature` defaults to 1 (sampling); 0 is greedy."""
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
        temperature=float(body.get("temperature", float, 1.0)),
        top_p=float(body.get("top_p", float, 1.0)),
        top_k=top_k(body.get("top_k", int, 0)),
        seed=body.get("seed", int),
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


def chat_messages(body: Body) -> list[dict[str, Any]]:
    """`messages` as the chat template reads them: each a role and a text content (OpenAI's
    content parts of type "text" are joined)."""
    messages = body.get("messages", list)
    if not messages:
        raise InvalidRequestError("messages", "must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequestError(f"messages[{i}]", "must be an object with a role")
        content = m.get("content") or ""
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise InvalidRequestError(f"messages[{i}].content", "only text parts are served")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content", "must be a string or text parts")
        out.append({"role": m["role"], "content": content})
    return out


def error_response(exc: BaseException) -> JSONResponse:
    """OpenAI's error body, with the HTTP status of the error's gRPC status."""
    code = status_name(exc)
    http = HTTP_STATUS.get(code, 500)
    message = str(exc) if isinstance(exc, FlexMeshError) else f"internal error: {exc}"
    body = {
        "message": message,
        "type": ERROR_TYPES.get(http, "server_error"),
        "param": getattr(exc, "field", None),
        "code": code,
    }
    return JSONResponse({"error": body}, status_code=http)
