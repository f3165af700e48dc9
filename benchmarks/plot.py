"""``rw_scaling.png``: time and memory of the random walk against image side, log-log."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.rw_bench import DENSE_MATRICES, STRIDE

STYLE = {
    "dense": ("tab:red", "o"),
    "numba": ("tab:blue", "s"),
    "numpy": ("tab:green", "^"),
    "onnx": ("tab:purple", "D"),
}


def plot_rw_scaling(raw: list[dict], path: Path) -> Path | None:
    """Two panels (seconds, MB) over image side; None when matplotlib is not installed.

    Solid lines C = 3, dashed C = 21. The dense baseline's skipped sides are drawn hollow at
    their estimates: time O(N³) from its largest measured side, memory its N×N matrices.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    channel_counts = sorted({r["channels"] for r in raw if "channels" in r})
    for channels in channel_counts:
        dash = "-" if channels == min(channel_counts) else "--"
        for method, (color, marker) in STYLE.items():
            runs = sorted(
                (r for r in raw if r.get("method") == method and r.get("channels") == channels),
                key=lambda r: r["side"],
            )
            done = [r for r in runs if "median_s" in r]
            if not done:
                continue
            sides = [r["side"] for r in done]
            label = f"{method}, C={channels}"
            ax_t.plot(
                sides, [r["median_s"] for r in done], dash, color=color, marker=marker, label=label
            )
            mem = [r["peak_extra_mb"] or 0.0 for r in done]
            ax_m.plot(sides, np.maximum(mem, 0.1), dash, color=color, marker=marker, label=label)
            skipped = [r["side"] for r in raw if r.get("method") == method and "skipped" in r]
            if method == "dense" and skipped:
                n0 = (done[-1]["side"] / STRIDE) ** 2
                est = [done[-1]["median_s"] * ((s / STRIDE) ** 2 / n0) ** 3 for s in skipped]
                ax_t.plot(
                    skipped,
                    est,
                    ":",
                    color=color,
                    marker=marker,
                    mfc="none",
                    label=f"dense, C={channels} (estimated)" if dash == "-" else None,
                )
                mb = [DENSE_MATRICES * ((s / STRIDE) ** 2) ** 2 * 4 / 2**20 for s in skipped]
                ax_m.plot(skipped, mb, ":", color=color, marker=marker, mfc="none")
    for ax, what in ((ax_t, "seconds per image (median)"), (ax_m, "peak memory of the walk (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("image side (px); feature grid = side / 8")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        sides = sorted({r["side"] for r in raw})
        ax.set_xticks(sides)
        # A side within 20% of the previous one gets no label (448 and 512 would overlap).
        shown = [s if i == 0 or s > 1.2 * sides[i - 1] else "" for i, s in enumerate(sides)]
        ax.set_xticklabels([str(s) for s in shown])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_t.set_title("Random walk, t = 256: local O(N) vs dense O(N³)")
    ax_m.set_title("Memory: local O(N) vs dense O(N²) (hollow: estimated)")
    ax_t.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
