"""Reading back what the loadgen plots drew (the figures they save), and checks that each plot of
a replay shows that replay's requests and status samples."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flexmesh.loadgen import plots
from flexmesh.loadgen.records import RequestRecord

Samples = Sequence[Mapping[str, Any]]


def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Figure]:
    """The figures the plot functions save, by file name (the PNGs are still written)."""
    figures: dict[str, Figure] = {}
    save = plots._save

    def keep(fig: Figure, path: str | Path) -> Path:
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def steps(ax: Axes) -> dict[str, list[float]]:
    """Each labelled line's y values, one per sample (a step line repeats none here)."""
    return {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}


def texts(ax: Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def read_records(path: Path) -> list[RequestRecord]:
    """A replay's `requests.jsonl` back into records."""
    names = {f.name for f in dataclasses.fields(RequestRecord)}
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        RequestRecord(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in row.items() if k in names}
        )
        for row in rows
    ]


def read_samples(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_replay_plots(
    figures: Mapping[str, Figure],
    records: Sequence[RequestRecord],
    samples: Samples,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    max_in_flight: int,
) -> None:
    """Every plot `write_plots` draws shows these records and samples."""
    status = {"status.png", "controller.png"} if samples else set()
    assert set(figures) == {"latency_cdf.png", "throughput.png", *status}
    check_latency_cdfs(figures["latency_cdf.png"], records, ttft_slo_ms, tpot_slo_ms)
    check_timeline(figures["throughput.png"], records, max_in_flight)
    if samples:
        check_status(figures["status.png"], samples)
        check_controller(figures["controller.png"], records, samples, ttft_slo_ms, tpot_slo_ms)


Metric = Callable[[RequestRecord], float | None]
METRICS: tuple[Metric, ...] = (lambda r: r.ttft_s, lambda r: r.tpot_s, lambda r: r.e2e_s)


def check_latency_cdfs(
    fig: Figure, records: Sequence[RequestRecord], ttft_slo: float | None, tpot_slo: float | None
) -> None:
    """Per metric, one CDF per group of successful requests (all, then each model when several
    served): its x the group's sorted latencies in ms, its y rising in equal steps to 1."""
    ok = [r for r in records if r.ok]
    groups = {"all": ok}
    models = sorted({r.route_model or "?" for r in ok})
    if len(models) > 1:
        groups |= {m: [r for r in ok if (r.route_model or "?") == m] for m in models}
    for ax, get, slo in zip(fig.axes, METRICS, (ttft_slo, tpot_slo, None), strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        cdfs = {}
        for name, rs in groups.items():
            ms = sorted(v * 1000 for r in rs if (v := get(r)) is not None)
            if ms:
                cdfs[f"{name} (n={len(ms)})"] = ms
        slo_line = [f"SLO {slo:g} ms"] if slo is not None and cdfs else []
        assert list(lines) == [*cdfs, *slo_line], ax.get_title()
        for label, ms in cdfs.items():
            assert list(lines[label].get_xdata()) == pytest.approx(ms), label
            assert list(lines[label].get_ydata()) == pytest.approx(
                np.arange(1, len(ms) + 1) / len(ms)
            )
        for label in slo_line:
            assert list(lines[label].get_xdata()) == [slo, slo]


def check_timeline(fig: Figure, records: Sequence[RequestRecord], max_in_flight: int) -> None:
    """The areas under the rate lines are the run's output tokens, completions and failures;
    the in-flight line rises once a send and falls once an end, from 0 back to 0, within the
    replay's bound."""
    sent = [r for r in records if r.send_s is not None and r.end_s is not None]
    ok = [r for r in sent if r.ok]
    lines: dict[str, Line2D] = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    tokens = lines["output tokens/s"]
    width = 2 * tokens.get_xdata()[0]  # bins start at 0: the first midpoint is half a bin
    assert sum(tokens.get_ydata()) * width == pytest.approx(sum(r.completion_tokens for r in ok))
    assert sum(lines["completed req/s"].get_ydata()) * width == pytest.approx(len(ok))
    if len(sent) > len(ok):
        failed = sum(lines["failed req/s"].get_ydata()) * width
        assert failed == pytest.approx(len(sent) - len(ok))
    else:
        assert "failed req/s" not in lines
    level = list(lines["in flight"].get_ydata())
    assert len(level) == 1 + 2 * len(sent) and level[0] == level[-1] == 0
    assert 0 <= min(level) and max(level) <= max_in_flight


def _by_worker(samples: Samples, key: str) -> dict[str, list[Any]]:
    """One worker field over the samples that list the worker."""
    out: dict[str, list[Any]] = {}
    for s in samples:
        for w in s.get("workers", []):
            out.setdefault(w["name"], []).append(w.get(key, 0))
    return dict(sorted(out.items()))


def check_status(fig: Figure, samples: Samples) -> None:
    """Each worker's queue length and running requests per sample; the gateway's in-flight."""
    queue, running = fig.axes
    in_flight = [s.get("in_flight", 0) for s in samples]
    assert steps(queue) == {**_by_worker(samples, "queue_length"), "gateway in flight": in_flight}
    assert steps(running) == _by_worker(samples, "running_requests")


def check_controller(
    fig: Figure,
    records: Sequence[RequestRecord],
    samples: Samples,
    ttft_slo: float | None,
    tpot_slo: float | None,
) -> None:
    """TTFT and TPOT of each successful request at its send time, a role bar per worker and
    sample in its role's colour, each budget-reporting worker's prefill budget."""
    ax_ttft, ax_tpot, ax_role, ax_budget = fig.axes[:4]
    ok = [r for r in records if r.ok and r.send_s is not None]
    for ax, get, slo in ((ax_ttft, METRICS[0], ttft_slo), (ax_tpot, METRICS[1], tpot_slo)):
        points = [(r.send_s, v * 1000) for r in ok if (v := get(r)) is not None]
        if not points:
            assert not ax.collections and not ax.get_lines()
            continue
        (scatter,) = ax.collections
        np.testing.assert_allclose(scatter.get_offsets(), points)
        assert [list(line.get_ydata()) for line in ax.get_lines()] == ([[slo, slo]] if slo else [])
    # one bar collection per worker and role (in the order the roles first appear), holding a
    # span per run of samples in that role
    roles = [r for rs in _by_worker(samples, "role").values() for r in dict.fromkeys(rs)]
    bars = [to_hex(c.get_facecolor()[0]) for c in ax_role.collections]
    assert bars == [to_hex(plots.ROLE_COLORS.get(role, "tab:gray")) for role in roles]
    runs = sum(
        1 + sum(a != b for a, b in itertools.pairwise(rs))
        for rs in _by_worker(samples, "role").values()
    )
    assert sum(len(c.get_paths()) for c in ax_role.collections) == runs
    budgets: dict[str, list[int]] = {}
    for s in samples:
        for w in s.get("workers", []):
            if w.get("max_batched_tokens"):
                budgets.setdefault(w["name"], []).append(w["prefill_budget_tokens"])
    assert steps(ax_budget) == budgets
