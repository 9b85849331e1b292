"""The OpenAI-compatible HTTP API under hostile input (hypothesis, strategies in fuzz_http.py):
whatever a client sends, the answer is a whole 200 or a 4xx in OpenAI's error shape naming the
field, never a 5xx, a hang or a dropped connection (httpx raises on one, failing the example).

Over fake workers the gateway's own code runs for real (the HTTP adapter, the frontend's
checks and routing), `FLEXMESH_FUZZ_EXAMPLES` examples (300 in CI, as test_fuzz.py); against
the real demo mesh `FLEXMESH_MESH_FUZZ_EXAMPLES` (300, derandomized: the same in every run),
then a normal request is served and every KV block is free."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings

from flexmesh.launch.mesh import Mesh
from flexmesh.meshcore.config import GatewayConfig, MeshConfig, ModelSpec
from flexmesh.services.core.frontend import Frontend
from flexmesh.services.http import OpenAIServer, serve_http
from tests.mesh.fake_worker import FakeWorker
from tests.mesh.fuzz_http import COMPLETIONS, requests
from tests.mesh.fuzz_requests import MESH_EXAMPLES, MODELS, WORKERS, fuzz, idle_worker
from tests.mesh.test_frontend import KnowledgeProbe, RecordingMetrics
from tests.mesh.test_http import _render

JSON = {"content-type": "application/json"}


def check(resp: httpx.Response) -> None:
    """A served request comes back whole; a refused one is a 4xx in OpenAI's error shape."""
    assert resp.status_code < 500, f"{resp.status_code}: {resp.text[:300]}"
    if resp.status_code == 200:
        if resp.headers["content-type"].startswith("text/event-stream"):
            events = [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]
            assert events[-1] == "[DONE]", events[-3:]
            assert all("error" not in json.loads(e) for e in events[:-1]), events
        else:
            assert resp.json()["choices"][0]["finish_reason"], resp.text
        return
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"] and error["type"] and error["code"], error
    assert resp.status_code in (400, 404), error  # no key set, no overload: nothing else
    assert error["param"] == "model" if resp.status_code == 404 else error["param"], error


@pytest.fixture(scope="module")
async def fake_api() -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API of a gateway over fake workers of both demo models (and the probe)."""
    workers = {m: FakeWorker(w, m, tokens=2) for m, w in zip(MODELS, WORKERS, strict=True)}
    cfg = MeshConfig(models=tuple(ModelSpec(name=m) for m in MODELS), gateway=GatewayConfig())
    frontend = Frontend(
        cfg, {m: [w] for m, w in workers.items()}, KnowledgeProbe(), RecordingMetrics()
    )
    server, port = await serve_http(OpenAIServer(frontend, _render), cfg.gateway, 0)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield client
    server.should_exit = True


@fuzz
@given(req=requests)
async def test_hostile_http_requests_over_fake_workers(
    fake_api: httpx.AsyncClient, req: tuple[str, bytes]
) -> None:
    path, body = req
    check(await fake_api.post(path, content=body, headers=JSON))


@pytest.mark.slow
def test_hostile_http_requests_on_the_demo_mesh(mesh: Mesh) -> None:
    """The same strategies against the real models, tokenizers and chat templates. Sync
    httpx: the inner test is a plain function, so the checks after it run in the same test."""
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=f"http://{mesh.http_address}", timeout=60) as client:

        @settings(fuzz, max_examples=MESH_EXAMPLES, derandomize=True)
        @given(req=requests)
        def one(req: tuple[str, bytes]) -> None:
            path, body = req
            resp = client.post(path, content=body, headers=JSON)
            check(resp)
            statuses[resp.status_code] += 1

        one()
        # Both ways through the API were taken (the draws lean neither way too far).
        assert statuses[200] >= MESH_EXAMPLES // 5 and statuses[400] >= MESH_EXAMPLES // 5, statuses
        for model in MODELS:
            body: dict[str, Any] = {"model": model, "prompt": "def f(x):", "max_tokens": 4}
            resp = client.post(COMPLETIONS, json={**body, "temperature": 0})
            assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
    for model in MODELS:
        w = idle_worker(mesh.address, model)
        assert w.kv_blocks_used == 0 and w.running_requests == 0, f"{model}: {w}"
