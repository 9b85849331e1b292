"""The simulator: exact times on hand-made workloads, the same run for the same seed, the mesh's
own code inside (a config change moves the result as it moves a real run), and bad input
refused by name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flexmesh.cli.main import main
from flexmesh.loadgen.records import ReplayRequest, RequestRecord
from flexmesh.loadgen.replay import replay
from flexmesh.meshcore.config import MeshConfig
from flexmesh.meshcore.errors import InvalidRequestError
from flexmesh.sim import clock
from flexmesh.sim.mesh import SimMesh, scale_config, start
from flexmesh.sim.profile import (
    DeviceInfo,
    ModelFit,
    ModelShape,
    OpFit,
    Profile,
    StepCost,
    TransportFit,
)

SHAPE = ModelShape(64, 2, 4, 2, 128, 1000, dtype_bytes=4, max_position_tokens=4096)


def _profile(cost: StepCost, max_devices: int = 8) -> Profile:
    """Every worker on one node; a hand-off's export 1 ms, transfer 2 ms, import 1 ms."""
    device = DeviceInfo("test", "cpu", max_devices, 0.0, max_devices, "gloo", "gloo")
    return Profile(
        "measured",
        device,
        models={"m": ModelFit(SHAPE, cost)},
        transports={"gloo": TransportFit(OpFit(1.0), OpFit(2.0), OpFit(1.0))},
    )


def _config(**overrides: Any) -> MeshConfig:
    data: dict[str, Any] = {"models": [{"name": "m"}]}
    data.update(overrides)
    return MeshConfig.from_dict(data)


def _simulate(
    config: MeshConfig, profile: Profile, requests: list[ReplayRequest], act: Any = None
) -> tuple[list[RequestRecord], SimMesh]:
    async def run() -> tuple[list[RequestRecord], SimMesh]:
        mesh = start(config, profile, {m.name: SHAPE for m in config.models})
        if act is not None:
            await act(mesh)
        try:
            result = await replay(
                requests, "sim", 64, send=mesh.sender("", "", 0.0), progress=False
            )
        finally:
            mesh.stop()
        return list(result.records), mesh

    records, mesh = clock.run(run())
    return records, mesh


def _req(i: int, at_s: float, prompt: int, out: int) -> ReplayRequest:
    return ReplayRequest(i, at_s, f"prompt {i}", prompt, out, "chat")


# A step costs 10 ms plus 0.1 ms per token computed; nothing else costs anything.
FIXED = StepCost(step_ms=10.0, seq_ms=0.0, token_ms=0.1, context_ms=0.0, attention_ms=0.0)


def test_one_request_takes_exactly_its_steps() -> None:
    (r,), _ = _simulate(_config(), _profile(FIXED), [_req(0, 0.0, 100, 5)])
    # prefill of 100 tokens (its first token) 20 ms, then four decode steps of 10.1 ms
    assert r.ok and r.completion_tokens == 5
    assert r.ttft_s == pytest.approx(0.020, abs=1e-9)
    assert r.e2e_s == pytest.approx(0.0604, abs=1e-9)
    assert r.tpot_s == pytest.approx(0.0101, abs=1e-9)


def test_two_overlapping_requests_share_steps_exactly() -> None:
    a, b = _simulate(_config(), _profile(FIXED), [_req(0, 0.0, 100, 5), _req(1, 0.025, 100, 3)])[0]
    # A: prefill [0, 20], decodes [20, 30.1], [30.1, ...]. B arrives at 25 and joins the step
    # at 30.1 with its whole prompt beside A's decode: 101 tokens, 20.1 ms -> B's first token
    # at 50.2; then two steps of both decoding (10.2 ms each) end both at 70.6.
    assert a.ttft_s == pytest.approx(0.020, abs=1e-9)
    assert a.e2e_s == pytest.approx(0.0706, abs=1e-9)
    assert b.ttft_s == pytest.approx(0.0502 - 0.025, abs=1e-9)
    assert b.e2e_s == pytest.approx(0.0706 - 0.025, abs=1e-9)
    assert b.tpot_s == pytest.approx(0.0102, abs=1e-9)


def test_a_hand_off_costs_the_transport_and_the_route_follows_the_decode_worker() -> None:
    config = _config(
        models=[{"name": "m", "num_workers": 2, "roles": ["prefill", "decode"]}],
        pd={"min_prompt_tokens": 0},
    )
    (r,), mesh = _simulate(config, _profile(FIXED), [_req(0, 0.0, 100, 3)])
    assert r.ok and r.route_prefill_worker == "worker-m-0" and r.route_worker == "worker-m-1"
    assert r.ttft_s == pytest.approx(0.020, abs=1e-9)
    # after the first token: export 1 ms on P, transfer 2 ms, import 1 ms on D, two decodes
    assert r.e2e_s == pytest.approx(0.020 + 0.001 + 0.002 + 0.001 + 2 * 0.0101, abs=1e-9)
    for s in (w.scheduler for w in mesh.workers.values()):  # held by nobody, cached at most
        assert s.pool.num_used == (s.cache.num_evictable if s.cache is not None else 0)


def _burst(n: int = 24) -> list[ReplayRequest]:
    return [_req(i, 0.05 * i, 400, 24) for i in range(n)]


def _p50(records: list[RequestRecord], field: str) -> float:
    values = sorted(getattr(r, field) for r in records if r.ok)
    return values[len(values) // 2]


def test_a_config_change_moves_the_simulation_as_it_moves_a_real_run() -> None:
    """The directions `flexmesh bench pd` measured live (README): a small prefill share keeps
    decodes moving (TPOT down) and makes prompts wait (TTFT up); one prefill worker makes
    prompts wait longer than two co-located ones; a longer dwell changes budgets less often."""
    cost = StepCost(step_ms=15.0, seq_ms=0.2, token_ms=0.8, context_ms=0.002, attention_ms=0.0)
    profile, work = _profile(cost), _burst()
    whole, _ = _simulate(_config(), profile, work)

    async def small_share(mesh: SimMesh) -> None:
        await mesh.workers["worker-m-0"].set_prefill_budget(32)

    shared, _ = _simulate(_config(), profile, work, small_share)
    assert _p50(shared, "tpot_s") < _p50(whole, "tpot_s")
    assert _p50(shared, "ttft_s") > _p50(whole, "ttft_s")

    two = {"name": "m", "num_workers": 2}
    colocated, _ = _simulate(_config(models=[two]), profile, work)
    split = _config(models=[{**two, "roles": ["prefill", "decode"]}], pd={"min_prompt_tokens": 0})
    disaggregated, _ = _simulate(split, profile, work)
    assert _p50(disaggregated, "ttft_s") > _p50(colocated, "ttft_s")

    def budget_changes(dwell_ms: float) -> int:
        controller = {
            "enabled": True,
            "interval_ms": 200,
            "budget_dwell_ms": dwell_ms,
            "tpot_slo_ms": 30.0,
        }
        # Two bursts 40 s apart: between them nothing decodes and the share may relax, but
        # only once the dwell since the last cut has passed; a burst is answered at once.
        twice = [*_burst(30), *(_req(30 + i, 40.0 + 0.05 * i, 400, 24) for i in range(30))]
        _, mesh = _simulate(_config(controller=controller), profile, twice)
        return sum(d["kind"] == "prefill_budget" for d in mesh.decisions)

    assert budget_changes(200.0) > budget_changes(60_000.0) >= 1


def test_scaling_keeps_each_models_share_and_its_roles() -> None:
    config = _config(
        models=[
            {"name": "big", "num_workers": 6, "roles": ["prefill"] * 2 + ["decode"] * 4},
            {"name": "small", "num_workers": 2},
        ]
    )
    scaled = scale_config(config, 64)
    big, small = scaled.models
    assert (big.num_workers, small.num_workers) == (48, 16)
    assert big.roles.count("prefill") == 16 and big.roles.count("decode") == 32


def _run_cli(tmp_path: Path, models_dir: Path, *extra: str, profile: str = "") -> list[str]:
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"models_dir: {models_dir}\nmodels:\n  - name: demo-large\n    num_workers: 2\n"
        "controller:\n  enabled: true\n"
    )
    if not profile:
        large = json.loads((models_dir / "demo-large" / "config.json").read_text())
        shape = ModelShape.from_hf_config(large, 4)
        p = _profile(StepCost(17.0, 0.3, 1.1, 0.002, 0.0))
        p = replace(p, models={"demo-large": ModelFit(shape, p.models["m"].step)})
        profile = str(p.write(tmp_path / "profile.json"))
    return [
        "sim", "run", "--config", str(config), "--profile", profile, "--format", "poisson",
        "--rate-rps", "4", "--max-requests", "40", "--input-tokens", "200",
        "--output-tokens", "16", "--seed", "3", "--no-progress", *extra,
    ]  # fmt: skip


def test_the_same_seed_gives_the_same_run(tmp_path: Path, models_dir: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        assert main([*_run_cli(tmp_path, models_dir), "--out", str(out)]) == 0
        outs.append(out)
    first, second = ((o / "requests.jsonl").read_text() for o in outs)
    assert first == second and len(first.splitlines()) == 40
    summaries = [json.loads((o / "summary.json").read_text()) for o in outs]
    for s in summaries:
        assert s["target"] == "simulated" and s["started_unix"] == "simulated"
        assert "profile.json" in s["simulated"]["profile"]
        del s["simulated"]["wall_s"]
    assert summaries[0] == summaries[1]
    assert summaries[0]["completed"] == 40
    for name in ("summary.md", "status.jsonl", "controller.png", "decisions.jsonl"):
        assert (outs[0] / name).exists()


@pytest.mark.parametrize(
    ("profile_change", "field"),
    [
        ({"version": 2}, "version"),
        ({"models": {}}, "ops"),
        ({"device": {"name": "tiny", "kind": "cpu", "max_devices": 1}}, "mesh_size"),
    ],
)
def test_a_bad_profile_is_refused_by_name(
    tmp_path: Path,
    models_dir: Path,
    capsys: pytest.CaptureFixture[str],
    profile_change: dict[str, Any],
    field: str,
) -> None:
    argv = _run_cli(tmp_path, models_dir, "--out", str(tmp_path / "out"))
    path = Path(argv[argv.index("--profile") + 1])
    path.write_text(json.dumps({**json.loads(path.read_text()), **profile_change}))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err and "Traceback" not in err


def test_an_unknown_device_is_refused_by_name(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _run_cli(tmp_path, models_dir, "--out", str(tmp_path / "out"), profile="tpu-v9")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "profile: 'tpu-v9' is no file and no shipped device" in err and "ascend-910b" in err


def test_a_mesh_larger_than_the_device_count_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="mesh_size"):
        clock.run(_start_async(_config(models=[{"name": "m", "num_workers": 9}])))


async def _start_async(config: MeshConfig) -> None:
    start(config, _profile(FIXED, max_devices=8), {"m": SHAPE})


def test_plan_finds_the_fewest_devices_that_meet_the_slos(tmp_path: Path) -> None:
    from flexmesh.launch.config_file import load_mesh_config

    profile = _profile(StepCost(10.0, 0.0, 0.5, 0.0, 0.0))
    path = profile.write(tmp_path / "profile.json")
    config = tmp_path / "base.yaml"
    config.write_text("models:\n  - name: m\n    num_workers: 1\n")
    out = tmp_path / "plan"
    argv = [
        "plan", "--config", str(config), "--profile", str(path), "--devices", "8",
        "--format", "poisson", "--rate-rps", "20", "--max-requests", "80",
        "--input-tokens", "200", "--output-tokens", "8", "--no-text", "--no-progress",
        "--ttft-slo-ms", "300", "--tpot-slo-ms", "100", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "plan.json").read_text())
    d, tried = report["devices"], {int(k): v for k, v in report["tried"].items()}
    ok = report["summary"]["slo_attainment"]
    assert 1 < d <= 8 and ok >= 0.9
    assert any(s["slo_attainment"] >= 0.9 for s in tried[d].values())
    # one device fewer: no candidate met the SLOs (the search bisected down to d)
    assert all(s["slo_attainment"] < 0.9 or s["failed"] for s in tried[d - 1].values())
    chosen = load_mesh_config(report["config_file"])
    assert sum(m.num_workers for m in chosen.models) == d


def _shared_prefix_requests(groups: int, per_group: int, gap_s: float) -> list[ReplayRequest]:
    """Groups of prompts sharing a 384-token system prompt (text: 4 characters a token), each
    with a 64-token question of its own; the groups interleave."""
    reqs = []
    for i in range(groups * per_group):
        system = f"system prompt of group {i % groups}: ".ljust(384 * 4, "s")
        question = f"question {i}?".ljust(64 * 4, "q")
        reqs.append(ReplayRequest(i, i * gap_s, system + question, 448, 8, "chat"))
    return reqs


def test_the_simulator_runs_the_prefix_cache_and_cache_aware_placement() -> None:
    """The engines' caches and the gateway's index run inside the simulation: with the cache,
    prompts compute less; with each worker's KV too small for every group, placing by cache
    computes less than placing by load, and as evenly; every block ends free or cached, unheld."""
    work = _shared_prefix_requests(groups=8, per_group=6, gap_s=0.05)
    two = {"name": "m", "num_workers": 2, "roles": ["mixed", "mixed"]}
    computed = {}
    for name, prefix_cache, placement in (
        ("off", False, "least_loaded"),
        ("least_loaded", True, "least_loaded"),
        ("cache_aware", True, "cache_aware"),
    ):
        config = _config(
            models=[two],
            engine={"prefix_cache": prefix_cache, "num_kv_blocks": 160},
            pd={"placement": placement},
        )
        records, mesh = _simulate(config, _profile(FIXED), work)
        assert all(r.status == "OK" for r in records) and len(records) == len(work)
        per_worker = [w.stats.prompt_tokens for w in mesh.workers.values()]
        computed[name] = sum(per_worker)
        if placement == "cache_aware":  # the groups split between the workers: balanced
            assert max(per_worker) <= 1.3 * min(per_worker)
        for w in mesh.workers.values():
            s = w.scheduler
            if s.cache is None:
                assert s.pool.num_free == s.pool.num_blocks
                continue
            assert s.pool.num_used == s.cache.num_evictable  # nothing held after the run
            s.cache.clear()
            assert s.pool.num_free == s.pool.num_blocks
    assert computed["cache_aware"] < computed["least_loaded"] < computed["off"]
