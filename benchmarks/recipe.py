"""Ablations of the training recipe: what each default is worth, on two data sets and two
budgets. Each run is a fresh `tledge train` process; results accumulate in
benchmarks/results/recipe.json (a rerun skips what is there) and benchmarks/recipe.md is
written from it.

    apt-get install dataset-fashion-mnist   # Fashion-MNIST, offline
    pip install scikit-learn                # scikit-learn's bundled 8x8 digits, offline
    python benchmarks/recipe.py --runs old,hand,new --sets fashion:S,digits:S \
        --weights ../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5

Data sets: ``fashion`` (Fashion-MNIST through tledge's built-in loader, its 10,000-image test
split), ``shapes`` (tledge's generated set: 720 images, its own 300-image test split) and
``digits`` (scikit-learn's 1,797 handwritten digits, written once as a class-per-folder
tree with a stratified 20% test folder passed as --test-data). Budgets: ``S`` 3 frozen + 3
fine-tune epochs (Fashion-MNIST: 1,000 images per class), ``M`` 10 + 4 (Fashion-MNIST: 2,000 per
class), the budget of benchmarks/fashion_mnist.sh. Every run: 96 px, MobileNetV2 1.0 from
--weights, seed 42, no QAT unless the run's flags say so; accuracy is on the test split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

from tledge.core.quiet import quiet_tensorflow_logs

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- tables: benchmarks/recipe.py writes them -->", "<!-- end of tables -->"
RESULTS = ROOT / "benchmarks/results/recipe.json"

BUDGETS = {"S": {"epochs": (3, 3), "limit": {"fashion": 1000}},
           "M": {"epochs": (10, 4), "limit": {"fashion": 2000}}}

# Each run: the flags it adds to `tledge train`, and what it tests. "old" spells out the
# defaults before this ablation, "base" the point the ablation started from and "prev" the
# defaults after its first round (base, the whole backbone), so each stays what it was as the
# defaults move on; "new" is the defaults now (prev with the phase-1 head of the second round).
HEAD0 = ["--lr", "1e-3", "--lr-schedule-frozen", "constant", "--no-feature-norm"]
OLD_HEAD = HEAD0 + ["--dropout", "0.2", "--head-units", "0"]
BASE = ["--no-augment", *OLD_HEAD, "--lr-finetune", "1e-4", "--lr-schedule", "cosine",
        "--warmup", "0.1", "--unfreeze", "30", "--label-smoothing", "0.1"]
PREV = BASE + ["--unfreeze", "all"]
RUNS = {
    "old": (["--augment", *OLD_HEAD, "--lr-finetune", "1e-5", "--unfreeze", "30",
             "--lr-schedule", "constant", "--label-smoothing", "0", "--warmup", "0"],
            "the defaults before: augmentation, fine-tune 1e-5 constant, top 30 layers"),
    "hand": (["--no-augment", *OLD_HEAD, "--lr-finetune", "1e-4", "--unfreeze", "50",
              "--lr-schedule", "constant", "--label-smoothing", "0", "--warmup", "0"],
             "the hand-written Keras recipe of issue 10: no augmentation, top 50 at 1e-4"),
    "base": (BASE, "no augmentation; fine-tune the top 30 layers (block_14 on) at 1e-4, 10% "
             "warm-up, cosine; label smoothing 0.1; head at a constant 1e-3"),
    "base+augment": (BASE + ["--augment"], "base, with augmentation"),
    "base-headlr3e-3": (BASE + ["--lr", "3e-3"], "base, head (frozen phase) rate 3e-3"),
    "base-headlr3e-4": (BASE + ["--lr", "3e-4"], "base, head (frozen phase) rate 3e-4"),
    "base-dropout0": (BASE + ["--dropout", "0"], "base, no dropout in the head"),
    "base-head256": (BASE + ["--head-units", "256", "--dropout", "0.3"],
                     "base, a hidden layer of 256 in the head (fashion_mnist.sh)"),
    "base-lr1e-5": (BASE + ["--lr-finetune", "1e-5"], "base, fine-tune rate 1e-5"),
    "base-lr3e-4": (BASE + ["--lr-finetune", "3e-4"], "base, fine-tune rate 3e-4"),
    "base-constant": (BASE + ["--lr-schedule", "constant", "--warmup", "0"],
                      "base, constant rate: no warm-up, no cosine decay"),
    "base-nowarmup": (BASE + ["--warmup", "0"], "base, cosine decay without warm-up"),
    "base-nosmoothing": (BASE + ["--label-smoothing", "0"], "base, no label smoothing"),
    "base-unfreeze50": (BASE + ["--unfreeze", "50"], "base, the top 50 layers (block_12 on)"),
    "base-unfreeze80": (BASE + ["--unfreeze", "80"], "base, the top 80 layers (block_9 on)"),
    "base-unfreezeall": (PREV, "base, the whole backbone (= prev)"),
    "prev": (PREV, "the defaults after round 1: base with the whole backbone unfrozen"),
    "prev-lr3e-4": (PREV + ["--lr-finetune", "3e-4"], "prev, fine-tune rate 3e-4"),
    "prev-seed1": (PREV + ["--seed", "1"], "prev, seed 1 (the split, init and order change)"),
    "prev-seed2": (PREV + ["--seed", "2"], "prev, seed 2"),
    "prev-nosmoothing": (PREV + ["--label-smoothing", "0"], "prev, no label smoothing"),
    "prev+qat": (PREV + ["--qat", "--epochs-qat", "1"], "prev and one epoch of QAT"),
    "new": ([], "the defaults now: prev with the head on standardised features, 3e-3, cosine"),
    "new-seed1": (["--seed", "1"], "new, seed 1 (the split, init and order change)"),
    "new-seed2": (["--seed", "2"], "new, seed 2"),
    "new-headconstant": (["--lr", "1e-3", "--lr-schedule-frozen", "constant"],
                         "new, head at a constant 1e-3 (features still standardised)"),
    "new-nofeaturenorm": (["--no-feature-norm"], "new, head on raw features"),
    "new-nosmoothing": (["--label-smoothing", "0"], "new, no label smoothing"),
    "new-bntrain": (["--batchnorm", "train"], "new, BatchNorm trained in phase 2"),
    "new+augment": (["--augment"], "new, with augmentation"),
    "new+qat": (["--qat", "--epochs-qat", "1"], "new and one epoch of QAT"),
}


def digits_folders(root: Path) -> tuple[Path, Path]:
    """scikit-learn's digits as train/ and test/ class-per-folder trees of 8x8 PNGs."""
    train, test = root / "train", root / "test"
    if (root / ".complete").exists():
        return train, test
    try:
        from sklearn.datasets import load_digits
    except ImportError as cause:
        raise click.ClickException(
            "the digits set needs scikit-learn: pip install scikit-learn") from cause
    from PIL import Image

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == label))
        n_test = int(round(0.2 * len(idx)))
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                Image.fromarray(images[i]).save(folder / f"{i:04d}.png")
    (root / ".complete").touch()
    return train, test


def run_one(data_set: str, budget: str, name: str, weights: str, work: Path) -> dict:
    frozen, finetune = BUDGETS[budget]["epochs"]
    flags, _ = RUNS[name]
    out = work / f"{data_set}-{budget}-{name}"
    args = ["--image-size", "96", "--weights", weights, "--epochs-frozen", str(frozen),
            "--epochs-finetune", str(finetune), "--seed", "42", "--out", str(out), "--overwrite"]
    if "--qat" not in flags:
        args.append("--no-qat")
    if data_set == "fashion":
        args += ["--data", "fashion_mnist", "--limit", str(BUDGETS[budget]["limit"]["fashion"])]
    elif data_set == "shapes":
        args += ["--data", "shapes"]
    else:
        train, test = digits_folders(work / "digits-data")
        args += ["--data", str(train), "--test-data", str(test)]
    command = [str(ROOT / ".venv/bin/tledge"), "train", *args, *flags]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True,
                          env=quiet_tensorflow_logs(dict(os.environ)))
    if proc.returncode:
        raise click.ClickException(f"{' '.join(command)}\n{proc.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    phases = metrics["phases"]
    return {"data": data_set, "budget": budget, "run": name, "flags": flags,
            "frozen": phases.get("frozen", {}).get("test_accuracy"),
            "finetune": phases.get("finetune", {}).get("test_accuracy"),
            "qat": phases.get("qat", {}).get("test_accuracy"),
            "frozen_s": phases.get("frozen", {}).get("seconds"),
            "finetune_s": phases.get("finetune", {}).get("seconds"),
            "wall_s": round(time.perf_counter() - start, 1),
            "train_images": metrics["train_images"]}


@click.command()
@click.option("--weights", required=True, help="The backbone weights every run starts from.")
@click.option("--runs", default="old,hand,new", show_default=True,
              help=f"Comma-separated, of: {', '.join(RUNS)}.")
@click.option("--sets", default="fashion:S,digits:S", show_default=True,
              help="Comma-separated data:budget pairs (fashion|digits|shapes : S|M).")
@click.option("--work", default="/tmp/tledge-recipe", show_default=True,
              help="Run folders and the digits tree.")
@click.option("--again", is_flag=True, help="Rerun runs already in recipe.json.")
@click.option("--render", "render_only", is_flag=True, help="Only write benchmarks/recipe.md.")
@click.option("--results", default=str(RESULTS), show_default=True, help="The results JSON.")
def main(weights, runs, sets, work, again, render_only, results):
    results_path = Path(results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {"rows": []}
    if not render_only:
        from tledge.measure.bench import machine_info

        results["machine"] = machine_info()[0]["machine_id"]
        for pair in sets.split(","):
            data_set, budget = pair.split(":")
            for name in runs.split(","):
                done = [r for r in results["rows"] if (r["data"], r["budget"], r["run"]) ==
                        (data_set, budget, name)]
                if done and not again:
                    continue
                row = run_one(data_set, budget, name, weights, Path(work))
                results["rows"] = [r for r in results["rows"] if r not in done] + [row]
                write_results(results_path, results)
                click.echo(json.dumps(row))
    write_between(ROOT / "benchmarks/recipe.md", BEGIN, END,
                  render(results) + best_epochs(results, Path(work)))
    click.echo("wrote the tables into benchmarks/recipe.md")


def write_results(path: Path, results: dict) -> None:
    """The results JSON, written atomically (a run interrupted mid-write keeps the old one)."""
    from tledge.core import fileio

    fileio.write_text(path, json.dumps(results, indent=1))


def write_between(doc: Path, begin: str, end: str, text: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of ``doc`` with ``text``
    (a new doc holds just the markers), atomically."""
    from tledge.core import fileio

    current = doc.read_text() if doc.exists() else f"{begin}\n{end}\n"
    head, rest = current.split(begin, 1)
    fileio.write_text(doc, head + begin + "\n" + text + end + rest.split(end, 1)[1])


def best_epochs(results: dict, work: Path) -> str:
    """How often keeping each phase's best validation epoch (rather than its last) mattered,
    from the run folders of the rows still in ``work``."""
    phases, earlier, gains = 0, 0, []
    for r in results["rows"]:
        history = work / f"{r['data']}-{r['budget']}-{r['run']}" / "history.json"
        if not history.exists():
            continue
        for h in json.loads(history.read_text()).values():
            val = h.get("val_accuracy") if isinstance(h, dict) else None
            if not val:
                continue
            phases += 1
            if max(val) > val[-1]:
                earlier += 1
                gains.append(100 * (max(val) - val[-1]))
    if not phases:
        return ""
    return (f"Best epoch: in {earlier} of {phases} phases of these runs (the run folders still "
            f"in {work}) an epoch before the last had the best validation accuracy; keeping it "
            f"gained {np.median(gains) if gains else 0:.2f} points of validation accuracy at the "
            f"median, {max(gains) if gains else 0:.2f} at most.\n\n")


def render(results: dict) -> str:
    """The ablation tables, one per data set and budget, as Markdown."""
    lines = [f"Machine: `{results.get('machine', '?')}`. Test-split accuracy (%) after each "
             "phase; seconds of each phase (feature extraction included in frozen).", ""]
    groups = sorted({(r["data"], r["budget"]) for r in results["rows"]})
    order = list(RUNS)
    for data_set, budget in groups:
        rows = sorted((r for r in results["rows"] if (r["data"], r["budget"]) ==
                       (data_set, budget)), key=lambda r: order.index(r["run"]))
        frozen, finetune = BUDGETS[budget]["epochs"]
        limit = BUDGETS[budget]["limit"].get(data_set)
        lines += [f"### {data_set}, budget {budget}: {frozen} + {finetune} epochs, "
                  f"{rows[0]['train_images']:,} training images"
                  + (f" ({limit:,} per class)" if limit else ""), "",
                  "| run | what | frozen | fine-tuned | QAT | frozen s | fine-tune s |",
                  "|---|---|---:|---:|---:|---:|---:|"]

        def pct(v):
            return f"{100 * v:.2f}" if v is not None else "-"

        for r in rows:
            lines.append(f"| {r['run']} | {RUNS[r['run']][1]} | {pct(r['frozen'])} | "
                         f"{pct(r['finetune'])} | {pct(r['qat'])} | {r['frozen_s'] or 0:.0f} | "
                         f"{r['finetune_s'] or 0:.0f} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
