"""Replay metrics: `summary.json`, a readable `summary.md` and per-request `requests.jsonl`.

Latency percentiles cover successful requests only; failures are counted by status. Rates
divide by the active span (first send to last response), so an idle lead-in from the trace
does not dilute them. Goodput counts successful requests within both SLOs; a request with a
single output token has no TPOT and meets the TPOT SLO by definition. The downgrade fraction
is downgraded / demanding requests (a request without route info counts as not demanding).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flexmesh.loadgen.prefix import references_line
from flexmesh.loadgen.records import NOT_SENT, RequestRecord

PERCENTILES = (50, 90, 99)


def percentiles(values: Iterable[float], scale: float = 1.0) -> dict[str, float | None]:
    """{p50, p90, p99, mean, max} of `values` x `scale` (None when there are none)."""
    arr = np.asarray([v * scale for v in values], dtype=np.float64)
    keys = [f"p{p}" for p in PERCENTILES] + ["mean", "max"]
    if arr.size == 0:
        return dict.fromkeys(keys)
    out = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    out.update(mean=float(arr.mean()), max=float(arr.max()))
    return {k: round(v, 3) for k, v in out.items()}


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(v or "?" for v in values).items()))


def meets_slo(r: RequestRecord, ttft_slo_ms: float | None, tpot_slo_ms: float | None) -> bool:
    if not r.ok:
        return False
    if ttft_slo_ms is not None and (r.ttft_s is None or r.ttft_s * 1000 > ttft_slo_ms):
        return False
    tpot = r.tpot_s
    return tpot_slo_ms is None or tpot is None or tpot * 1000 <= tpot_slo_ms


def _fraction(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def downgrades(records: Iterable[RequestRecord]) -> dict[str, Any]:
    """Demanding requests (configured for the large model) and the share of them served by
    another model, overall and per intent (the workload's label; intents with demanding
    requests only)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.demanding:
            c = counts[r.intent]
            c[0] += 1
            c[1] += r.downgraded
    demanding = sum(c[0] for c in counts.values())
    downgraded = sum(c[1] for c in counts.values())
    return {
        "demanding_requests": demanding,
        "downgraded_requests": downgraded,
        "downgrade_fraction": _fraction(downgraded, demanding),
        "downgrade_fraction_by_intent": {
            intent: _fraction(d, n) for intent, (n, d) in sorted(counts.items())
        },
    }


def phase_summaries(
    records: Sequence[RequestRecord],
    bounds_s: Sequence[tuple[str, float, float]],
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
) -> list[dict[str, Any]]:
    """Per phase `(name, start_s, end_s)` of scheduled arrival time: the requests that arrived
    in it, how many met both SLOs, their goodput over the phase and their latencies."""
    out = []
    for name, start, end in bounds_s:
        rs = [r for r in records if start <= r.arrival_s < end and r.status != NOT_SENT]
        ok = [r for r in rs if r.ok]
        good = sum(meets_slo(r, ttft_slo_ms, tpot_slo_ms) for r in rs)
        out.append(
            {
                "phase": name,
                "start_s": round(start, 3),
                "end_s": round(end, 3),
                "requests": len(rs),
                "ok": len(ok),
                "met_slo": good,
                "goodput_req_s": round(good / max(end - start, 1e-9), 4),
                "output_tokens": sum(r.completion_tokens for r in ok),
                "ttft_ms": percentiles((r.ttft_s for r in ok if r.ttft_s is not None), 1000.0),
                "tpot_ms": percentiles((t for r in ok if (t := r.tpot_s) is not None), 1000.0),
                **downgrades(rs),
            }
        )
    return out


def _route_mix(ok: Sequence[RequestRecord]) -> dict[str, Any]:
    by_intent: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in ok:
        by_intent[r.intent].append(r)
    probed = [r for r in ok if r.route_intent]
    return {
        "by_model": _counts(r.route_model for r in ok),
        "by_strategy": _counts(r.route_strategy for r in ok),
        "by_intent": {
            intent: {
                "count": len(rs),
                "models": _counts(r.route_model for r in rs),
                "strategies": _counts(r.route_strategy for r in rs),
                "probe_intents": _counts(r.route_intent for r in rs),
            }
            for intent, rs in sorted(by_intent.items())
        },
        "probe_agreement": (
            round(sum(r.route_intent == r.intent for r in probed) / len(probed), 4)
            if probed
            else None
        ),
    }


def _latency(rs: Sequence[RequestRecord]) -> dict[str, Any]:
    return {
        "count": len(rs),
        "ttft_ms": percentiles((r.ttft_s for r in rs if r.ttft_s is not None), 1000),
        "tpot_ms": percentiles((t for r in rs if (t := r.tpot_s) is not None), 1000),
        "e2e_ms": percentiles((r.e2e_s for r in rs if r.e2e_s is not None), 1000),
    }


def summarize(
    records: Sequence[RequestRecord],
    wall_s: float,
    ttft_slo_ms: float | None = None,
    tpot_slo_ms: float | None = None,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """All headline numbers of a replay as a JSON-ready dict."""
    sent = [r for r in records if r.status != NOT_SENT and r.send_s is not None]
    ok = [r for r in sent if r.ok]
    if sent:
        first = min(r.send_s or 0.0 for r in sent)
        last = max(r.end_s or 0.0 for r in sent)
        duration = max(last - first, 1e-9)
    else:
        duration = 0.0
    out_tokens = sum(r.completion_tokens for r in ok)
    good = [r for r in ok if meets_slo(r, ttft_slo_ms, tpot_slo_ms)]

    def rate(n: float) -> float:
        return round(n / duration, 4) if duration > 0 else 0.0

    delays = [r.send_delay_s for r in sent]
    by_model: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in ok:
        by_model[r.route_model or "?"].append(r)
    return {
        **(dict(meta) if meta else {}),
        "requests_total": len(records),
        "requests_sent": len(sent),
        "not_sent": len(records) - len(sent),
        "completed": len(ok),
        "failed": len(sent) - len(ok),
        "failed_by_status": _counts(r.status for r in sent if not r.ok),
        "duration_s": round(duration, 4),
        "wall_s": round(wall_s, 4),
        "req_s": rate(len(ok)),
        "output_tok_s": rate(out_tokens),
        "input_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens": out_tokens,
        **{k: v for k, v in _latency(ok).items() if k != "count"},
        "itl_ms": percentiles((g for r in ok for g in r.token_gaps_s()), 1000),
        "send_delay_ms": percentiles(delays, 1000),
        "sends_delayed_over_10ms": sum(d > 0.010 for d in delays),
        "slo": {"ttft_ms": ttft_slo_ms, "tpot_ms": tpot_slo_ms},
        "goodput_req_s": rate(len(good)),
        "slo_attainment": round(len(good) / len(sent), 4) if sent else None,
        **downgrades(sent),
        "route_mix": _route_mix(ok),
        "by_model": {m: _latency(rs) for m, rs in sorted(by_model.items())},
    }


def write_requests_jsonl(records: Iterable[RequestRecord], path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_dict(), separators=(",", ":")) + "\n")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "-"
    return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def summary_markdown(s: Mapping[str, Any]) -> str:
    """The summary as Markdown tables."""
    lines = [f"# Replay of {s.get('trace', 'workload')} against {s.get('target', '?')}", ""]
    overview = [
        "requests_total",
        "requests_sent",
        "completed",
        "failed",
        "not_sent",
        "duration_s",
        "req_s",
        "output_tok_s",
        "goodput_req_s",
        "slo_attainment",
        "demanding_requests",
        "downgrade_fraction",
        "sends_delayed_over_10ms",
    ]
    lines += _table(["metric", "value"], [(k, s.get(k)) for k in overview])
    prefix = references_line(s.get("prefix_reference"), s.get("prefix_server"))
    lines += [
        f"SLOs: TTFT ≤ {_fmt(s['slo']['ttft_ms'])} ms, TPOT ≤ {_fmt(s['slo']['tpot_ms'])} ms",
        "",
        prefix[:1].upper() + prefix[1:],  # not str.capitalize: it lowers "LRU" and names
        "",
    ]
    lines += ["## Latency (successful requests, ms)", ""]
    cols = ["p50", "p90", "p99", "mean", "max"]
    metrics = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "send_delay_ms")
    lines += _table(["metric", *cols], [(m, *(s[m][c] for c in cols)) for m in metrics])
    if s["failed_by_status"]:
        lines += ["## Failures", ""]
        lines += _table(["status", "count"], s["failed_by_status"].items())
    mix = s["route_mix"]
    by_intent = s.get("downgrade_fraction_by_intent", {})
    lines += ["## Route mix by intent", ""]
    lines += _table(
        ["intent", "count", "models", "strategies", "probe said", "downgrade fraction"],
        [
            (k, v["count"], v["models"], v["strategies"], v["probe_intents"], by_intent.get(k))
            for k, v in mix["by_intent"].items()
        ],
    )
    lines += [f"Probe agreement with the prompt's label: {_fmt(mix['probe_agreement'])}", ""]
    lines += ["## By model", ""]
    lines += _table(
        ["model", "count", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "E2E p50"],
        [
            (
                m,
                v["count"],
                v["ttft_ms"]["p50"],
                v["ttft_ms"]["p99"],
                v["tpot_ms"]["p50"],
                v["tpot_ms"]["p99"],
                v["e2e_ms"]["p50"],
            )
            for m, v in s["by_model"].items()
        ],
    )
    if s.get("by_phase"):
        lines += ["## By phase", ""]
        lines += _table(
            ["phase", "requests", "met SLO", "goodput req/s", "TTFT p99", "TPOT p99",
             "demanding", "downgrade fraction"],
            [
                (p["phase"], p["requests"], p["met_slo"], p["goodput_req_s"],
                 p["ttft_ms"]["p99"], p["tpot_ms"]["p99"], p.get("demanding_requests"),
                 p.get("downgrade_fraction"))
                for p in s["by_phase"]
            ],
        )  # fmt: skip
    return "\n".join(lines)


def write_reports(
    out_dir: str | Path, records: Sequence[RequestRecord], summary: Mapping[str, Any]
) -> dict[str, Path]:
    """Write summary.json, summary.md and requests.jsonl into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary_json": out / "summary.json",
        "summary_md": out / "summary.md",
        "requests": out / "requests.jsonl",
    }
    paths["summary_json"].write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    paths["summary_md"].write_text(summary_markdown(summary) + "\n", encoding="utf-8")
    write_requests_jsonl(records, paths["requests"])
    return paths
