"""The plots of docs/benchmarks.md, drawn from the bench's results (matplotlib: the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: list[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per series found in ``results``; none (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots: matplotlib is not installed (pip install -e '.[bench]'); no plots drawn")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    specs = {
        "sweep of": ("sweep-vs-table-size.png", "rows in the table", "seconds per sweep of the due jobs", True),
        "re-send rate by batch size": ("resend-rate-vs-batch-size.png", "batch size", "jobs re-sent per second", False),
        "retry_all_failed peak RSS": ("rss-vs-bulk-size.png", "jobs retried", "peak RSS (MB)", False),
    }
    written = []
    for prefix, (name, xlabel, ylabel, many) in specs.items():
        for database in ("postgresql", "sqlite"):
            found = [r for r in results if r["figure"].startswith(prefix) and r["database"] == database]
            if not found or "series" not in found[0]:
                continue
            series = found[0]["series"]
            xs = sorted(series, key=int)
            ys = [min(series[x]) if many else series[x] for x in xs]
            figure, axes = plt.subplots(figsize=(5, 3.2))
            axes.plot([int(x) for x in xs], ys, marker="o")
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.set_title(f"{found[0]['figure']} ({database})", fontsize=8)
            axes.set_ylim(bottom=0)
            axes.grid(alpha=0.3)
            figure.tight_layout()
            path = folder / name.replace(".png", f"-{database}.png")
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
    return written
