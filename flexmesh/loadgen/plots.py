"""PNG plots of a replay: latency CDFs, throughput and in-flight over time, mesh status over time.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so plotting
never touches a display or a global backend. Empty data still yields a labelled figure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from flexmesh.loadgen.records import RequestRecord

DPI = 110
ROLE_COLORS = {"prefill": "tab:orange", "decode": "tab:blue", "mixed": "tab:green"}


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what}", ha="center", va="center", transform=ax.transAxes)


def _cdf(ax: Axes, values: Sequence[float], label: str) -> None:
    xs = np.sort(np.asarray(values, dtype=np.float64))
    ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=f"{label} (n={len(xs)})")


def plot_latency_cdfs(
    records: Sequence[RequestRecord],
    path: str | Path,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> Path:
    """TTFT, TPOT and E2E CDFs of successful requests, overall and per serving model."""
    ok = [r for r in records if r.ok]
    groups: dict[str, list[RequestRecord]] = {"all": ok}
    by_model: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in ok:
        by_model[r.route_model or "?"].append(r)
    if len(by_model) > 1:
        groups.update(sorted(by_model.items()))
    metrics = (
        ("TTFT", lambda r: r.ttft_s, ttft_slo_ms),
        ("TPOT", lambda r: r.tpot_s, tpot_slo_ms),
        ("E2E latency", lambda r: r.e2e_s, None),
    )
    fig = Figure(figsize=(15, 4.5), dpi=DPI, layout="constrained")
    for ax, (name, get, slo) in zip(fig.subplots(1, 3), metrics, strict=True):
        drawn = False
        for label, rs in groups.items():
            vals = [v * 1000 for r in rs if (v := get(r)) is not None]
            if vals:
                _cdf(ax, vals, label)
                drawn = True
        if slo is not None and drawn:
            ax.axvline(slo, color="red", linestyle="--", label=f"SLO {slo:g} ms")
        if not drawn:
            _no_data(ax, f"{name} samples")
        else:
            ax.legend(fontsize=8, loc="lower right")
        ax.set(title=f"{name} CDF", xlabel=f"{name} (ms)", ylabel="fraction of requests")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Latency CDFs ({len(ok)} successful of {len(records)} requests)")
    return _save(fig, path)


def _bin_width(span_s: float) -> float:
    """A round bin width giving roughly 50-100 bins over `span_s`."""
    raw = max(span_s / 80.0, 1e-3)
    mag = 10 ** np.floor(np.log10(raw))
    return float(min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw))


def plot_timeline(records: Sequence[RequestRecord], path: str | Path) -> Path:
    """Output tokens/s and completions/s per time bin, and requests in flight, over the run."""
    sent = [r for r in records if r.send_s is not None and r.end_s is not None]
    fig = Figure(figsize=(12, 7), dpi=DPI, layout="constrained")
    ax_tp, ax_fl = fig.subplots(2, 1, sharex=True)
    if not sent:
        _no_data(ax_tp, "requests sent")
        _no_data(ax_fl, "requests sent")
        return _save(fig, path)
    span = max(r.end_s or 0.0 for r in sent)
    width = _bin_width(span)
    edges = np.arange(0.0, span + width, width)
    if len(edges) < 2:
        edges = np.array([0.0, width])
    tok_t = [r.send_s + t for r in sent if r.ok for t in r.chunk_times_s]  # type: ignore[operator]
    tok_n = [n for r in sent if r.ok for n in r.chunk_tokens]
    tokens, _ = np.histogram(tok_t, bins=edges, weights=tok_n)
    done, _ = np.histogram([r.end_s for r in sent if r.ok], bins=edges)
    failed, _ = np.histogram([r.end_s for r in sent if not r.ok], bins=edges)
    mids = (edges[:-1] + edges[1:]) / 2
    ax_tp.plot(mids, tokens / width, color="tab:blue", label="output tokens/s")
    ax_tp.set_ylabel("output tokens/s")
    ax_rq = ax_tp.twinx()
    ax_rq.plot(mids, done / width, color="tab:green", label="completed req/s")
    if failed.any():
        ax_rq.plot(mids, failed / width, color="tab:red", label="failed req/s")
    ax_rq.set_ylabel("requests/s")
    handles = ax_tp.get_legend_handles_labels()[0] + ax_rq.get_legend_handles_labels()[0]
    ax_tp.legend(handles=handles, loc="upper left", fontsize=8)
    ax_tp.set_title(f"Throughput ({width:g}-s bins)")
    ax_tp.grid(alpha=0.3)
    events = sorted([(r.send_s or 0.0, 1) for r in sent] + [(r.end_s or 0.0, -1) for r in sent])
    times = [0.0] + [t for t, _ in events]
    level = np.concatenate([[0], np.cumsum([d for _, d in events])])
    ax_fl.step(times, level, where="post", color="tab:purple", label="in flight")
    delayed = [(r.send_s, r.send_delay_s * 1000) for r in sent if r.send_delay_s > 0.010]
    if delayed:
        ax_dl = ax_fl.twinx()
        ax_dl.scatter(*zip(*delayed, strict=True), s=6, color="tab:red", label="send delay (ms)")
        ax_dl.set_ylabel("send delay (ms)")
    ax_fl.set(xlabel="time since replay start (s)", ylabel="requests in flight")
    title = "Requests in flight"
    if delayed:
        title += " (red dots: sends delayed > 10 ms, in-flight bound reached)"
    ax_fl.set_title(title)
    ax_fl.grid(alpha=0.3)
    return _save(fig, path)


def plot_status(samples: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """`Admin/GetStatus` samples: queue lengths, running requests and roles per worker."""
    fig = Figure(figsize=(12, 9), dpi=DPI, layout="constrained")
    ax_q, ax_run, ax_role = fig.subplots(3, 1, sharex=True)
    series: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        for w in s.get("workers", []):
            d = series[w["name"]]
            d["t"].append(s["t_s"])
            d["queue"].append(w.get("queue_length", 0))
            d["running"].append(w.get("running_requests", 0))
            d["role"].append(w.get("role", ""))
    if not series:
        for ax in (ax_q, ax_run, ax_role):
            _no_data(ax, "status samples")
        return _save(fig, path)
    names = sorted(series)
    for name in names:
        d = series[name]
        ax_q.step(d["t"], d["queue"], where="post", label=name)
        ax_run.step(d["t"], d["running"], where="post", label=name)
    t_all = [s["t_s"] for s in samples]
    ax_q.step(
        t_all,
        [s.get("in_flight", 0) for s in samples],
        where="post",
        color="black",
        linestyle=":",
        label="gateway in flight",
    )
    ax_q.set(ylabel="queue length", title="Queue length per worker")
    ax_run.set(ylabel="running requests", title="Running requests per worker")
    step = float(np.median(np.diff(t_all))) if len(t_all) > 1 else 1.0
    for y, name in enumerate(names):
        d = series[name]
        ends = [*d["t"][1:], d["t"][-1] + step]
        for t0, t1, role in zip(d["t"], ends, d["role"], strict=True):
            ax_role.broken_barh(
                [(t0, t1 - t0)], (y - 0.4, 0.8), color=ROLE_COLORS.get(role, "tab:gray")
            )
    ax_role.set_yticks(range(len(names)), names)
    ax_role.set(xlabel="time since replay start (s)", title="Worker role over time")
    patches = [Patch(color=c, label=role) for role, c in ROLE_COLORS.items()]
    ax_role.legend(handles=patches, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    for ax in (ax_q, ax_run):
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def write_plots(
    out_dir: str | Path,
    records: Sequence[RequestRecord],
    status_samples: Sequence[Mapping[str, Any]] = (),
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> list[Path]:
    """All plots of a replay into `out_dir` (status plot only when samples exist)."""
    out = Path(out_dir)
    paths = [
        plot_latency_cdfs(records, out / "latency_cdf.png", ttft_slo_ms, tpot_slo_ms),
        plot_timeline(records, out / "throughput.png"),
    ]
    if status_samples:
        paths.append(plot_status(status_samples, out / "status.png"))
    return paths
