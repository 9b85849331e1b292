"""`flexmesh doctor`: what this machine offers FlexMesh, and what to install for what is missing.

Nothing here imports `torch_npu` unless Ascend's CANN toolkit is present (without it,
`torch_npu` breaks even `import torch`), and nothing starts a Ray instance: a running cluster
is joined (`ray.init(address="auto")`) only to read its resources. A KV transport counts as
available only when its group could be formed here: Ray registers the backend in this process
(NCCL: cupy imports; HCCL: ray-ascend registered it and finds torch_npu and libhccl) and a
device of its kind is visible; otherwise the report says what is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from flexmesh import env

CANN_HOMES = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
ASCEND_VERSIONS = {
    "ray_ascend": "0.1.1",
    "ray": ">=2.56",
    "torch_npu": ">=2.7.1.post2",
    "cann": ">=8.2.RC1",
    "python": "3.10-3.11",
    "supported_image": "CANN 8.5.0, torch==2.7.1, torch-npu==2.7.1.post2 (extra npu-torch27)",
    "note": "torch==2.13.0 (the mesh's pin) meets ray-ascend 0.1.1's floors, but torch-npu "
    "2.13.0 names no CANN release it was built for (its table ends at 2.12.0rc1 on CANN "
    "8.5.0): unverified. The supported Ascend stack is a separate image with its own pins.",
}
"""What the pinned ray-ascend release (the `npu` extra) expects, read from its PyPI wheel's
README (0.1.1, commit 15784db) and torch-npu's CANN table (docs/deploy.md, Ascend versions)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cann_home() -> str | None:
    """Where Ascend's CANN toolkit lives, if anywhere."""
    home = env.cann_home()
    candidates = [home] if home else list(CANN_HOMES)
    return next((c for c in candidates if c and Path(c).is_dir()), None)


def _cann_version(home: str) -> str:
    for name in ("version.cfg", "ascend_toolkit_install.info"):
        path = Path(home) / name
        if path.exists():
            for line in path.read_text(errors="ignore").splitlines():
                key, sep, value = line.partition("=")
                if sep and "version" in key.lower():
                    return value.strip()
    return "unknown"


def _device(device: str, name: str, memory_bytes: int) -> dict[str, Any]:
    return {"device": device, "name": name, "memory_gb": round(memory_bytes / 1e9, 1)}


def devices() -> list[dict[str, Any]]:
    """Every accelerator torch sees (NPUs only with CANN), and the CPU."""
    import torch

    found: list[dict[str, Any]] = []
    if cann_home() and importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401  (registers torch.npu)

        for i in range(torch.npu.device_count()):  # type: ignore[attr-defined]
            props = torch.npu.get_device_properties(i)  # type: ignore[attr-defined]
            found.append(_device(f"npu:{i}", props.name, props.total_memory))
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        found.append(_device(f"cuda:{i}", props.name, props.total_memory))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    found.append(_device("cpu", f"{os.cpu_count()} cores", memory))
    return found


def ray_resources() -> dict[str, float] | str:
    """The resources of a Ray cluster running here, or why there is none to read."""
    import ray

    def read() -> dict[str, float]:
        return {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")}

    if ray.is_initialized():
        return read()
    try:
        ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        return f"no running Ray cluster ({type(exc).__name__})"
    try:
        return read()
    finally:
        ray.shutdown()


def kv_transports(devs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Which KV hand-off transports can run here: `{"available": bool, "reason": str}` each,
    the reason naming what is missing (or what makes it work)."""
    import torch.distributed as dist
    from ray.util import collective

    kinds = {d["device"].split(":")[0] for d in devs}
    gloo = dist.is_available() and collective.gloo_available()
    return {
        "gloo (CPU collective)": _verdict(
            [] if gloo else ["torch.distributed has no gloo"], "Ray's GLOO group"
        ),
        "nccl (CUDA collective)": _verdict(_nccl_missing(kinds), "Ray's NCCL group (cupy)"),
        "hccl (Ascend collective, ray-ascend)": _verdict(
            _hccl_missing(kinds), f"Ray's HCCL group (ray-ascend {_version('ray-ascend')})"
        ),
        "object store (any)": _verdict([], "numpy through ray.put"),
    }


def _verdict(missing: list[str], how: str) -> dict[str, Any]:
    return {"available": not missing, "reason": "; ".join(missing) or how}


def _nccl_missing(kinds: set[str]) -> list[str]:
    from ray.util import collective

    missing = []
    if not collective.nccl_available():  # Ray's NCCL group imports cupy.cuda.nccl
        missing.append('Ray\'s NCCL group needs cupy: pip install -e ".[cuda]"')
    if "cuda" not in kinds:
        missing.append("no CUDA device")
    return missing


def _hccl_missing(kinds: set[str]) -> list[str]:
    missing = []
    if "npu" not in kinds:  # needs CANN, torch_npu and a visible NPU (`devices`)
        cann = "CANN" if cann_home() else "no CANN toolkit"
        npu = "torch_npu" if importlib.util.find_spec("torch_npu") else "no torch_npu"
        missing.append(f"no NPU visible ({cann}, {npu})")
    if importlib.util.find_spec("ray_ascend") is None:
        missing.append('ray-ascend is not installed: pip install -e ".[npu]"')
    elif "npu" in kinds:
        missing += _hccl_unregistered()
    return missing


def _hccl_unregistered() -> list[str]:
    """Register HCCL as a worker would (only with torch_npu importable: an NPU is visible)."""
    from ray.util import collective

    from flexmesh.actors.kv import register_hccl

    try:
        register_hccl()
    except Exception as exc:  # Ray < 2.56, a ray-ascend without HCCLGroup, ...
        return [f"ray-ascend could not register HCCL: {type(exc).__name__}: {exc}"]
    if not collective.is_backend_available("HCCL"):
        return ["Ray's HCCL group is unavailable (ray-ascend finds no torch_npu or libhccl.so)"]
    return []


def report(models_dir: str | None = None) -> dict[str, Any]:
    from flexmesh.actors.runner.demo_models import DEMO_MODELS, is_built
    from flexmesh.launch.config_file import DEFAULT_MODELS_DIR

    home = cann_home()
    devs = devices()
    root = Path(models_dir or DEFAULT_MODELS_DIR).expanduser()
    out: dict[str, Any] = {
        "devices": devs,
        "versions": {
            "torch": _version("torch"),
            "torch_npu": _version("torch-npu"),
            "ray": _version("ray"),
            "ray_ascend": _version("ray-ascend"),
            "transformers": _version("transformers"),
            "cann": _cann_version(home) if home else None,
            "cuda": __import__("torch").version.cuda,
        },
        "ray": ray_resources(),
        "kv_transports": kv_transports(devs),
        "ascend_versions": ASCEND_VERSIONS,
        "demo_models": {s.name: is_built(root / s.name) for s in DEMO_MODELS},
        "models_dir": str(root),
    }
    out["hints"] = hints(out, home)
    return out


def hints(r: dict[str, Any], home: str | None) -> list[str]:
    """What to install or run for what is missing."""
    v, tips = r["versions"], []
    if home and not v["torch_npu"]:
        tips.append('CANN is here but torch_npu is not: pip install -e ".[npu]"')
    if v["torch_npu"] and not home:
        tips.append(
            "torch_npu is installed without CANN (it breaks `import torch` then): install "
            "Ascend's CANN toolkit, or pip uninstall torch-npu"
        )
    if any(d["device"].startswith("npu") for d in r["devices"]) and not v["ray_ascend"]:
        tips.append('NPUs without ray-ascend: KV hand-offs fall back to the object store; '
                    'pip install -e ".[npu]"')  # fmt: skip
    pinned = ASCEND_VERSIONS["ray_ascend"]
    if v["ray_ascend"] and v["ray_ascend"] != pinned:
        tips.append(f"ray-ascend {v['ray_ascend']}: FlexMesh registers HCCL as {pinned} does; "
                    'pip install -e ".[npu]"')  # fmt: skip
    if any(d["device"].startswith("cuda") for d in r["devices"]) and not _usable(r, "nccl"):
        tips.append('CUDA devices without Ray\'s NCCL group: KV hand-offs fall back to the '
                    'object store; pip install -e ".[cuda]"')  # fmt: skip
    if v["torch"] and not v["torch"].startswith("2.13.0"):
        tips.append(f"torch {v['torch']}: FlexMesh is tested with torch==2.13.0")
    if not all(r["demo_models"].values()):
        tips.append(f"demo models not built: flexmesh models build-demo {r['models_dir']}")
    if isinstance(r["ray"], str):
        tips.append("no Ray cluster to read: `flexmesh serve` starts one, "
                    "`ray start --head` keeps one running")  # fmt: skip
    return tips


def _usable(r: dict[str, Any], transport: str) -> bool:
    found = [t for k, t in r.get("kv_transports", {}).items() if k.startswith(transport)]
    return bool(found) and all(t["available"] for t in found)


def print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape  # `".[npu]"` is text, not a markup tag
    from rich.table import Table

    console = Console()
    table = Table(title="devices")
    for c in ("device", "name", "memory GB"):
        table.add_column(c)
    for d in r["devices"]:
        table.add_row(d["device"], d["name"], str(d["memory_gb"]))
    console.print(table)
    console.print("versions: " + ", ".join(f"{k} {v or '-'}" for k, v in r["versions"].items()))
    console.print(f"Ray: {r['ray']}")
    console.print("KV transports:")
    for k, t in r["kv_transports"].items():
        console.print(f"  {k}: {'yes' if t['available'] else 'no'} ({escape(t['reason'])})")
    a = r["ascend_versions"]
    console.print(
        f"Ascend versions: ray-ascend {a['ray_ascend']} expects torch-npu {a['torch_npu']}, "
        f"CANN {a['cann']}, ray {a['ray']}, Python {a['python']}"
    )
    console.print(f"  supported image: {a['supported_image']}")
    console.print(f"  {a['note']}")
    built = ", ".join(f"{k} {'built' if ok else 'missing'}" for k, ok in r["demo_models"].items())
    console.print(f"demo models in {r['models_dir']}: {built}")
    for tip in r["hints"]:
        console.print(f"[yellow]→ {escape(tip)}[/yellow]")
