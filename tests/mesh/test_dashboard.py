"""The Ray dashboard shows the mesh's named actors: `flexmesh serve --dashboard` starts Ray with
its dashboard, and Ray's state API (served by the dashboard) lists them by name and class.

Runs in its own process: the other mesh tests share one Ray instance without a dashboard.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json, time
import ray
from ray.util.state import list_actors
from flexmesh.launch.mesh import init_ray
from flexmesh.actors.probe.actor import ProbeActor

init_ray(None, True, "flexmesh-dashboard-test", log_to_driver=False)
probe = ProbeActor.options(name="probe", namespace="flexmesh-dashboard-test").remote(
    "classifier", 2048
)
ray.get(probe.ready.remote())
gcs = ray.get_runtime_context().gcs_address  # this instance's, not another one on the host
deadline = time.monotonic() + 60
while True:  # the dashboard's state API answers once its head agent is up
    try:
        actors = list_actors(address=gcs, filters=[("state", "=", "ALIVE")], timeout=10)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
print(json.dumps([{"name": a.name, "class": a.class_name, "ns": a.ray_namespace} for a in actors]))
ray.shutdown()
"""


def test_the_dashboard_lists_the_named_actors() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    actors = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"name": "probe", "class": "Probe", "ns": "flexmesh-dashboard-test"} in actors
