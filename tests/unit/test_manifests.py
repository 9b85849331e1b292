"""The deployment files in deploy/ hold what FlexMesh depends on, so they cannot rot silently:
images, the commands they run (executed under dash with stub programs, their arguments parsed by
FlexMesh's own CLI), NPU resources, config paths that exist, ports that match the config."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
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
DASH = shutil.which("dash")
needs_dash = pytest.mark.skipif(
    DASH is None,
    reason="dash not found: the /bin/sh of Debian and Ubuntu images, which runs "
    "the images' default commands and the KubeRay hook; these tests need it",
)

STUB = """#!{python}
import json, os, sys
name, calls = os.path.basename(sys.argv[0]), os.environ["STUB_CALLS"]
with open(calls, "a", encoding="utf-8") as f:
    call = {{"cmd": name, "argv": sys.argv[1:], "sourced": os.environ.get("STUB_SOURCED", "")}}
    f.write(json.dumps(call) + "\\n")
with open(calls, encoding="utf-8") as f:
    n = sum(json.loads(line)["cmd"] == name for line in f)
sys.exit(1 if n == 1 and name in os.environ.get("STUB_FAIL_FIRST", "").split() else 0)
"""
"""A stand-in for `flexmesh`, `ray` and `sleep`: records its arguments and the environment
files sourced before it, and fails its first call when named in STUB_FAIL_FIRST."""


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())  # type: ignore[no-any-return]


def _repo_path(path: str, prefix: str) -> Path:
    """A path inside an image or on a host, as the repository file it was copied from."""
    assert path.startswith(prefix), path
    return REPO / path.removeprefix(prefix)


def _image(name: str) -> tuple[list[str], dict[str, str]]:
    """An image's default command (ENTRYPOINT then CMD, the last of each, as Docker runs them;
    the shell form through /bin/sh -c) and its ENV."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "docker" / name).read_text())
    found: dict[str, list[str]] = {"ENTRYPOINT": [], "CMD": []}
    env: dict[str, str] = {}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(rest))  # type: ignore[misc]
        elif word in found:
            exec_form = rest.strip().startswith("[")
            found[word] = json.loads(rest) if exec_form else ["/bin/sh", "-c", rest]
    return found["ENTRYPOINT"] + found["CMD"], env


def _run_under_dash(
    tmp: Path,
    argv: list[str],
    env: dict[str, str],
    fail_first: str = "",
    until: Callable[[list[dict[str, Any]]], bool] = lambda calls: True,
) -> list[dict[str, Any]]:
    """Run a `sh -c SCRIPT` command line under dash with stub programs; the stubs' calls.

    Absolute paths the script sources or redirects into are moved under a temporary root (the
    sourced files become stubs that mark themselves as sourced) and ~ is a temporary home, so
    nothing outside `tmp` is read or written. `until` waits for what the script leaves running
    in the background.
    """
    assert DASH is not None
    assert Path(argv[0]).name in ("sh", "dash") and argv[1] == "-c", argv
    script, root, home, stubs = argv[2], tmp / "root", tmp / "home", tmp / "bin"
    for where in (stubs, home / "flexmesh-env" / "bin"):
        where.mkdir(parents=True)
        for prog in ("flexmesh", "ray", "sleep"):
            (where / prog).write_text(STUB.format(python=sys.executable))
            (where / prog).chmod(0o755)
    (stubs / "sh").symlink_to(DASH)
    for path in set(re.findall(r"(?:^|[\s;&|(])(?:\.|source)\s+(/[^\s;&|'\"]+)", script)):
        (root / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        (root / path[1:]).write_text(f'STUB_SOURCED="$STUB_SOURCED {path}"; export STUB_SOURCED\n')
        script = script.replace(path, str(root / path[1:]))
    for path in set(re.findall(r">\s*(/[^\s;&|'\"]+)", script)) - {"/dev/null"}:
        (root / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        script = script.replace(path, str(root / path[1:]))
    calls_file = tmp / "calls.jsonl"
    calls_file.touch()
    run_env = {**env, "PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(home)}
    run_env |= {"STUB_CALLS": str(calls_file), "STUB_FAIL_FIRST": fail_first}
    done = subprocess.run(
        [DASH, "-c", script], env=run_env, capture_output=True, text=True, timeout=60
    )
    deadline = time.monotonic() + 30
    while True:
        calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
        if until(calls) or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polls a background process; not a wait for an event of its own
    assert done.returncode == 0, f"dash exited {done.returncode}: {done.stderr}"
    return calls


def _serve_calls(calls: list[dict[str, Any]]) -> list[argparse.Namespace]:
    """Each `flexmesh serve` a command ran, parsed by FlexMesh's CLI."""
    serves = [c["argv"] for c in calls if c["cmd"] == "flexmesh" and c["argv"][:1] == ["serve"]]
    return [build_parser().parse_args(argv) for argv in serves]


def test_the_ascend_config_fills_one_server() -> None:
    cfg = load_mesh_config(DEPLOY / "configs" / "ascend-910b.yaml")
    assert cfg.engine.device == "npu" and cfg.engine.dtype == "bfloat16"
    assert sum(m.num_workers for m in cfg.models) == NPUS_PER_SERVER
    assert cfg.adaptive, "both models of the family are resident"


def _head(rc: dict[str, Any]) -> dict[str, Any]:
    return rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_raycluster_runs_the_mesh_on_npu_workers() -> None:
    rc = _yaml("kuberay/raycluster.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    head = _head(rc)
    env = {e["name"]: e["value"] for e in head["env"]}
    cfg = load_mesh_config(_repo_path(env["FLEXMESH_CONFIG"], "/app/"))
    ports = {p["containerPort"] for p in head["ports"]}
    assert {cfg.gateway.port, cfg.gateway.http_port, 6379} <= ports
    assert "huawei.com/Ascend910" not in head["resources"]["limits"], "a head without NPUs"
    (group,) = rc["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"] == head["image"]
    assert worker["resources"]["limits"]["huawei.com/Ascend910"] == NPUS_PER_SERVER
    assert json.loads(json.loads(group["rayStartParams"]["resources"])) == {"NPU": NPUS_PER_SERVER}
    mounts = {m["mountPath"] for m in worker["volumeMounts"]}
    assert cfg.models_dir in mounts, "the workers see the models folder of the config"
    # Nothing autoscales (no enableInTreeAutoscaling) and the config uses a fixed number of
    # NPUs: the group is exactly the servers the config fills.
    assert not rc["spec"].get("enableInTreeAutoscaling")
    servers = sum(m.num_workers for m in cfg.models) // NPUS_PER_SERVER
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == servers


def test_kuberay_pods_run_the_ascend_image_with_its_config() -> None:
    """The image the manifests name is the one Dockerfile.ascend builds (its `-t` tag), and
    both carry the same mesh config."""
    rc = _yaml("kuberay/raycluster.yaml")
    tags = {}
    for name in ("Dockerfile.cpu", "Dockerfile.ascend"):
        text = (DEPLOY / "docker" / name).read_text()
        tag = re.search(r"docker build -f deploy/docker/\S+ -t (\S+) \.", text)
        assert tag is not None, name
        tags[name] = tag.group(1)
    head = _head(rc)
    assert head["image"].split(":")[0] == tags["Dockerfile.ascend"] != tags["Dockerfile.cpu"]
    _, image_env = _image("Dockerfile.ascend")
    env = {e["name"]: e["value"] for e in head["env"]}
    assert env["FLEXMESH_CONFIG"] == image_env["FLEXMESH_CONFIG"]


@needs_dash
def test_kuberay_hook_serves_once_ray_is_up_waits_for_the_npus_and_restarts(
    tmp_path: Path,
) -> None:
    """The postStart hook, run by dash as the image's /bin/sh: `ray status` until Ray answers,
    then `flexmesh serve` waiting for the config's NPUs to join (worker pods start after the
    head), run again when it exits with an error (e.g. the NPUs did not come in time)."""
    head = _head(_yaml("kuberay/raycluster.yaml"))
    env = {e["name"]: e["value"] for e in head["env"]}
    hook = head["lifecycle"]["postStart"]["exec"]["command"]

    def served_twice(calls: list[dict[str, Any]]) -> bool:
        return len(_serve_calls(calls)) >= 2

    calls = _run_under_dash(tmp_path, hook, env, fail_first="ray flexmesh", until=served_twice)
    statuses = [c for c in calls if c["cmd"] == "ray"]
    assert [c["argv"][:1] for c in statuses] == [["status"]] * 2, "asks Ray until it answers"
    first_serve = next(i for i, c in enumerate(calls) if c["cmd"] == "flexmesh")
    assert first_serve > calls.index(statuses[-1]), "serves only once Ray answered"
    serves = _serve_calls(calls)
    assert len(serves) == 2, "a serve that exits with an error is started again"
    for args in serves:
        assert args.address == "auto" and args.config == env["FLEXMESH_CONFIG"]
        assert args.wait_for_devices_s >= 60, "waits for the worker pods' NPUs to join"


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
    assert cl["file_mounts"]["~/flexmesh-src"] == "."
    assert any("torch==2.13.0" in c for c in cl["setup_commands"])
    assert any("[npu]" in c for c in cl["setup_commands"])


@needs_dash
@pytest.mark.parametrize("node", ["head", "worker"])
def test_cluster_launcher_commands_run_under_dash(node: str, tmp_path: Path) -> None:
    """The launcher runs them through bash; kept POSIX, so any sh runs them the same."""
    commands = _yaml("ray/cluster-ascend.yaml")[f"{node}_start_ray_commands"]
    env = {"RAY_HEAD_IP": "10.0.0.1"}  # the launcher sets it on workers
    # One subshell a command: the launcher runs each in a shell of its own.
    script = "\n".join(f"(\n{c}\n)" for c in commands)
    serves_expected = int(node == "head")  # in the background

    def served(calls: list[dict[str, Any]]) -> bool:
        return len(_serve_calls(calls)) >= serves_expected

    calls = _run_under_dash(tmp_path, ["sh", "-c", script], env, until=served)
    set_env = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
    assert calls and all(c["sourced"].split() == [set_env] for c in calls), calls
    rays = [c["argv"] for c in calls if c["cmd"] == "ray"]
    assert [a[0] for a in rays] == ["stop", "start"]
    assert f'--resources={{"NPU": {NPUS_PER_SERVER}}}' in rays[1]
    assert ("--head" if node == "head" else "--address=10.0.0.1:6379") in rays[1]
    serves = _serve_calls(calls)
    assert len(serves) == serves_expected
    for args in serves:
        assert args.address == "auto"
        assert _repo_path(args.config, f"{tmp_path / 'home'}/flexmesh-src/").exists()


@pytest.mark.parametrize(
    ("name", "extra"), [("Dockerfile.cpu", ""), ("Dockerfile.ascend", "[npu]")]
)
def test_images_pin_torch_first_and_carry_their_config(name: str, extra: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    # Build arguments at their defaults (what a plain `docker build` uses).
    for arg, default in re.findall(r"^ARG (\w+)=(\S+)$", text, re.M):
        text = text.replace(f"${{{arg}}}", default)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    lines = [ln for ln in lines if not ln.startswith("ARG ")]
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


@needs_dash
@pytest.mark.parametrize(
    ("name", "sourced", "serve"),
    [
        (
            "Dockerfile.cpu",
            [],
            ["--models-dir", "/models", "--host", "0.0.0.0", "--http-port", "8000"],
        ),
        ("Dockerfile.ascend", ["/usr/local/Ascend/ascend-toolkit/set_env.sh"], []),
    ],
)
def test_image_default_command_serves_under_dash(
    name: str, sourced: list[str], serve: list[str], tmp_path: Path
) -> None:
    """`docker run IMAGE` runs the default command with /bin/sh, which is dash on Debian and
    Ubuntu (no `source`): executed here with a stub `flexmesh` and stub environment files."""
    argv, env = _image(name)
    calls = _run_under_dash(tmp_path, argv, env)
    assert [c["cmd"] for c in calls] == ["flexmesh"], calls
    assert calls[0]["sourced"].split() == sourced, "CANN's environment, sourced first"
    (args,) = _serve_calls(calls)
    assert args.config == env["FLEXMESH_CONFIG"]
    assert _repo_path(args.config, "/app/").exists()
    assert args == build_parser().parse_args(["serve", "--config", args.config, *serve])
