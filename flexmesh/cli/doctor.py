"""`flexmesh doctor`: what this machine offers FlexMesh, and what to install for what is missing.

Nothing here imports `torch_npu` unless Ascend's CANN toolkit is present (without it,
`torch_npu` breaks even `import torch`), and nothing starts a Ray instance: a running cluster
is joined (`ray.init(address="auto")`) only to read its resources.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from flexmesh import env

CANN_HOMES = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")


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


def kv_transports(devs: list[dict[str, Any]]) -> dict[str, bool]:
    """Which KV hand-off transports can run here."""
    import torch.distributed as dist

    kinds = {d["device"].split(":")[0] for d in devs}
    return {
        "gloo (CPU collective)": dist.is_available() and dist.is_gloo_available(),
        "nccl (CUDA collective)": "cuda" in kinds and dist.is_nccl_available(),
        "hccl (Ascend collective, ray-ascend)": "npu" in kinds
        and importlib.util.find_spec("ray_ascend") is not None,
        "object store (any)": True,
    }


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
    if v["torch"] and not v["torch"].startswith("2.13.0"):
        tips.append(f"torch {v['torch']}: FlexMesh is tested with torch==2.13.0")
    if not all(r["demo_models"].values()):
        tips.append(f"demo models not built: flexmesh models build-demo {r['models_dir']}")
    if isinstance(r["ray"], str):
        tips.append("no Ray cluster to read: `flexmesh serve` starts one, "
                    "`ray start --head` keeps one running")  # fmt: skip
    return tips


def print_report(r: dict[str, Any]) -> None:
    from rich.console import Console
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
    console.print("KV transports: " + ", ".join(
        f"{k} {'yes' if ok else 'no'}" for k, ok in r["kv_transports"].items()))  # fmt: skip
    built = ", ".join(f"{k} {'built' if ok else 'missing'}" for k, ok in r["demo_models"].items())
    console.print(f"demo models in {r['models_dir']}: {built}")
    for tip in r["hints"]:
        console.print(f"[yellow]→ {tip}[/yellow]")
