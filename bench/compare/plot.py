"""One PNG per run: for every workload at the highest latency, each filesystem's value as a
fraction of its ceiling (or of the best of the three when there is no ceiling), wsfuse
beside the peers; the dashed line is the ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.compare.report import FS, WORKLOADS, ceiling, value


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    lat = max(result["meta"]["latencies_ms"])
    labels, series = [], {fs: [] for fs in FS}
    for w in WORKLOADS:
        if w.id == "daemon_peak_rss":
            continue
        vals = {fs: value(rows, fs, w.id, lat) for fs in FS}
        if not any(vals.values()):
            continue
        ref, _ = ceiling(rows, w, lat)
        present = [v for v in vals.values() if v]
        if not ref:
            ref = min(present) if w.lower_is_better else max(present)
        labels.append(w.title + (" [time]" if w.lower_is_better else ""))
        for fs, v in vals.items():
            if not v:
                series[fs].append(0.0)
            else:
                series[fs].append(ref / v if w.lower_is_better else v / ref)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.5))
    height = 0.8 / len(FS)
    colors = {"wsfuse": "#1f77b4", "s3fs": "#ff7f0e", "rclone": "#2ca02c"}
    for i, fs in enumerate(FS):
        ys = [j + i * height for j in range(len(labels))]
        ax.barh(ys, series[fs], height=height, label=fs, color=colors[fs])
    ax.set_yticks([j + height for j in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(
        "fraction of the ceiling (or of the best of the three); log scale; right is better"
    )
    ax.set_title(f"bench/run {result['meta']['timestamp']}, {lat:g} ms time-to-first-byte")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
