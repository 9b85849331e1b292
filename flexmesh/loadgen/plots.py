"""PNG plots of a replay: latency CDFs, throughput and in-flight over time, mesh status over time.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so plotting
never touches a display or a global backend. Empty data still yields a labelled figure.
"""

from __future__ import annotations

import itertools
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
    """`Admin/GetStatus` samples: queue lengths and running requests per worker (roles, budgets
    and thresholds are in `plot_controller`'s picture)."""
    fig = Figure(figsize=(12, 6), dpi=DPI, layout="constrained")
    ax_q, ax_run = fig.subplots(2, 1, sharex=True)
    series: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        for w in s.get("workers", []):
            d = series[w["name"]]
            d["t"].append(s["t_s"])
            d["queue"].append(w.get("queue_length", 0))
            d["running"].append(w.get("running_requests", 0))
    if not series:
        for ax in (ax_q, ax_run):
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
    ax_run.set_xlabel("time since replay start (s)")
    for ax in (ax_q, ax_run):
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def _role_bars(ax: Axes, samples: Sequence[Mapping[str, Any]]) -> None:
    """Each worker's role as coloured bars over the sampled times."""
    series: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for s in samples:
        for w in s.get("workers", []):
            series[w["name"]].append((s["t_s"], w.get("role", "")))
    t_all = [s["t_s"] for s in samples]
    step = float(np.median(np.diff(t_all))) if len(t_all) > 1 else 1.0
    names = sorted(series)
    for y, name in enumerate(names):
        points = series[name]
        ends = [t for t, _ in points[1:]] + [points[-1][0] + step]
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for (t0, role), t1 in zip(points, ends, strict=True):
            runs = spans[role]
            if runs and abs(runs[-1][0] + runs[-1][1] - t0) < 1e-9:  # the same role goes on
                runs[-1] = (runs[-1][0], t1 - runs[-1][0])
            else:
                runs.append((t0, t1 - t0))
        for role, runs in spans.items():
            ax.broken_barh(runs, (y - 0.4, 0.8), color=ROLE_COLORS.get(role, "tab:gray"))
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel="time since replay start (s)", title="Worker role over time")
    patches = [Patch(color=c, label=role) for role, c in ROLE_COLORS.items()]
    ax.legend(handles=patches, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


def plot_controller(
    records: Sequence[RequestRecord],
    samples: Sequence[Mapping[str, Any]],
    path: str | Path,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> Path:
    """What the controller did beside what clients saw: TTFT and TPOT per request by send
    time, worker roles, mixed workers' prefill budgets and the routing thresholds over time."""
    fig = Figure(figsize=(12, 13), dpi=DPI, layout="constrained")
    ax_ttft, ax_tpot, ax_role, ax_budget, ax_thr = fig.subplots(5, 1, sharex=True)
    ok = [r for r in records if r.ok and r.send_s is not None]
    for ax, values, slo, what in (
        (ax_ttft, [(r.send_s, r.ttft_s) for r in ok], ttft_slo_ms, "TTFT"),
        (ax_tpot, [(r.send_s, r.tpot_s) for r in ok], tpot_slo_ms, "TPOT"),
    ):
        pts = [(t, v * 1000) for t, v in values if v is not None]
        if not pts:
            _no_data(ax, f"{what} values")
            continue
        ax.scatter(*zip(*pts, strict=True), s=6, color="tab:blue")
        if slo:
            ax.axhline(slo, color="tab:red", linestyle="--", label=f"SLO {slo:g} ms")
            ax.legend(fontsize=8, loc="upper left")
        ax.set(ylabel=f"{what} (ms)", yscale="log", title=f"{what} per request, by send time")
        ax.grid(alpha=0.3)
    _role_bars(ax_role, samples)
    ax_role.set_xlabel("")
    budgets: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for s in samples:
        for w in s.get("workers", []):
            if w.get("max_batched_tokens"):
                budgets[w["name"]].append((s["t_s"], w["prefill_budget_tokens"]))
    for name, pts in sorted(budgets.items()):
        ax_budget.step(*zip(*pts, strict=True), where="post", label=name)
    if budgets:
        ax_budget.legend(fontsize=8, loc="upper left")
    else:
        _no_data(ax_budget, "prefill budgets")
    ax_budget.set(ylabel="tokens", title="Prefill share of each step's token budget")
    ax_budget.grid(alpha=0.3)
    policy = [(s["t_s"], s["policy"]) for s in samples if "policy" in s]
    if policy:
        t = [p[0] for p in policy]
        ax_thr.step(t, [p["confidence_threshold"] for _, p in policy], where="post",
                    color="tab:purple", label="confidence threshold")  # fmt: skip
        ax_thr.set_ylabel("confidence threshold")
        ax_ms = ax_thr.twinx()
        for key, style, color in (
            ("spill_queue_ms", "-", "tab:orange"), ("return_queue_ms", ":", "tab:orange"),
            ("small_spill_queue_ms", "-", "tab:olive"), ("small_return_queue_ms", ":", "tab:olive"),
        ):  # fmt: skip
            if all(key in p for _, p in policy):
                ax_ms.step(t, [p[key] for _, p in policy], where="post", color=color,
                           linestyle=style, label=key)  # fmt: skip
        ax_ms.set_ylabel("queue delay (ms)")
        for (_, a), (t1, b) in itertools.pairwise(policy):
            for intent, strategy in b["strategies"].items():
                if a["strategies"].get(intent) != strategy:
                    ax_thr.annotate(f"{intent}: {strategy}", (t1, 0), fontsize=7, rotation=90,
                                    xycoords=("data", "axes fraction"), va="bottom")  # fmt: skip
        handles = ax_thr.get_legend_handles_labels()[0] + ax_ms.get_legend_handles_labels()[0]
        ax_thr.legend(handles=handles, fontsize=8, loc="upper left")
    else:
        _no_data(ax_thr, "routing policy (the mesh does not route)")
    ax_thr.set(xlabel="time since replay start (s)", title="Routing thresholds and strategies")
    ax_thr.grid(alpha=0.3)
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
        paths.append(
            plot_controller(
                records, status_samples, out / "controller.png", ttft_slo_ms, tpot_slo_ms
            )
        )
    return paths
