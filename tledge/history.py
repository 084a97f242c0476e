"""What a run writes about its phases: history.json (every epoch's metrics), metrics.json (the
status and each phase's kept accuracy) and training_curves.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tledge import fileio, rundir
from tledge.data import Splits
from tledge.fitting import PhaseResult


def write_reports(out: Path, phases: list[PhaseResult], splits: Splits, status: str) -> None:
    history = {p.name: {"epochs": len(next(iter(p.history.values()), [])),
                        "best_epoch": p.best_epoch, "seconds": round(p.seconds, 2),
                        "epoch_seconds": p.epoch_seconds, "feature_cache": p.feature_cache,
                        **p.history} for p in phases}
    fileio.write_json(out / rundir.HISTORY, history)
    last = phases[-1] if phases else None
    metrics = {
        "status": status,
        "phases_completed": [p.name for p in phases],
        "num_classes": len(splits.class_names),
        "train_images": len(splits.train), "val_images": len(splits.val),
        "test_images": len(splits.test) if splits.test is not None else 0,
        "skipped_files": splits.skipped,
        "val_accuracy": last.val_accuracy if last else None,
        "test_accuracy": last.test_accuracy if last else None,
        "phases": {p.name: {"best_epoch": p.best_epoch, "val_accuracy": p.val_accuracy,
                            "test_accuracy": p.test_accuracy, "seconds": round(p.seconds, 2),
                            "feature_cache": p.feature_cache} for p in phases},
    }
    fileio.write_json(out / rundir.METRICS, metrics)
    if phases:
        plot_curves(phases, out / rundir.CURVES)


def _once(ax, label: str):
    """``label`` for the first line of the axes that carries it, None after (one legend entry)."""
    return None if label in {line.get_label() for line in ax.lines} else label


def plot_curves(phases: list[PhaseResult], path: Path) -> None:
    """Training and validation accuracy and loss across phases: phase boundaries and names,
    and each phase's kept epoch (the weights the phase went on with) marked."""
    plt = fileio.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for ax, metric in zip(axes, ("accuracy", "loss")):
        start = 0
        for p in phases:
            n = len(p.history.get(metric, []))
            if not n:
                continue
            epochs = np.arange(start + 1, start + n + 1)
            ax.plot(epochs, p.history[metric], "o-", color="C0", label=_once(ax, "train"))
            val = p.history.get(f"val_{metric}")
            if val:
                ax.plot(epochs, val, "s--", color="C1", label=_once(ax, "validation"))
                if 1 <= p.best_epoch <= n:
                    ax.plot(start + p.best_epoch, val[p.best_epoch - 1], "*", ms=15, mfc="none",
                            mec="C3", mew=1.5, label=_once(ax, "kept epoch"))
            if start:
                ax.axvline(start + 0.5, color="grey", lw=1, ls=":")
            # the phase's name just above the plot, over its epochs: never on a curve
            ax.text(start + 0.5 + n / 2, 1.01, p.name, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8, color="dimgrey")
            start += n
        ax.set_xlim(0.5, max(start, 1) + 0.5)  # one epoch alone: autoscale would hide labels
        ax.set_xlabel("epoch")
        ax.set_title(metric, pad=14)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend for both plots, below them, where no curve or phase name is
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
                   frameon=False)
    fileio.save_png(fig, path)
