"""The deployment files in deploy/ hold what FlexMesh depends on, so they cannot rot silently:
images, the commands they run (parsed by FlexMesh's own CLI), NPU resources, config paths that
exist, ports that match the config."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexmesh.cli.main import build_parser
from flexmesh.launch.config_file import load_mesh_config
from flexmesh.loadgen.run import add_replay_arguments

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NPUS_PER_SERVER = 8


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())  # type: ignore[no-any-return]


def _flexmesh_args(command: str, sub: str) -> Any:
    """The arguments of the `flexmesh <sub> ...` inside a shell command, parsed by the CLI."""
    words = shlex.split(command.replace("$FLEXMESH_CONFIG", "/app/CONFIG"))
    start = next(i for i, w in enumerate(words) if w.endswith("flexmesh") and words[i + 1] == sub)
    end = next((i for i in range(start, len(words)) if words[i] in (">", "&", "&&", ";")), None)
    return build_parser().parse_args(words[start + 1 : end])


def _repo_path(path: str, prefix: str) -> Path:
    """A path inside an image or on a host, as the repository file it was copied from."""
    assert path.startswith(prefix), path
    return REPO / path.removeprefix(prefix)


def test_the_ascend_config_fills_one_server() -> None:
    cfg = load_mesh_config(DEPLOY / "configs" / "ascend-910b.yaml")
    assert cfg.engine.device == "npu" and cfg.engine.dtype == "bfloat16"
    assert sum(m.num_workers for m in cfg.models) == NPUS_PER_SERVER
    assert cfg.adaptive, "both models of the family are resident"


def test_raycluster_runs_the_mesh_on_npu_workers() -> None:
    rc = _yaml("kuberay/raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in head["env"]}
    cfg_path = _repo_path(env["FLEXMESH_CONFIG"], "/app/")
    cfg = load_mesh_config(cfg_path)
    assert head["image"]
    command = head["lifecycle"]["postStart"]["exec"]["command"][-1]
    args = _flexmesh_args(command, "serve")
    assert args.address == "auto" and args.config == "/app/CONFIG"
    ports = {p["containerPort"] for p in head["ports"]}
    assert {cfg.gateway.port, cfg.gateway.http_port, 6379} <= ports
    (group,) = rc["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"]
    assert worker["resources"]["limits"]["huawei.com/Ascend910"] == NPUS_PER_SERVER
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {"NPU": NPUS_PER_SERVER}
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert cfg.models_dir in mounts, "the workers see the models folder of the config"


def test_rayjob_replays_against_that_cluster() -> None:
    job, rc = _yaml("kuberay/rayjob-replay.yaml"), _yaml("kuberay/raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == rc["metadata"]["name"]
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["flexmesh", "loadgen", "replay"]
    args = add_replay_arguments(argparse.ArgumentParser()).parse_args(words[3:])
    cfg = load_mesh_config(DEPLOY / "configs" / "ascend-910b.yaml")
    assert args.target.endswith(f":{cfg.gateway.port}") and args.trace.startswith("/data/")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "/data" in {m["mountPath"] for m in head["volumeMounts"]}


def test_cluster_launcher_starts_ray_with_npus_and_the_mesh_on_the_head() -> None:
    cl = _yaml("ray/cluster-ascend.yaml")
    assert cl["provider"]["type"] == "local" and cl["provider"]["head_ip"]
    head, workers = " ".join(cl["head_start_ray_commands"]), cl["worker_start_ray_commands"]
    npu = f"--resources='{{\"NPU\": {NPUS_PER_SERVER}}}'"
    assert npu in head and any(npu in c for c in workers)
    serve = next(c for c in cl["head_start_ray_commands"] if "flexmesh serve" in c)
    args = _flexmesh_args(serve.split("&&", 1)[1], "serve")
    assert args.address == "auto"
    assert _repo_path(args.config, "~/flexmesh-src/").exists()
    assert cl["file_mounts"]["~/flexmesh-src"] == "."
    assert any("torch==2.13.0" in c for c in cl["setup_commands"])
    assert any("[npu]" in c for c in cl["setup_commands"])


@pytest.mark.parametrize(
    ("name", "extra"), [("Dockerfile.cpu", ""), ("Dockerfile.ascend", "[npu]")]
)
def test_images_pin_torch_first_and_carry_their_config(name: str, extra: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0].startswith("FROM ")
    if extra:
        assert "cann" in lines[0].lower()
    torch_at = next(i for i, ln in enumerate(lines) if "torch==2.13.0" in ln)
    installs = [i for i, ln in enumerate(lines) if "pip install" in ln and "torch==" not in ln]
    install_at = installs[0]
    assert torch_at < install_at and (extra in lines[install_at])
    assert "COPY deploy ./deploy" in lines
    config = re.search(r"FLEXMESH_CONFIG=(\S+)", text)
    assert config is not None and _repo_path(config.group(1), "/app/").exists()
    assert "flexmesh serve --config $FLEXMESH_CONFIG" in lines[-1]
