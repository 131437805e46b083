"""The benchmark's plot: latency percentiles vs offered load (log-log), one colour per
system, one line style per percentile, the deadline as a horizontal line; and achieved vs
offered throughput next to it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

COLORS = {"B0": "#7f7f7f", "B1": "#1f77b4", "R": "#d62728", "R×2": "#ff7f0e"}
PERCENTILES = (("p50_ms", "p50", "-", "o"), ("p99_ms", "p99", "--", "s"),
               ("p999_ms", "p99.9", ":", "^"))


def label(run: Mapping[str, Any]) -> str:
    return run["system"] + ("" if run["parallelism"] == 1 else f"×{run['parallelism']}")


def plot(doc: Mapping[str, Any], path: Path, deadline_ms: float = 50.0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    runs: Sequence[Mapping[str, Any]] = doc["runs"]
    systems = list(dict.fromkeys(label(r) for r in runs))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 2]})
    for s in systems:
        rs = sorted((r for r in runs if label(r) == s), key=lambda r: r["offered_rps"])
        color = COLORS.get(s)
        for key, name, style, marker in PERCENTILES:
            pts = [(r["offered_rps"], r[key]) for r in rs if r.get(key)]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, linestyle=style, marker=marker, color=color, markersize=4,
                        label=f"{s} {name}")
        pts = [(r["offered_rps"], r["achieved_rps"]) for r in rs]
        if pts:
            x, y = zip(*pts, strict=True)
            ax2.plot(x, y, marker="o", color=color, label=s)
    ax.axhline(deadline_ms, color="black", linewidth=1)
    ax.annotate(f"deadline {deadline_ms:.0f} ms", (0.01, deadline_ms), xycoords=("axes fraction",
                "data"), xytext=(2, 3), textcoords="offset points", fontsize=9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("end-to-end latency from intended send (ms)")
    ax.set_title("Latency vs offered load (open loop)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(systems), loc="upper left")
    rates = sorted({r["offered_rps"] for r in runs})
    if rates:
        ax2.plot([rates[0], rates[-1]], [rates[0], rates[-1]], color="black", linewidth=0.8,
                 linestyle=":", label="offered")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("offered load (requests/s)")
    ax2.set_ylabel("achieved (answers/s)")
    ax2.set_title("Throughput")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    for a in (ax, ax2):  # plain numbers, the measured rates as ticks
        a.xaxis.set_major_locator(FixedLocator(rates))
        a.xaxis.set_minor_locator(NullLocator())
        a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        a.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.yaxis.set_major_locator(FixedLocator(rates))
    ax2.yaxis.set_minor_locator(NullLocator())
    m = doc.get("machine", {})
    fig.suptitle(f"rendezvous-flink benchmark — {m.get('nproc', '?')} cores, "
                 f"{m.get('cpu_model', '')}, {doc.get('started_at', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # re-draw: python -m bench.plot [results.json [out.png]]
    import json
    import sys

    src = (Path(sys.argv[1]) if len(sys.argv) > 1
           else Path(__file__).resolve().parent / "results" / "latest.json")
    doc = json.loads(src.read_text())
    plot(doc, Path(sys.argv[2]) if len(sys.argv) > 2 else src.parent / "latency.png",
         doc.get("config", {}).get("deadline_ms", 50.0))
