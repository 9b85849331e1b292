"""Per-request sampling parameters, validated once at the edge of the mesh."""

from __future__ import annotations

import math
from dataclasses import dataclass

from flexmesh.meshcore.errors import InvalidRequestError

STRATEGIES = ("", "none", "pld", "spec")
"""Decoding strategies a request may ask for ("" lets the router decide)."""
MAX_STOP_STRINGS = 16
"""Most `stop` strings one request may give (each is matched on every new token)."""
MAX_STOP_STRING_CHARS = 256
"""Longest `stop` string."""
MAX_STOP_TOKEN_IDS = 64
"""Most `stop_token_ids` one request may give."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. `temperature == 0` means greedy."""

    max_tokens: int = 64
    """Most new tokens to generate."""
    temperature: float = 0.0
    """Softmax temperature; 0 selects the arg-max token."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all."""
    seed: int | None = None
    """Reproducible sampling: the token at each position is drawn from a generator seeded
    with `position_seed(seed, position)`, so the same seed gives the same tokens on any
    worker, in any batch, after a hand-off or a migration."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end the request (the id itself is kept in the output)."""
    stop: tuple[str, ...] = ()
    """Strings that end the request; the returned text stops before them."""
    ignore_eos: bool = False
    """Keep generating past end-of-sequence tokens until `max_tokens` (benchmarks)."""
    strategy: str = ""
    """Acceleration: "" (router decides), "none", "pld" (prompt lookup) or "spec" (draft model)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError("max_tokens", f"must be > 0, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError(
                "temperature", f"must be finite and >= 0, got {self.temperature}"
            )
        if math.isnan(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError("top_k", f"must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop", "stop strings must not be empty")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError("stop", f"at most {MAX_STOP_STRINGS}, got {len(self.stop)}")
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_STRING_CHARS:
            raise InvalidRequestError(
                "stop", f"strings of at most {MAX_STOP_STRING_CHARS} characters, got {longest}"
            )
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequestError(
                "stop_token_ids", f"at most {MAX_STOP_TOKEN_IDS}, got {len(self.stop_token_ids)}"
            )
        if any(t < 0 for t in self.stop_token_ids):
            raise InvalidRequestError("stop_token_ids", "ids must be >= 0")
        if self.strategy not in STRATEGIES:
            raise InvalidRequestError(
                "strategy", f"must be one of {STRATEGIES}, got {self.strategy!r}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def position_seed(seed: int, position: int) -> int:
    """The seed of the random draws for the token at `position` (its index in prompt +
    output) of a request seeded with `seed`: SplitMix64 of both, so that nearby seeds and
    positions give unrelated streams (a generator may keep only the low 32 bits)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + position + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)
