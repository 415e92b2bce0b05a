"""PNG plots next to the JSON report: a metric-per-method bar chart and HR@K against K.

matplotlib runs on its non-interactive Agg backend, so plotting works on servers and in CI without a
display; figures are closed after saving so long evaluation runs do not accumulate them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream_reco.evaluate.metrics import METRIC_NAMES
from stream_reco.evaluate.protocol import VARIANTS

DPI = 110
BAR_FIGSIZE = (11.0, 4.2)
CURVE_FIGSIZE = (10.0, 4.0)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(report: dict[str, Any], path: str | Path) -> Path:
    """One panel per variant: grouped bars of every metric for every method."""
    plt = _pyplot()
    methods = list(report["methods"])
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=BAR_FIGSIZE, sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, variant in zip(axes, VARIANTS, strict=True):
        for j, name in enumerate(methods):
            values = [report["methods"][name][variant][m] for m in METRIC_NAMES]
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(METRIC_NAMES))]
            ax.bar(xs, values, width=width, label=name)
        ax.set_xticks(range(len(METRIC_NAMES)), METRIC_NAMES)
        ax.set_title(f"{report['dataset']}: {variant} targets")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("mean over target events")
    axes[-1].legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_hr_curve(report: dict[str, Any], path: str | Path) -> Path:
    """HR@K for K = 1..list length, one line per method, one panel per variant."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(VARIANTS), figsize=CURVE_FIGSIZE, sharey=False)
    for ax, variant in zip(axes, VARIANTS, strict=True):
        for name, m in report["methods"].items():
            curve = m["hr_curve"][variant]
            ax.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
        ax.set_xlabel("K")
        ax.set_title(f"{report['dataset']}: HR@K, {variant} targets")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("hit rate")
    axes[-1].legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_report(report: dict[str, Any], report_path: str | Path) -> list[Path]:
    """Both plots beside `report_path` (`<stem>.metrics.png`, `<stem>.hr_at_k.png`)."""
    base = Path(report_path)
    stem = base.with_suffix("")
    return [
        plot_metrics(report, f"{stem}.metrics.png"),
        plot_hr_curve(report, f"{stem}.hr_at_k.png"),
    ]
