"""What a run writes about its phases: history.json (every epoch's metrics), metrics.json (the
status and each phase's kept accuracy) and training_curves.png."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tledge.core import fileio, rundir
from tledge.data import Splits
from tledge.core.errors import TledgeError
from tledge.training.fitting import PhaseResult


def write_reports(out: Path, phases: list[PhaseResult], splits: Splits, status: str) -> None:
    history = {p.name: {"epochs": len(next(iter(p.history.values()), [])),
                        "best_epoch": p.best_epoch, "seconds": round(p.seconds, 2),
                        "epoch_seconds": p.epoch_seconds, "feature_cache": p.feature_cache,
                        "monitor": p.monitor, "kept": p.kept,
                        **p.history} for p in phases}
    fileio.write_json(out / rundir.HISTORY, history)
    # the figures of the model the run holds: the last phase kept (a worse phase is not)
    last = next((p for p in reversed(phases) if p.kept), None)
    metrics = {
        "status": status,
        "phases_completed": [p.name for p in phases],
        "num_classes": len(splits.class_names),
        "train_images": len(splits.train), "val_images": len(splits.val),
        "test_images": len(splits.test) if splits.test is not None else 0,
        "skipped_files": splits.skipped,
        "images_per_class": {"train": _counts(splits.train.y, splits),
                             "val": _counts(splits.val.y, splits)},
        "kept_phase": last.name if last else None,
        "val_accuracy": _num(last.val_accuracy) if last else None,
        "val_balanced_accuracy": _num(last.val_balanced_accuracy) if last else None,
        "test_accuracy": last.test_accuracy if last else None,
        "test_balanced_accuracy": last.test_balanced_accuracy if last else None,
        "phases": {p.name: {"best_epoch": p.best_epoch, "monitor": p.monitor, "kept": p.kept,
                            "val_accuracy": _num(p.val_accuracy),
                            "val_balanced_accuracy": _num(p.val_balanced_accuracy),
                            "test_accuracy": p.test_accuracy,
                            "test_balanced_accuracy": p.test_balanced_accuracy,
                            "seconds": round(p.seconds, 2), "worse_p": p.worse_p,
                            "feature_cache": p.feature_cache} for p in phases},
    }
    fileio.write_json(out / rundir.METRICS, metrics)
    if phases:
        plot_curves(phases, out / rundir.CURVES)


def _num(value: float):
    """A figure for JSON: None where it was not measured (NaN)."""
    return None if value is None or value != value else float(value)


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def _counts(y, splits: Splits) -> dict:
    counts = np.bincount(np.asarray(y).reshape(-1), minlength=len(splits.class_names))
    return {name: int(n) for name, n in zip(splits.class_names, counts)}


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
            balanced = p.history.get("val_balanced_accuracy") if metric == "accuracy" and \
                p.monitor == "balanced_accuracy" else None
            if balanced:
                ax.plot(epochs, balanced, "d:", color="C2",
                        label=_once(ax, "validation, balanced"))
            picked = balanced or val
            if val:
                ax.plot(epochs, val, "s--", color="C1", label=_once(ax, "validation"))
            if picked and 1 <= p.best_epoch <= n:
                ax.plot(start + p.best_epoch, picked[p.best_epoch - 1], "*", ms=15,
                        mfc="none", mec="C3", mew=1.5, label=_once(ax, "kept epoch"))
            if metric == "accuracy" and p.test_accuracy is not None and 1 <= p.best_epoch <= n:
                ax.plot(start + p.best_epoch, p.test_accuracy, "P", color="C4", ms=8,
                        label=_once(ax, "test, kept epoch"))
            if not p.kept:  # ended worse than the model it started from: not kept
                ax.axvspan(start + 0.5, start + n + 0.5, color="grey", alpha=0.12, lw=0)
            if start:
                ax.axvline(start + 0.5, color="grey", lw=1, ls=":")
            # the phase's name just above the plot, over its epochs: never on a curve
            ax.text(start + 0.5 + n / 2, 1.01, p.name + ("" if p.kept else " (not kept)"),
                    transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8,
                    color="dimgrey")
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


def asked_epochs(config) -> dict:
    """{phase: the epochs ``config`` asks of it} (QAT off: 0)."""
    t = config.train
    return {"frozen": t.frozen.epochs, "finetune": t.finetune.epochs,
            "qat": t.qat.epochs if t.qat.enabled else 0}


def _longer(phases: list, config) -> list:
    asked = asked_epochs(config)
    return [p for p in phases if asked[p.name] > len(p.history.get("loss", []))]


def finished_phases(out: Path, config=None) -> list:
    """The PhaseResults of the phases a run folder's reports say finished (for --resume).

    Args:
      out: the run folder.
      config: the config the run resumes with: a finished run may go on when it asks a
        finished phase for more epochs (``resume_plan``).

    Raises:
      TledgeError: a folder that holds no unfinished run, and no phase given more epochs.
    """
    import json

    try:
        metrics = json.loads((out / rundir.METRICS).read_text())
        history = json.loads((out / rundir.HISTORY).read_text())
    except FileNotFoundError:
        metrics, history = {"phases_completed": [], "phases": {}, "status": "?"}, {}
    except (OSError, ValueError) as e:
        raise TledgeError(f"{out}'s metrics.json or history.json cannot be read ({e}): it "
                          "cannot be resumed; train it again with --overwrite") from e
    phases = []
    for name in metrics.get("phases_completed", []):
        h, m = dict(history.get(name, {})), metrics.get("phases", {}).get(name, {})
        meta = {k: h.pop(k, None) for k in ("epochs", "best_epoch", "seconds", "epoch_seconds",
                                            "feature_cache", "monitor", "kept")}
        phases.append(PhaseResult(
            name=name, history=h, best_epoch=meta["best_epoch"] or 0,
            val_accuracy=_nan(m.get("val_accuracy")),
            val_balanced_accuracy=_nan(m.get("val_balanced_accuracy")),
            test_accuracy=m.get("test_accuracy"),
            test_balanced_accuracy=m.get("test_balanced_accuracy"),
            seconds=meta["seconds"] or 0.0, epoch_seconds=meta["epoch_seconds"] or [],
            feature_cache=bool(meta["feature_cache"]), monitor=meta["monitor"] or "accuracy",
            kept=meta["kept"] is not False, worse_p=m.get("worse_p")))
    if metrics.get("status") == "complete" and (config is None or not _longer(phases, config)):
        raise TledgeError(f"{out} finished (metrics.json: complete): nothing to resume; give a "
                          "phase more epochs to extend it (tledge train --resume RUN "
                          "--epochs-finetune N), or tledge train --init-from RUN --out NEW_RUN")
    return phases


def resume_plan(phases: list, config, echo) -> tuple[list, dict]:
    """What ``--resume`` keeps of a run's finished phases, and which it extends.

    A finished phase that ``config`` asks for more epochs goes on from its kept weights (its
    epochs kept, the new ones numbered on, on a learning-rate schedule of their own), and the
    phases after it run again. Only the last float phase can: an earlier one's weights are gone
    (the next phase trained on from them). QAT given more epochs runs again in whole, from the
    float model (its wrapping, ranges and optimizer are not kept between runs).

    Returns:
      (the phases kept as they are, {phase name: its PhaseResult, to extend}).

    Raises:
      TledgeError: a phase that cannot be extended.
    """
    longer = _longer(phases, config)
    if not longer:
        return phases, {}
    first, asked = longer[0], asked_epochs(config)
    done = len(first.history.get("loss", []))
    if first.name == "qat":
        echo(f"phase qat: {done} epoch(s) finished, {asked['qat']} asked: QAT runs again in "
             "whole from the float model")
        return phases[:phases.index(first)], {}
    floats = [p for p in phases if p.name != "qat"]
    if first is not floats[-1] or not first.kept:
        why = (f"phase {floats[-1].name} trained on from its model" if first is not floats[-1]
               else "it ended below the model it started from and was not kept")
        raise TledgeError(f"phase {first.name} of this run cannot be given more epochs: {why}, "
                          "so its weights are gone; train again with --overwrite (or another "
                          "--out) and more epochs")
    echo(f"phase {first.name}: {done} epoch(s) finished, {asked[first.name]} asked: "
         f"{asked[first.name] - done} more from its kept epoch ({first.best_epoch}), "
         "on a learning-rate schedule of their own; the phases after it run again")
    return phases[:phases.index(first)], {first.name: first}


PHASE_TITLES = {"frozen": "1/3 frozen: a new head on the frozen backbone",
                "finetune": "2/3 finetune: the backbone's top at a lower learning rate",
                "qat": "3/3 qat: quantization-aware training"}


def phase_header(name: str, epochs: int) -> str:
    """The line that opens a phase in the log, before its first epoch (or QAT's wrapping)."""
    return f"== phase {PHASE_TITLES[name]}, {epochs} epoch{'s' if epochs != 1 else ''} =="


def phase_line(phase: PhaseResult) -> str:
    """The line each phase ends with.

    Args:
      phase: its PhaseResult.

    Returns:
      Epochs, time, the kept epoch and its validation (and test) accuracy, on one line.
    """
    balanced = phase.monitor == "balanced_accuracy"
    line = (f"phase {phase.name}: {len(phase.history.get('loss', []))} epoch(s) in "
            f"{phase.seconds:.1f}s{' on cached features' if phase.feature_cache else ''}"
            f", best val_{phase.monitor} {phase.score:.4f} at epoch {phase.best_epoch}"
            + (f" (val_accuracy {phase.val_accuracy:.4f})" if balanced else "")
            + (f", test accuracy {phase.test_accuracy:.4f}"
               if phase.test_accuracy is not None else "")
            + (f", balanced {phase.test_balanced_accuracy:.4f}"
               if balanced and phase.test_balanced_accuracy is not None else ""))
    if phase.worse_p is not None:  # it ended below its start: what the paired test said
        figure = phase.monitor.replace("_", " ")
        line += (f"\nphase {phase.name}: ended below the model it started from on validation "
                 f"({figure}), " + (
                     f"within chance (p = {phase.worse_p:.2f}, a paired test on the images "
                     "where they disagree): kept" if phase.kept else
                     f"beyond chance (p = {phase.worse_p:.3f}, a paired test on the images where "
                     "they disagree): that model is kept, and the next phase starts from it"))
    return line
