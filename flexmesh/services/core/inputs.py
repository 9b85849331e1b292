"""The checks every front end (gRPC, HTTP) runs on a generation request before anything is
queued, in one place: each refusal is an `InvalidRequestError` naming the field and the limit.
`SamplingParams` checks its own fields; the model's context and vocabulary are checked by the
worker that holds the model, still before the request is scheduled."""

from __future__ import annotations

from collections.abc import Sequence

from flexmesh.meshcore.config import GatewayConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.meshcore.sampling import SamplingParams
from flexmesh.services.core.frontend import GenerationInput

DEFAULT_MAX_TOKENS = 64
"""Tokens generated for a request that does not say how many."""
MAX_REQUEST_ID_CHARS = 128


def check_prompt(prompt: str, gw: GatewayConfig, field: str = "prompt") -> None:
    """A prompt text within `gateway.max_prompt_bytes`."""
    size = len(prompt.encode("utf-8", "surrogatepass"))
    if size > gw.max_prompt_bytes:
        raise InvalidRequestError(
            field, f"is {size} bytes; the limit is {gw.max_prompt_bytes} (max_prompt_bytes)"
        )


def generation_input(
    gw: GatewayConfig,
    prompt: str,
    prompt_token_ids: Sequence[int],
    sampling: SamplingParams,
    model: str = "",
    request_id: str = "",
    prompt_field: str = "prompt",
) -> GenerationInput:
    """A checked `GenerationInput`; `prompt_field` names the prompt in refusals (the HTTP
    chat API's prompt is its `messages`)."""
    if not prompt and not prompt_token_ids:
        raise InvalidRequestError(prompt_field, "is empty (set prompt or prompt_token_ids)")
    check_prompt(prompt, gw, prompt_field)
    if len(prompt_token_ids) > gw.max_prompt_tokens:
        raise InvalidRequestError(
            "prompt_token_ids",
            f"holds {len(prompt_token_ids)} ids; the limit is {gw.max_prompt_tokens} "
            "(max_prompt_tokens)",
        )
    if any(t < 0 for t in prompt_token_ids):
        raise InvalidRequestError("prompt_token_ids", "ids must be >= 0")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequestError("request_id", f"is longer than {MAX_REQUEST_ID_CHARS} characters")
    return GenerationInput(
        prompt=prompt,
        prompt_token_ids=tuple(prompt_token_ids),
        sampling=sampling,
        model=model,
        request_id=request_id,
    )
