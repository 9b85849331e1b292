"""deploy/monitoring: the Grafana dashboard names real metrics, and the shipped Prometheus config
scrapes FlexMesh's series from a running demo mesh (Debian's `prometheus` binary)."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import ray
import yaml
from ray.util import metrics

from flexmesh.actors.telemetry import GatewayMetrics, WorkerMetrics
from flexmesh.launch.mesh import Mesh
from flexmesh.meshcore.messages import WorkerStatus
from flexmesh.services.core.frontend import RouteInfo
from flexmesh.services.grpc_client import stream_generate
from flexmesh.v1 import flexmesh_pb2 as pb
from flexmesh.v1 import flexmesh_pb2_grpc as pb_grpc
from tests.mesh.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "flexmesh-dashboard.json"
PROMETHEUS = shutil.which("prometheus")
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
TOKENS_QUERY = "sum by (model) (ray_flexmesh_worker_tokens_total)"
WAIT_S = 60.0
"""Longest wait for the series: Ray's processes report to their node's agent every 10 s
(RAY_metrics_report_interval_ms), Prometheus scrapes every 5 s."""

# Ray 2.60 exports a metric `x` as `ray_x`, a counter as `ray_x_total`, a histogram as
# `ray_x_bucket`, `ray_x_sum` and `ray_x_count` (read from a demo mesh's metrics agent).
SUFFIXES = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count")}


def declared_metrics() -> dict[str, str]:
    """Name -> kind (Counter, Gauge, Histogram) of every `ray.util.metrics` metric FlexMesh
    declares (telemetry.py, the controller, ...)."""
    found: dict[str, str] = {}
    for path in (REPO / "flexmesh").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SUFFIXES
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).startswith("flexmesh_")
            ):
                found[node.args[0].value] = node.func.attr
    return found


def panel_exprs() -> list[str]:
    """The PromQL of every panel of the dashboard."""
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def variable_queries() -> list[str]:
    """The dashboard's template-variable queries (Grafana's `label_values(...)`)."""
    d = json.loads(DASHBOARD.read_text())
    return [v["definition"] for v in d["templating"]["list"] if v["type"] == "query"]


def test_dashboard_names_only_declared_metrics() -> None:
    declared = declared_metrics()
    assert declared.get("flexmesh_worker_tokens") == "Counter"  # telemetry.py
    assert declared.get("flexmesh_controller_decisions") == "Counter"  # the controller
    d = json.loads(DASHBOARD.read_text())
    (source,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert all(p["datasource"] == "${datasource}" for p in d["panels"] if p["type"] != "row")
    exprs = panel_exprs() + variable_queries()
    used = {n for e in exprs for n in re.findall(r"\bray_flexmesh_\w+", e)}
    assert len(used) > 10, "the dashboard queries FlexMesh's series"
    exported = {f"ray_{n}{sfx}" for n, kind in declared.items() for sfx in SUFFIXES[kind]}
    assert used <= exported, f"not exported by any FlexMesh metric: {sorted(used - exported)}"


def test_dashboard_shows_downgrades_and_worker_p99s() -> None:
    exprs = " ".join(panel_exprs())
    for series in (
        "ray_flexmesh_demanding_requests_total",
        "ray_flexmesh_downgrades_total",
        "ray_flexmesh_worker_step_ms_quantile",
        "ray_flexmesh_worker_tpot_ms_quantile",
        "ray_flexmesh_worker_queue_ms_quantile",
    ):
        assert series in exprs, series


def test_metrics_count_downgrades_and_set_worker_percentiles(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorded: list[tuple[str, float, dict[str, str]]] = []

    def record(self: metrics.Metric, value: float, tags: dict[str, str] | None = None) -> None:
        final = self._get_final_tags(tags)
        self._validate_tags(final)  # Ray's own check: a str value for every tag key
        recorded.append((self._name, value, final))

    monkeypatch.setattr(metrics.Metric, "_record", record)
    gateway = GatewayMetrics()
    for model, intent, key, demanding, downgraded in (
        ("demo-small", "code", "code", True, True),
        ("demo-large", "code", "code", True, False),
        ("demo-small", "chat", "chat", False, False),
        ("demo-small", "chat", "low_confidence", True, True),
    ):
        gateway.routed(RouteInfo(model, intent=intent, route_key=key, demanding=demanding,
                                 downgraded=downgraded))  # fmt: skip
    counted = Counter(
        (name.removeprefix("flexmesh_"), tags["intent"])
        for name, _, tags in recorded
        if name in ("flexmesh_demanding_requests", "flexmesh_downgrades")
    )
    assert counted == {
        ("demanding_requests", "code"): 2, ("downgrades", "code"): 1,
        ("demanding_requests", "low_confidence"): 1, ("downgrades", "low_confidence"): 1,
    }  # fmt: skip

    recorded.clear()
    status = WorkerStatus(
        "w0", "m", "", "mixed", "cpu", 0, 0, 0, 8, 1.0, 0, decode_step_ms=4.0,
        percentiles={"step_ms_p50": 5.0, "tpot_ms_p99": 20.0, "queue_ms_p99": 3.0},
    )  # fmt: skip
    WorkerMetrics("w0", "m").observe_status(status)
    quantiles = {(n, t["quantile"]): v for n, v, t in recorded if "quantile" in t}
    assert quantiles == {
        ("flexmesh_worker_step_ms_quantile", "p50"): 5.0,
        ("flexmesh_worker_tpot_ms_quantile", "p99"): 20.0,
        ("flexmesh_worker_queue_ms_quantile", "p99"): 3.0,
    }
    assert ("flexmesh_worker_decode_step_ms", 4.0, {"worker": "w0", "model": "m"}) in recorded


@pytest.fixture
def prometheus(mesh: Mesh, tmp_path: Path) -> Iterator[str]:
    """Prometheus with deploy/monitoring/prometheus.yml scraping the mesh; yields its URL.

    Only the targets file differs: Ray's dashboard writes /tmp/ray/prom_metrics_service_
    discovery.json, but the test mesh runs without a dashboard and the path is shared by every
    Ray instance on the machine, so this writes what Ray would (every live node's metrics
    agent) for this mesh's cluster alone.
    """
    assert PROMETHEUS is not None
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ray"
    assert job["file_sd_configs"] == [{"files": [RAY_SD_FILE]}]
    agents = [
        f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes() if n["Alive"]
    ]
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": agents}]))
    job["file_sd_configs"] = [{"files": [str(targets)]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def _query(client: httpx.AsyncClient, promql: str) -> httpx.Response:
    return await client.get("/api/v1/query", params={"query": promql})


@pytest.mark.slow
@pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary on PATH (Debian: apt-get install prometheus)"
)
async def test_prometheus_scrapes_flexmesh_metrics(
    prometheus: str, channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    stub = pb_grpc.GenerationStub(channel)
    models = ("demo-small", "demo-large")
    for model in models:
        req = pb.GenerateRequest(prompt="def add(a, b):", max_tokens=8, model=model)
        assert (await stream_generate(stub, req, 60)).token_ids
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    result: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=prometheus, timeout=5) as client:
        while not set(models) <= {r["metric"].get("model") for r in result}:
            if loop.time() > deadline:
                log = (tmp_path / "prometheus.log").read_text()[-3000:]
                pytest.fail(f"{TOKENS_QUERY} gave {result} after {WAIT_S} s; Prometheus:\n{log}")
            await asyncio.sleep(1.0)
            try:
                answer = await _query(client, TOKENS_QUERY)
            except httpx.TransportError:
                continue  # not listening yet
            if answer.status_code == 200:  # 503 while it starts
                result = answer.json()["data"]["result"]
        assert all(float(r["value"][1]) > 0 for r in result), result
        # Every query of the dashboard is valid PromQL for this Prometheus (most have no data
        # here: one worker a model, no controller, no hand-offs).
        for expr in panel_exprs():
            promql = re.sub(r"\$\w+", ".+", expr.replace("$__rate_interval", "1m"))
            answer = await _query(client, promql)
            assert answer.status_code == 200, (expr, answer.text)
