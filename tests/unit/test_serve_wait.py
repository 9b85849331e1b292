"""`flexmesh serve` on a cluster whose NPU nodes join after the head (KubeRay's worker pods):
it waits for the config's devices with a deadline, refuses `engine.device: npu` on a cluster
without NPUs before any worker loads a model, and asks Ray for an NPU a worker so Ray itself can
place a worker only on a node that has one. Fake clocks and cluster readers: no Ray, no waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from flexmesh.cli.main import main
from flexmesh.launch import mesh
from flexmesh.launch.config_file import load_mesh_config
from flexmesh.launch.mesh import worker_bundle, worker_options
from flexmesh.launch.resources import DevicesMissingError, required_resources, wait_for_resources
from flexmesh.meshcore.config import MeshConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ASCEND = load_mesh_config(DEPLOY / "configs" / "ascend-910b.yaml")
HEAD_ONLY = {"CPU": 8.0, "memory": 32e9}
"""A KubeRay head before its worker pod joined: CPUs, no NPU."""
HEAD_NODE = {"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": HEAD_ONLY}


@pytest.fixture(autouse=True)
def every_log_level() -> Iterator[None]:
    """structlog at its defaults: a test run before may have configured a WARNING filter (the
    CLI's), which would drop the progress lines before `capture_logs` sees them."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


class FakeClock:
    """Virtual time: `sleep` moves it on, so a wait of minutes takes no time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def joins_after(seconds: float, clock: FakeClock, joined: dict[str, float]) -> Any:
    """A cluster reader: the head alone until `seconds` from now, then `joined`."""
    at = clock() + seconds
    return lambda: joined if clock() >= at else HEAD_ONLY


def test_the_ascend_config_needs_one_npu_a_worker() -> None:
    assert required_resources(ASCEND) == {"NPU": 8.0}
    cfg = MeshConfig.from_dict(
        {
            "models": [{"name": "a", "num_workers": 2, "resources": {"pool": 1}}],
            "engine": {"device": "cuda"},
        }
    )
    assert required_resources(cfg) == {"GPU": 2.0, "pool": 2.0}
    auto = MeshConfig.from_dict({"models": [{"name": "a"}]})
    assert required_resources(auto) == {}, "auto and cpu take whatever the cluster has"


def test_serve_waits_until_the_npus_have_joined() -> None:
    clock = FakeClock()
    joined = {**HEAD_ONLY, "NPU": 8.0}
    with capture_logs() as logs:
        cluster = wait_for_resources(
            {"NPU": 8.0},
            600,
            cluster_resources=joins_after(95, clock, joined),
            clock=clock,
            sleep=clock.sleep,
            poll_s=2.0,
        )
    assert cluster == joined
    assert 95 <= sum(clock.sleeps) <= 97 and max(clock.sleeps) == 2.0
    waiting = [e for e in logs if e["event"] == "mesh.waiting_for_resources"]
    assert waiting[0]["missing"] == {"NPU": "0/8"} and waiting[0]["left_s"] == 600
    assert 3 <= len(waiting) <= 5, "a progress line every 30 s, not one a poll"
    assert logs[-1]["event"] == "mesh.resources_joined"


def test_serve_waits_for_all_of_them_not_the_first_node() -> None:
    clock = FakeClock()
    partial = {**HEAD_ONLY, "NPU": 4.0}
    reads = iter([HEAD_ONLY, partial, partial, {**partial, "NPU": 8.0}])
    cluster = wait_for_resources(
        {"NPU": 8.0}, 60, cluster_resources=lambda: next(reads), clock=clock, sleep=clock.sleep
    )
    assert cluster["NPU"] == 8.0 and len(clock.sleeps) == 3


def test_serve_gives_up_at_the_deadline_naming_what_is_missing() -> None:
    clock = FakeClock()
    with pytest.raises(DevicesMissingError) as err:
        wait_for_resources(
            {"NPU": 8.0},
            900,
            cluster_resources=lambda: HEAD_ONLY,
            nodes=lambda: [HEAD_NODE, {**HEAD_NODE, "Alive": False}],
            clock=clock,
            sleep=clock.sleep,
            poll_s=5.0,
        )
    assert sum(clock.sleeps) == 900, "waits the whole deadline, never past it"
    message = str(err.value)
    assert "NPU 0/8" in message and "900 s" in message
    assert "1 alive node(s): 10.0.0.1 NPU=0" in message
    assert "--wait-for-devices-s" in message


def test_no_wait_checks_once() -> None:
    clock = FakeClock()
    have = {**HEAD_ONLY, "NPU": 8.0}
    assert wait_for_resources({"NPU": 8.0}, 0, cluster_resources=lambda: have, clock=clock) == have
    with pytest.raises(DevicesMissingError):
        wait_for_resources(
            {"NPU": 8.0},
            0,
            cluster_resources=lambda: HEAD_ONLY,
            nodes=lambda: [HEAD_NODE],
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.sleeps == []


def test_a_npu_worker_asks_ray_for_an_npu() -> None:
    """So Ray places it only on a node with an NPU, never on the head, whatever joins when."""
    spec = ASCEND.models[0]
    bundle = worker_bundle(spec, "npu", {**HEAD_ONLY, "NPU": 8.0})
    assert bundle == {"NPU": 1.0, "CPU": 1.0}
    assert worker_options(bundle, "SPREAD")["resources"] == {"NPU": 1.0}
    with pytest.raises(DevicesMissingError, match="engine.device is 'npu'.*no NPU"):
        worker_bundle(spec, "npu", HEAD_ONLY)
    assert worker_bundle(spec, "auto", HEAD_ONLY) == {"CPU": float(spec.num_cpus)}


def test_serve_refuses_npu_workers_on_a_cluster_without_npus_before_loading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a worker was placed or started")

    monkeypatch.setattr(mesh, "resolve_model_paths", lambda cfg: {})
    monkeypatch.setattr(mesh, "init_ray", lambda *args: False)
    monkeypatch.setattr(mesh.ray, "cluster_resources", lambda: HEAD_ONLY)
    monkeypatch.setattr(mesh.ray, "nodes", lambda: [HEAD_NODE])
    monkeypatch.setattr(mesh, "place_workers", must_not_run)
    monkeypatch.setattr(mesh.WorkerActor, "options", must_not_run)
    with pytest.raises(DevicesMissingError, match="NPU 0/8"):
        mesh.start_mesh(ASCEND, address="auto")


def test_serve_command_passes_its_wait_and_reports_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: dict[str, Any] = {}

    def start_mesh(config: MeshConfig, **kwargs: Any) -> Any:
        seen.update(kwargs, config=config)
        raise DevicesMissingError("the Ray cluster has NPU 0/8 of what the config needs")

    monkeypatch.setattr(mesh, "start_mesh", start_mesh)
    config = str(DEPLOY / "configs" / "ascend-910b.yaml")
    argv = ["serve", "--address", "auto", "--config", config, "--wait-for-devices-s", "900"]
    assert main(argv) == 2
    assert seen["wait_for_devices_s"] == 900.0 and seen["address"] == "auto"
    assert seen["config"].engine.device == "npu"
    assert "NPU 0/8" in capsys.readouterr().err
