"""`flexmesh doctor` on this machine (CPU only), and its advice for what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flexmesh.cli import doctor


def test_this_machine_offers_the_cpu_and_gloo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(doctor, "ray_resources", lambda: "no running Ray cluster (test)")
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    r = doctor.report(str(tmp_path))
    cpu = r["devices"][-1]
    assert cpu["device"] == "cpu" and cpu["memory_gb"] > 0
    assert not any(d["device"].startswith(("npu", "cuda")) for d in r["devices"])
    kv = r["kv_transports"]
    assert kv["gloo (CPU collective)"]["available"] is True
    assert kv["object store (any)"]["available"] is True
    assert r["versions"]["torch"].startswith("2.13.0") and r["versions"]["torch_npu"] is None
    assert r["demo_models"] == {"demo-small": False, "demo-large": False}
    assert any("flexmesh models build-demo" in h for h in r["hints"])
    assert any("no Ray cluster" in h for h in r["hints"])


def test_nccl_and_hccl_are_unavailable_here_and_the_report_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No cupy, no CUDA device, no CANN, no torch_npu, no ray-ascend on this machine: torch's
    own NCCL flag does not make Ray's NCCL group available."""
    monkeypatch.setattr(doctor, "ray_resources", lambda: "no running Ray cluster (test)")
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    kv = doctor.report(str(tmp_path))["kv_transports"]
    nccl, hccl = kv["nccl (CUDA collective)"], kv["hccl (Ascend collective, ray-ascend)"]
    assert nccl["available"] is False and hccl["available"] is False
    assert "cupy" in nccl["reason"] and '".[cuda]"' in nccl["reason"]
    assert "no CUDA device" in nccl["reason"]
    assert "no NPU visible" in hccl["reason"] and "ray-ascend is not installed" in hccl["reason"]


def test_hccl_with_an_npu_is_available_only_once_ray_registers_a_usable_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An NPU visible and ray-ascend importable are not enough: the group must register (Ray's
    registry) and be usable (ray-ascend finds torch_npu and libhccl.so)."""
    from flexmesh.actors import kv

    real = doctor.importlib.util.find_spec
    found = {"ray_ascend": object()}
    monkeypatch.setattr(doctor.importlib.util, "find_spec", lambda n, *a: found.get(n) or real(n))
    monkeypatch.setattr(kv, "register_hccl", lambda: None)
    monkeypatch.setattr("ray.util.collective.is_backend_available", lambda name: False)
    assert doctor._hccl_missing({"npu", "cpu"}) == [
        "Ray's HCCL group is unavailable (ray-ascend finds no torch_npu or libhccl.so)"
    ]

    def too_old() -> None:
        raise RuntimeError("register_hccl_collective_backend requires Ray >= 2.56")

    monkeypatch.setattr(kv, "register_hccl", too_old)
    (reason,) = doctor._hccl_missing({"npu", "cpu"})
    assert reason.startswith("ray-ascend could not register HCCL: RuntimeError")
    monkeypatch.setattr("ray.util.collective.is_backend_available", lambda name: True)
    monkeypatch.setattr(kv, "register_hccl", lambda: None)
    assert doctor._hccl_missing({"npu", "cpu"}) == []


def test_the_report_records_the_ascend_versions_the_pinned_ray_ascend_expects() -> None:
    a = doctor.ASCEND_VERSIONS
    assert a["ray_ascend"] == "0.1.1" and a["torch_npu"] and a["cann"]
    assert "torch==2.13.0" in a["note"] and "separate image" in a["note"]


def _versions(**over: Any) -> dict[str, Any]:
    return {"torch": "2.13.0", "torch_npu": None, "ray_ascend": None, **over}


@pytest.mark.parametrize(
    ("home", "versions", "devices", "expected"),
    [
        ("/cann", _versions(), ["cpu"], '".[npu]"'),  # CANN without torch_npu
        (None, _versions(torch_npu="2.13.0"), ["cpu"], "without CANN"),
        ("/cann", _versions(torch_npu="2.13.0"), ["npu:0", "cpu"], "ray-ascend"),
        (None, _versions(torch="2.5.0"), ["cpu"], "torch==2.13.0"),
        (None, _versions(), ["cuda:0", "cpu"], '".[cuda]"'),  # CUDA without Ray's NCCL group
        ("/cann", _versions(torch_npu="2.13.0", ray_ascend="0.2.0"), ["npu:0", "cpu"], "0.1.1"),
    ],
)
def test_advice_for_what_is_missing(
    home: str | None, versions: dict[str, Any], devices: list[str], expected: str
) -> None:
    r = {
        "versions": versions,
        "devices": [{"device": d} for d in devices],
        "demo_models": {"demo-small": True},
        "ray": {"CPU": 2.0},
        "models_dir": "/m",
        "kv_transports": {"nccl (CUDA collective)": {"available": False, "reason": "no cupy"}},
    }
    tips = doctor.hints(r, home)
    assert len(tips) == 1 and expected in tips[0]


def test_cann_is_found_where_its_environment_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    (tmp_path / "version.cfg").write_text("[version]\nversion=8.3.RC1\n")
    assert doctor.cann_home() == str(tmp_path)
    assert doctor._cann_version(str(tmp_path)) == "8.3.RC1"
