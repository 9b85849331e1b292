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
    assert r["kv_transports"]["gloo (CPU collective)"] is True
    assert r["kv_transports"]["hccl (Ascend collective, ray-ascend)"] is False
    assert r["versions"]["torch"].startswith("2.13.0") and r["versions"]["torch_npu"] is None
    assert r["demo_models"] == {"demo-small": False, "demo-large": False}
    assert any("flexmesh models build-demo" in h for h in r["hints"])
    assert any("no Ray cluster" in h for h in r["hints"])


def _versions(**over: Any) -> dict[str, Any]:
    return {"torch": "2.13.0", "torch_npu": None, "ray_ascend": None, **over}


@pytest.mark.parametrize(
    ("home", "versions", "devices", "expected"),
    [
        ("/cann", _versions(), ["cpu"], '".[npu]"'),  # CANN without torch_npu
        (None, _versions(torch_npu="2.13.0"), ["cpu"], "without CANN"),
        ("/cann", _versions(torch_npu="2.13.0"), ["npu:0", "cpu"], "ray-ascend"),
        (None, _versions(torch="2.5.0"), ["cpu"], "torch==2.13.0"),
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
