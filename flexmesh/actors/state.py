"""What the gateway must not lose when Ray restarts it, kept in Ray's GCS key-value store
(which outlives every actor): its gRPC port, the live routing policy, the operator's pins, the
workers' roles and drains. A fresh mesh starts from its config and clears what a previous mesh
of the same namespace left; only a restarted gateway reads it back.

NOTE: Ray has no public key-value API; `ray.experimental.internal_kv` is what Ray Serve keeps
its own controller state in. Each write is one small GCS round trip (~1 ms), made only when
an operator or the controller changes something.
"""

from __future__ import annotations

import warnings
from typing import Any

import msgpack
import ray
from ray.experimental import internal_kv

KEY = b"gateway"


class GatewayStateStore:
    """One msgpack document per mesh namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = f"flexmesh/{namespace}"

    def load(self) -> dict[str, Any]:
        raw = internal_kv._internal_kv_get(KEY, namespace=self.namespace)
        return dict(msgpack.unpackb(raw)) if raw else {}

    def save(self, **fields: Any) -> None:
        """Merge `fields` into the stored document."""
        doc = {**self.load(), **fields}
        internal_kv._internal_kv_put(KEY, msgpack.packb(doc), namespace=self.namespace)

    def clear(self) -> None:
        internal_kv._internal_kv_del(KEY, namespace=self.namespace)


def restarted() -> bool:
    """True inside an actor that Ray restarted after it died."""
    with warnings.catch_warnings():  # Ray's own property reads a deprecated one
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
