"""Moving a request's KV blocks between two workers of one model, over Ray's own machinery.

Two transports, one contract (`KVMeta` describes the bytes; the receiver checks the checksum):

- `collective`: a `ray.util.collective` group per model, joined by all of its workers when the
  mesh starts; send/recv of one contiguous tensor in device memory (staging buffers live on the
  worker's device: NCCL and HCCL refuse host tensors). The backend follows the device: gloo on
  CPU (the path tested here), NCCL on CUDA (Ray's NCCL group needs cupy: the `cuda` extra), HCCL
  on Ascend through ray-ascend (the `npu` extra; `register_hccl`).
- `object_store`: the sender copies device → host and returns a numpy array through the Ray
  object store; the receiver copies host → device into a staging buffer. For workers without a
  common group (another node, a group broken by a restarted peer). Never torch tensors through
  the object store: 5x slower here than numpy.

Blocking send/recv never runs on the engine thread or the event loop: the worker runs them
with `asyncio.to_thread`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import msgpack
import numpy as np
import structlog
import torch
import xxhash

log = structlog.get_logger(__name__)

LAYOUT_VERSION = 1
"""Version of the block layout `[layers, 2, blocks, block_size, kv_heads, head_dim]`."""
BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}
"""Collective backend by device type; the route reports this name as its KV transport."""


@dataclass(frozen=True)
class KVMeta:
    """What a receiver must know before it takes a request's KV (travels as msgpack)."""

    request_id: str
    model: str
    dtype: str
    shape: tuple[int, ...]
    checksum: int
    layout_version: int = LAYOUT_VERSION
    device: str = "cpu"
    """Device type the sender's copy lives on (the object store's route names the copies)."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype.removeprefix("torch."))  # type: ignore[no-any-return]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.torch_dtype.itemsize

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def unpack(cls, data: bytes) -> KVMeta:
        fields = msgpack.unpackb(data)
        fields["shape"] = tuple(fields["shape"])
        return cls(**fields)

    def check(self, kv: torch.Tensor, model: str) -> None:
        """Raise `ValueError` unless `kv` is what this meta announced, intact."""
        if self.layout_version != LAYOUT_VERSION or self.model != model:
            raise ValueError(f"KV of {self.model} layout {self.layout_version} cannot go here")
        if tuple(kv.shape) != self.shape or str(kv.dtype) != self.dtype:
            raise ValueError(f"KV {tuple(kv.shape)} {kv.dtype} is not {self.shape} {self.dtype}")
        if checksum(kv) != self.checksum:
            raise ValueError(f"KV of {self.request_id} arrived corrupted (checksum mismatch)")


def checksum(kv: torch.Tensor) -> int:
    """XXH3-64 of the tensor's bytes: 2.5 ms for 50 MB here (zlib's CRC-32 took 15 ms). XXH3
    runs on the host: a device tensor is copied to the host for it (the hand-off's own buffers
    stay on the device)."""
    data = kv.detach().cpu().contiguous().view(torch.uint8).numpy()
    return xxhash.xxh3_64_intdigest(data)  # type: ignore[no-any-return]


def describe(kv: torch.Tensor, request_id: str, model: str) -> KVMeta:
    """The meta of a gathered KV tensor (its block count is the shape's third entry)."""
    dtype, shape = str(kv.dtype), tuple(kv.shape)
    return KVMeta(request_id, model, dtype, shape, checksum(kv), device=kv.device.type)


def to_numpy(kv: torch.Tensor) -> np.ndarray:
    """The object-store form of a KV tensor, copied device → host when it lives on a device
    (bf16 travels as its raw 16-bit words)."""
    kv = kv.detach().to("cpu").contiguous()
    if kv.dtype == torch.bfloat16:
        kv = kv.view(torch.int16)
    return kv.numpy()


def from_numpy(array: np.ndarray, meta: KVMeta) -> torch.Tensor:
    """The tensor an object-store array holds (read-only memory: only read from it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": it is never written
        t = torch.from_numpy(array)
    return t.view(meta.torch_dtype) if t.dtype != meta.torch_dtype else t


def via_host(src_device: str, dst_device: str) -> str:
    """The copies an object-store hand-off makes, for its route: "" between two CPUs, else
    e.g. "npu→host→npu" (the bytes cross the host twice; a collective would not)."""
    hops = [t for t in (src_device, "host", dst_device) if t != "cpu"]
    return "→".join(hops) if len(hops) > 1 else ""


class BufferPool:
    """Reused staging buffers on one device (the worker's: a gather or scatter never crosses
    devices). Fresh memory costs its page faults on first touch (a 50 MB gather into new memory
    took 33 ms here, into a reused buffer 4.4 ms)."""

    def __init__(
        self, device: torch.device | str = "cpu", max_cached_bytes: int = 512 * 1024 * 1024
    ) -> None:
        self.device = torch.device(device)
        self.max_cached_bytes = max_cached_bytes
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        """The engine thread stages exports while the event loop sends and receives."""

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A tensor of `shape` over a free buffer large enough (or a new one)."""
        with self._lock:
            return self._take(shape, dtype)

    def _take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = int(np.prod(shape))
        # By position, never by `==` (list.remove would compare tensors element-wise).
        fits = [i for i, b in enumerate(self._free) if b.dtype == dtype and b.numel() >= numel]
        if fits:
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        else:
            buf = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel].view(shape)

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """`host` copied host → device into a buffer of this pool (`give` it back after use);
        on a CPU pool, `host` itself."""
        if self.device.type == "cpu":
            return host
        buf = self.take(tuple(host.shape), host.dtype)
        buf.copy_(host)
        return buf

    def tail(self, kv: torch.Tensor, skip_blocks: int) -> torch.Tensor:
        """`kv` less its first `skip_blocks` blocks, copied into a buffer of this pool (`give`
        it back after use): a collective sends contiguous memory, and a checksum reads it."""
        num_blocks = kv.shape[2]
        if not 0 < skip_blocks < num_blocks:
            raise ValueError(f"cannot skip {skip_blocks} of {num_blocks} blocks")
        part = kv[:, :, skip_blocks:]  # [layers, 2, blocks - skip, block, kv_heads, dim]
        buf = self.take(tuple(part.shape), part.dtype)
        buf.copy_(part)
        return buf

    def give(self, tensor: torch.Tensor) -> None:
        """Return a tensor from `take`; its buffer is kept while the cache has room."""
        base = tensor._base if tensor._base is not None else tensor
        with self._lock:
            self._give(base)

    def _give(self, base: torch.Tensor) -> None:
        self._free.append(base)
        self._free.sort(key=lambda b: b.numel())
        while sum(b.numel() * b.element_size() for b in self._free) > self.max_cached_bytes:
            self._free.pop()  # the largest goes first


class KVGroup:
    """This worker's membership of its model's collective group (one per process)."""

    def __init__(self, name: str, world_size: int, rank: int, device: str, timeout_s: float):
        from ray.util import collective

        self.name, self.world_size, self.rank = name, world_size, rank
        self.backend = BACKENDS.get(device.split(":")[0], "gloo")
        if self.backend == "hccl":
            register_hccl()
        collective.init_collective_group(
            world_size, rank, backend=self.backend, group_name=name, gloo_timeout=30_000
        )
        self.broken = ""
        """Why the group can no longer be used (a peer died or a transfer hung), else ""."""
        if self.backend == "gloo":
            # Ray leaves torch's 30-minute default: bound every send/recv by the transfer
            # deadline instead, so a hung peer fails the transfer rather than a thread forever.
            import torch.distributed as dist

            dist.distributed_c10d._get_default_group().set_timeout(timedelta(seconds=timeout_s))

    def send(self, kv: torch.Tensor, dst_rank: int) -> None:
        from ray.util import collective

        self._call(lambda: collective.send(kv, dst_rank, self.name))

    def recv(self, buffer: torch.Tensor, src_rank: int) -> None:
        from ray.util import collective

        self._call(lambda: collective.recv(buffer, src_rank, self.name))

    def _call(self, op: Callable[[], None]) -> None:
        if self.broken:
            raise RuntimeError(f"KV group {self.name} is unusable: {self.broken}")
        try:
            op()
        except Exception as exc:
            # A failed send/recv leaves the pair's stream in an unknown state: stop using it.
            self.broken = f"{type(exc).__name__}: {exc}"
            log.warning("kv.group_broken", group=self.name, reason=self.broken)
            raise


def register_hccl() -> None:
    """Ascend: teach this process's Ray collective registry the HCCL backend (`npu` extra,
    needs CANN and Ray >= 2.56). ray-ascend 0.1.1 (the pinned release) exposes
    `register_hccl_collective_backend()`, which calls Ray's
    `register_collective_backend("HCCL", HCCLGroup)`; a ray-ascend tree without it (one exports
    only its YR transport) is registered through Ray's hook directly, with ray-ascend's
    `HCCLGroup`. The names and where they were read: tests/runner/test_device.py."""
    import ray_ascend  # type: ignore[import-not-found]
    from ray.util import collective

    register = getattr(ray_ascend, "register_hccl_collective_backend", None)
    try:
        if register is not None:
            register()
        else:
            collective.register_collective_backend("HCCL", _hccl_group(ray_ascend))
    except ValueError as exc:
        if "already registered" not in str(exc):
            raise  # a second group in this process finds it registered: that is fine


def _hccl_group(ray_ascend: Any) -> Any:
    """ray-ascend's HCCL group class: top-level in some trees, in its module in 0.1.1."""
    group = getattr(ray_ascend, "HCCLGroup", None)
    if group is None:
        from ray_ascend.collective.hccl_collective_group import (  # type: ignore[import-not-found]
            HCCLGroup,
        )

        group = HCCLGroup
    return group
