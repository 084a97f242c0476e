"""Training time per phase, one git revision against another, same data, same seed (issue 39).

    apt-get install dataset-fashion-mnist       # Fashion-MNIST, offline
    python benchmarks/train_speed.py --before a605e6c --after HEAD \
        --weights ../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5

Each revision is checked out into a git worktree under --work and runs ``tledge train`` in a
fresh process (``python -m tledge.cli`` with that worktree first on the path), on the built-in
Fashion-MNIST at two settings: 96 px with 1,000 training images a class and 224 px with 300,
the default recipe with 3 frozen, 3 fine-tune and 2 QAT epochs, seed 42. Before and after of one
setting run back to back, so a noisy spell of the shared machine lands on one pair at most.
Per phase: seconds (as metrics.json says: the phase's training, a cache's computation included,
its test evaluation not), training images a second (epochs x images / seconds) and test accuracy
(the official 10,000-image split) after the phase. Writes benchmarks/train_speed.md and
benchmarks/results/train_speed.json; --settings picks some of the settings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
# name: (image size, images a class, further train flags)
SETTINGS = {"96": ("96", "1000", []), "224": ("224", "300", []),
            # the recipe's measured alternative with a frozen bottom (benchmarks/recipe.md)
            "96-unfreeze80": ("96", "1000", ["--unfreeze", "80"]),
            "224-unfreeze80": ("224", "300", ["--unfreeze", "80"]),
            # the defaults again, against another revision: frozen BatchNorm folded
            "96-bnfold": ("96", "1000", [])}
TITLES = {"96-bnfold": " (the frozen BatchNorm folded, against the commit before it)"}
EPOCHS = {"frozen": 3, "finetune": 3, "qat": 2}


def worktree(rev: str, work: Path) -> Path:
    """A checkout of ``rev`` under ``work`` (made once; the same commit reuses it); a folder:
    that copy of the code, as it is."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = work / f"tree-{commit}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT,
                       check=True, capture_output=True)
    return tree


def train(tree: Path, setting: str, weights: str, out: Path, log: Path) -> dict:
    """One ``tledge train`` from ``tree``'s code; its metrics.json and wall seconds."""
    size, limit, extra = SETTINGS[setting]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tledge.cli", "train", "--data", "fashion_mnist",
             "--image-size", size, "--limit", limit, "--weights", weights,
             "--epochs-frozen", str(EPOCHS["frozen"]), "--epochs-finetune",
             str(EPOCHS["finetune"]), "--epochs-qat", str(EPOCHS["qat"]), "--out", str(out),
             "--overwrite", *extra], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tree)
    if proc.returncode != 0:
        raise SystemExit(f"tledge train failed: see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall_seconds": round(time.monotonic() - start, 1),
            "train_images": metrics["train_images"], "phases": metrics["phases"]}


@click.command()
@click.option("--before", required=True, help="The revision to compare against.")
@click.option("--after", default="HEAD", show_default=True)
@click.option("--weights", required=True, help="MobileNetV2 1.0 backbone weights (no top).")
@click.option("--settings", default="96,224", show_default=True)
@click.option("--runs", default="before,after", show_default=True,
              help="Which of the two to run now (the other's figures are kept from before).")
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/tledge-train-speed",
              show_default=True)
def main(before, after, weights, settings, runs, work):
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    weights = str(Path(weights).resolve())
    from tledge.measure.bench import machine_info

    results_path = ROOT / "benchmarks" / "results" / "train_speed.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    trees = {"before": worktree(before, work), "after": worktree(after, work)}
    trees = {which: tree for which, tree in trees.items() if which in runs.split(",")}
    for setting in settings.split(","):
        for which, tree in trees.items():
            row = train(tree, setting, weights, work / f"run-{which}-{setting}",
                        work / f"{which}-{setting}.log")
            row["revision"] = revision(tree)
            results.setdefault(setting, {})[which] = row
            print(setting, which, json.dumps(row), flush=True)
            results["machine"] = machine_info()[0]["machine_id"]
            results["date"] = time.strftime("%Y-%m-%d")
            results_path.write_text(json.dumps(results, indent=1))
            write_table(results)


def revision(tree: Path) -> str:
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=tree, check=True,
                          capture_output=True, text=True).stdout.strip()


def write_table(results: dict) -> None:
    lines = ["# Training speed per phase, before and after (issue 39)", "",
             "`python benchmarks/train_speed.py --before REV --after REV --weights <offline "
             f"MobileNetV2 1.0>` on {results['machine']} (Python {platform.python_version()}), "
             f"{results['date']}: built-in Fashion-MNIST, the default recipe at 3 frozen, 3 "
             "fine-tune and 2 QAT epochs, seed 42; test accuracy on the official 10,000 test "
             "images after each phase. Seconds are the phase's own (caches computed included, "
             "the test evaluation not); images/s = epochs x training images / seconds.", ""]
    for setting, (size, limit, extra) in SETTINGS.items():
        if setting not in results or len(results[setting]) < 2:
            continue
        b, a = results[setting]["before"], results[setting]["after"]
        flags = f", `{' '.join(extra)}`" if extra else ", the defaults"
        lines += [f"## {size} px, {limit} images a class ({b['train_images']} training "
                  f"images){flags}{TITLES.get(setting, '')}",
                  "",
                  f"before: {b['revision']}, after: {a['revision']}", "",
                  "| phase | s before | s after | after / before | images/s before | "
                  "images/s after | test acc before | test acc after | change, points |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, epochs in EPOCHS.items():
            pb, pa = b["phases"].get(name), a["phases"].get(name)
            if not pb or not pa:
                continue
            rate = [epochs * r["train_images"] / p["seconds"] for r, p in ((b, pb), (a, pa))]
            lines.append(
                f"| {name} | {pb['seconds']:.1f} | {pa['seconds']:.1f} | "
                f"{pa['seconds'] / pb['seconds']:.2f}x | {rate[0]:.0f} | {rate[1]:.0f} | "
                f"{100 * pb['test_accuracy']:.2f}% | {100 * pa['test_accuracy']:.2f}% | "
                f"{100 * (pa['test_accuracy'] - pb['test_accuracy']):+.2f} |")
        total = [sum(p["seconds"] for p in r["phases"].values()) for r in (b, a)]
        lines += [f"| **all phases** | {total[0]:.1f} | {total[1]:.1f} | "
                  f"**{total[1] / total[0]:.2f}x** | | | | | |", "",
                  f"Whole process (start-up, data, test evaluations included): "
                  f"{b['wall_seconds']:.0f} s before, {a['wall_seconds']:.0f} s after "
                  f"({a['wall_seconds'] / b['wall_seconds']:.2f}x).", ""]
    path = ROOT / "benchmarks" / "train_speed.md"
    old = path.read_text() if path.is_file() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""  # written by hand: kept
    path.write_text("\n".join(lines) + ("\n" + notes if notes else ""))


NOTES = "<!-- notes: kept when the tables are written again -->"


if __name__ == "__main__":
    main()
