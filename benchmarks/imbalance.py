"""An imbalanced folder of Fashion-MNIST pictures, trained with and without class weights, the
shipped int8 file evaluated on the official balanced test split (issue 36).

    apt-get install dataset-fashion-mnist       # Fashion-MNIST, offline
    python benchmarks/imbalance.py \
        --weights ../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5

The folder: COMMON images of each of seven classes and COMMON / 10 of three rare ones (shirt,
pullover, coat: the classes Fashion-MNIST confuses most), written once as PNG files under
--work. Each mode (``--class-weight auto``, the default, ``balanced`` and ``none``) is a fresh
``tledge train`` (96 px, MobileNetV2 1.0 from --weights, the default recipe: its epochs unless
--epochs gives others), ``tledge export --int8``, and ``tledge evaluate`` of model_int8.tflite on
the 10,000 test images; benchmarks/imbalance.md has a table per epoch budget, written from their
evaluation.json files.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RARE = ("Shirt", "Pullover", "Coat")


def write_folder(folder: Path, common: int, seed: int = 0, train_dir: str = "data",
                 rare_share: float = 0.1) -> dict:
    """The imbalanced class-per-folder tree of training pictures, and the official test split
    as a folder beside it (folder names: the class names with "/" as "_"); returns the
    training images per class."""
    from PIL import Image

    from tledge.data.builtin import CLASS_NAMES, load_raw

    (x, y), (x_test, y_test) = load_raw("fashion_mnist")
    rng = np.random.default_rng(seed)
    counts = {}
    for label, name in enumerate(CLASS_NAMES["fashion_mnist"]):
        n = int(common * rare_share) if name in RARE else common
        for root, images, keep in (
                (folder / train_dir, x, rng.permutation(np.flatnonzero(y == label))[:n]),
                (folder / "test", x_test, np.flatnonzero(y_test == label))):
            target = root / name.replace("/", "_")
            target.mkdir(parents=True, exist_ok=True)
            for i in keep:
                path = target / f"{i:05d}.png"
                if not path.exists():
                    Image.fromarray(images[i]).save(path)
        counts[name] = n
    return counts


def run(args: list, log: Path) -> float:
    start = time.monotonic()
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", "tledge.cli", *args], stdout=f,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"tledge {args[0]} failed: see {log}")
    return time.monotonic() - start


def default_epochs() -> str:
    """tledge train's own epochs, frozen,finetune,qat."""
    from tledge.core.config import RunConfig

    t = RunConfig().train
    return f"{t.frozen.epochs},{t.finetune.epochs},{t.qat.epochs}"


def row_key(mode: str, seed: int, epochs: str) -> str:
    return f"{mode}@{seed}/{epochs}"


@click.command()
@click.option("--weights", required=True, help="MobileNetV2 1.0 backbone weights (no top).")
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/tledge-imbalance")
@click.option("--common", default=300, show_default=True, help="Images of a common class.")
@click.option("--epochs", default=None, help="frozen,finetune,qat  [default: tledge train's]")
@click.option("--modes", default="auto,balanced,none", show_default=True,
              help="Which rows to train (auto, balanced, none, ceiling: the same classes "
                   "balanced, all at --common); the others are kept from results/imbalance.json; "
                   "'' writes the tables again.")
@click.option("--seed", default=42, show_default=True,
              help="tledge train --seed (42: its default); each seed's rows are kept apart.")
def main(weights, work, common, epochs, modes, seed):
    work = Path(work)
    epochs = epochs or default_epochs()
    frozen, finetune, qat = epochs.split(",")
    counts = write_folder(work, common)
    saved = ROOT / "benchmarks" / "results" / "imbalance.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else {}
    unknown = set(filter(None, modes.split(","))) - set(RUNNABLE)
    if unknown:
        raise SystemExit(f"--modes: {', '.join(sorted(unknown))} not one of {', '.join(RUNNABLE)}")
    for mode in filter(None, modes.split(",")):  # none: the table written again
        key = row_key(mode, seed, epochs)
        name = f"{mode}@{seed}-{epochs.replace(',', '-')}"
        out, log = work / f"run-{name}", work / f"{name}.log"
        log.unlink(missing_ok=True)
        data = work / "data"
        if mode == "ceiling":  # what the same recipe reaches when the rare classes are not rare
            write_folder(work, common, train_dir="data-balanced", rare_share=1.0)
            data = work / "data-balanced"
        seconds = run(["train", "--data", str(data), "--image-size", "96",
                       "--weights", weights, "--epochs-frozen", frozen, "--epochs-finetune",
                       finetune, "--epochs-qat", qat, "--class-weight",
                       "auto" if mode == "ceiling" else mode, "--seed", str(seed),
                       "--out", str(out), "--overwrite"], log)
        run(["export", str(out), "--int8", "--overwrite"], log)
        report_dir = work / f"eval-{name}"
        run(["evaluate", str(out / "export" / "model_int8.tflite"), "--data", str(work / "test"),
             "--out", str(report_dir), "--overwrite"], log)
        report = json.loads((report_dir / "evaluation.json").read_text())
        recall = {r["label"]: r["recall"] for r in report["per_class"]}
        metrics = json.loads((out / "metrics.json").read_text())
        rows[key] = {"mode": mode, "seed": seed, "epochs": epochs,
                     "accuracy": report["accuracy"],
                     "balanced_accuracy": report["balanced_accuracy"],
                     "macro_f1": report["macro_f1"],
                     "rare_recall": float(np.mean([recall[c] for c in RARE])),
                     "common_recall": float(np.mean([v for k, v in recall.items()
                                                     if k not in RARE])),
                     "rare": {c: recall[c] for c in RARE}, "kept_phase": metrics["kept_phase"],
                     "train_seconds": round(seconds, 1),
                     "finetune_worse_p": metrics["phases"].get("finetune", {}).get("worse_p")}
        print(key, json.dumps(rows[key]), flush=True)
    write_table(rows, counts, common)


MODES = ("auto", "sqrt", "balanced", "none", "ceiling")
# sqrt: the square root of balanced's weights in every phase, which was --class-weight auto
# until 4e2fd1b; its rows are kept for the comparison and cannot be run again by this script.
RUNNABLE = ("auto", "balanced", "none", "ceiling")


def budget_lines(rows: list, common: int, epochs: str, default: bool) -> list:
    """One epoch budget's table and its comparisons with ``none``, seed by seed."""
    lines = [f"## Epochs frozen,finetune,qat {epochs}"
             + (" (tledge train's defaults)" if default else ""), "",
             "| `--class-weight` | seed | test accuracy | balanced accuracy | macro F1 | rare "
             "classes' mean recall | " + " | ".join(f"{c} recall" for c in RARE)
             + " | common classes' mean recall | phase kept | train s |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(RARE) + "---:|---|---:|"]
    names = {"auto": "auto (default: square-root weights, full in QAT)",
             "sqrt": "square-root weights in every phase (auto until 4e2fd1b)",
             "balanced": "balanced (full weights)",
             "ceiling": f"ceiling: a balanced folder ({common} of every class)"}
    for r in sorted(rows, key=lambda r: (r["seed"] != 42, r["seed"], MODES.index(r["mode"]))):
        lines.append(f"| {names.get(r['mode'], r['mode'])} | {r['seed']} | "
                     f"{100 * r['accuracy']:.2f}% | {100 * r['balanced_accuracy']:.2f}% | "
                     f"{r['macro_f1']:.4f} | {100 * r['rare_recall']:.1f}% | "
                     + " | ".join(f"{100 * r['rare'][c]:.1f}%" for c in RARE)
                     + f" | {100 * r['common_recall']:.1f}% | {r['kept_phase']} | "
                     f"{r['train_seconds']:.0f} |")
    by = {(r["mode"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    for mode in ("auto", "sqrt", "balanced"):
        pairs = [(by[mode, s], by["none", s]) for s in seeds
                 if (mode, s) in by and ("none", s) in by]
        if not pairs:
            continue
        acc = [100 * (x["accuracy"] - y["accuracy"]) for x, y in pairs]
        rare = [100 * (x["rare_recall"] - y["rare_recall"]) for x, y in pairs]
        what = {"auto": "`--class-weight auto` (the default)",
                "sqrt": "Square-root weights in every phase"}.get(mode, f"`--class-weight {mode}`")
        listed = ", ".join(str(s) for s in seeds)
        lines += ["", f"{what} against `none`, seed by seed ({listed}): test "
                  f"accuracy {', '.join(f'{d:+.2f}' for d in acc)} points (mean "
                  f"{np.mean(acc):+.2f}), the rare classes' mean recall "
                  f"{', '.join(f'{d:+.1f}' for d in rare)} points (mean {np.mean(rare):+.1f})."]
    judged = [r for r in rows if r.get("finetune_worse_p") is not None]
    if judged:
        lines += ["", "Fine-tune ended below the frozen phase on validation in " + "; ".join(
            f"{r['mode']}, seed {r['seed']} (p = {r['finetune_worse_p']:.2f}: "
            + ("within chance, kept" if r["finetune_worse_p"] >= 0.05 else "beyond chance, the "
               "frozen phase kept") + ")" for r in judged)
            + ": the paired test of README's phase rule on 219 validation images, 3 of each "
            "rare class."]
    if ("ceiling", 42) in by and ("none", 42) in by:
        lines += ["", f"The ceiling row is the same recipe on a balanced folder ({common} Shirt, "
                  f"Pullover, Coat pictures instead of {int(common * 0.1)}): the imbalance costs "
                  f"{100 * (by['ceiling', 42]['accuracy'] - by['none', 42]['accuracy']):.2f} "
                  "points of test accuracy without class weights (seed 42)."]
    return lines + [""]


def write_table(rows: dict, counts: dict, common: int) -> None:
    from tledge.measure.bench import machine_info

    machine = machine_info()[0]["machine_id"]
    default = default_epochs()
    budgets = sorted({r["epochs"] for r in rows.values()}, key=lambda e: e != default)
    lines = [
        "# Imbalanced folders: class weights and balanced accuracy",
        "",
        f"`python benchmarks/imbalance.py --weights <offline MobileNetV2 1.0> [--epochs F,T,Q] "
        f"[--seed S]` on {machine} ({platform.python_version()}), {time.strftime('%Y-%m-%d')}: a "
        f"folder of Fashion-MNIST pictures, {common} of each of seven classes and {common // 10} "
        f"of each of {', '.join(RARE)} ({sum(counts.values())} images, 10x fewer for the rare "
        "ones), 96 px, the default recipe; `model_int8.tflite` (from QAT) evaluated on the "
        "official 10,000-image test split (1,000 a class: balanced). train s: the wall time of "
        "`tledge train`, other work running beside some: not a timing.",
        "",
        "The test split is balanced, so accuracy there is what a model that meets every class "
        "equally often scores; the validation split has the folder's imbalance, which is why "
        "balanced accuracy picks the kept epochs. `auto` weighs each class's loss by the square "
        "root of `balanced`'s weight n / (classes x its images) in the float phases and by "
        "that weight itself in QAT.",
        "",
    ]
    for epochs in budgets:
        lines += budget_lines([r for r in rows.values() if r["epochs"] == epochs], common,
                              epochs, epochs == default)
    lines += ["## What the tables say", "", *NOTES, ""]
    (ROOT / "benchmarks" / "imbalance.md").write_text("\n".join(lines))
    (ROOT / "benchmarks" / "results" / "imbalance.json").write_text(json.dumps(
        {"machine": machine, "common": common, "rows": rows}, indent=1))


# Hand-written: what the runs above do not show by themselves (kept when the tables are
# written again).
NOTES = [
    "- **The issue's targets at tledge's defaults: the rare classes' recall met, test accuracy "
    "not.** Three seeds of the default epochs, `auto` against `none`: +1.01 points of test "
    "accuracy (target +2) and +5.1 of the rare classes' recall (target +5). The seeds spread "
    "as much as the modes differ: `none` alone scores 82.15-82.44%, `auto` 82.41-83.85%.",
    "- **Why `auto` is the square root, then full weights in QAT.** Deferred re-weighting (Cao "
    "et al., NeurIPS 2019): the features are learnt under mild weights and the last phase, "
    "whose model ships, moves the boundaries with the full ones. Against the square root in "
    "every phase (`auto` until 4e2fd1b), over the five seed-and-budget pairs above: the rare "
    "classes' recall higher in all five (+0.1 to +3.8 points, mean +1.8), test accuracy "
    "-0.09 to +0.64 (mean +0.19). Against full weights in every phase (`balanced`): test "
    "accuracy higher in four of five (mean +0.60), the rare classes' recall lower in four "
    "(mean -1.5), the common classes' recall higher in all five: full weights throughout buy "
    "the rare classes with more of the common ones. At the longer default budget the square "
    "root in every phase moved less than at 3 fine-tune epochs and 1 of QAT (rare recall +3.5 "
    "against +5.2): a class weight's pull fades as the network comes to fit its training "
    "images, as importance weighting does in deep networks generally (Byrd and Lipton, ICML "
    "2019), which is why the full weights come in the last phase.",
    "- **Tried, not adopted** (throwaway changes not kept in the code; test accuracy of the int8 "
    "file unless said). No weights before QAT and full weights in it (the textbook deferred "
    "re-weighting), the defaults: 83.35%, 82.55%, 82.68% (seeds 42, 1, 2; mean +0.53 over "
    "`none`, rare recall +3.0), below `auto`. The logit-adjusted loss (Menon et al., ICLR "
    "2021: cross-entropy on the logits plus tau x log prior, tau 1, in every phase, no class "
    "weights): 82.32% and 82.05% (seeds 42, 1) at 5,3,1, 82.28% and 82.77% at the defaults: "
    "the rare classes' recall +6 to +11 points over `none`, test accuracy -0.16 to +0.91, "
    "below the square root's in all four; with the head's free bias this loss is the plain "
    "one with the bias shifted by tau x log prior, so it is close to adjusting after training, "
    "tried too: post-hoc logit adjustment of the unweighted run at best 82.42% (5,3,1, QAT "
    "model in float, tau 0.75 picked on the test split itself, so optimistic: +0.74 on that "
    "model), on the weighted run only lower. At 5,3,1, seed 42: balanced sampling in place of "
    "class weights (each epoch as many images, drawn class-balanced) 81.64% (seed 1: 81.75%); "
    "`--augment` with full class weights 79.32%; the head re-fitted class-balanced on the "
    "fine-tuned backbone's features 82.00% (float). None reaches +2 points over `none`.",
    "- **The gap is pictures.** The ceiling rows train the same recipe on 300 Shirt, Pullover "
    "and Coat pictures instead of 30. Class weights move the boundary between the rare classes "
    "and their neighbours; they add nothing of what the missing pictures would teach, and the "
    "rare classes here are the three the others are mistaken for most.",
]


if __name__ == "__main__":
    main()
