"""Phase 1 alone: the head's rate, schedule and feature standardisation, three seeds each, on
backbone features computed once per data set. Each fit is tledge's own ``fit_head`` (what
`tledge train` runs on cached features), so a row costs seconds, not a training run; the
whole-recipe consequences are benchmarks/recipe.py's rows.

    apt-get install dataset-fashion-mnist   # Fashion-MNIST, offline
    pip install scikit-learn                # scikit-learn's digits, offline
    python benchmarks/head_sweep.py \
        --weights ../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5

Data sets and budgets as in recipe.py (fashion S: 1,000 per class, 3 epochs; fashion M: 2,000
per class, 10 epochs; digits: 3 and 10 epochs), 96 px, MobileNetV2 1.0, the split of seed 42;
the seed of each fit sets the head's initialisation and the order of the batches. Writes
benchmarks/results/head_sweep.json and its table into benchmarks/recipe.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks/results/head_sweep.json"
BEGIN, END = "<!-- head sweep: benchmarks/head_sweep.py writes it -->", "<!-- end of head sweep -->"

SETS = {"fashion:S": ("fashion", 1000, 3), "digits:S": ("digits", None, 3),
        "fashion:M": ("fashion", 2000, 10), "digits:M": ("digits", None, 10)}
# name: (phase-1 rate, schedule, standardised features, what it is)
VARIANTS = {
    "before": (1e-3, "constant", False, "constant 1e-3 on raw features (the Keras tutorials; "
               "tledge before)"),
    "raw-3e-3": (3e-3, "constant", False, "constant 3e-3, raw"),
    "raw-cos1e-3": (1e-3, "cosine", False, "cosine from 1e-3, raw"),
    "raw-cos3e-3": (3e-3, "cosine", False, "cosine from 3e-3, raw"),
    "std-3e-3": (3e-3, "constant", True, "constant 3e-3, standardised"),
    "std-cos1e-3": (1e-3, "cosine", True, "cosine from 1e-3, standardised"),
    "now": (3e-3, "cosine", True, "cosine from 3e-3, standardised: the default"),
    "std-cos1e-2": (1e-2, "cosine", True, "cosine from 1e-2, standardised"),
}
SEEDS = (42, 1, 2)


def features(data_set: str, limit, weights: str, work: Path) -> dict:
    """Train/val/test features of one data set through tledge's own loader and model."""
    cache = work / f"features-{data_set}-{limit}.npz"
    if cache.exists():
        return dict(np.load(cache))
    from recipe import digits_folders
    from tledge import data as data_mod
    from tledge.core.config import DataOptions, ModelOptions
    from tledge.data.pipeline import batches
    from tledge.models import build_classifier
    from tledge.training.features import head_on_features

    if data_set == "fashion":
        options = DataOptions(source="fashion_mnist", image_size=96, limit=limit)
    else:
        train, test = digits_folders(work / "digits-data")
        options = DataOptions(source=str(train), image_size=96, test_source=str(test))
    splits = data_mod.load(options, 42)
    model = build_classifier(ModelOptions(weights=weights), len(splits.class_names), 96)
    extractor, _ = head_on_features(model)
    out = {}
    for name in ("train", "val", "test"):
        images = getattr(splits, name)
        out[f"x_{name}"] = extractor.predict(batches(images.x, images.y, 64), verbose=0)
        out[f"y_{name}"] = np.asarray(images.y)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def fit(f: dict, epochs: int, variant: str, seed: int, weights: str) -> float:
    import tf_keras as keras

    from tledge.core.config import RunConfig
    from tledge.models import build_classifier
    from tledge.training.distribution import resolve_strategy
    from tledge.training.features import head_on_features
    from tledge.training.train import fit_head

    rate, schedule, norm, _ = VARIANTS[variant]
    config = RunConfig().override(
        data={"image_size": 96}, model={"weights": weights},
        train={"seed": seed, "feature_norm": norm,
               "frozen": {"epochs": epochs, "learning_rate": rate, "schedule": schedule}})
    keras.utils.set_random_seed(seed)
    model = build_classifier(config.model, int(f["y_train"].max()) + 1, 96)
    fit_head(model, (f["x_train"], f["y_train"]), (f["x_val"], f["y_val"]), config,
             resolve_strategy("none"))
    _, head = head_on_features(model)  # the folded head, on raw features: what is saved
    predicted = np.argmax(head.predict(f["x_test"], batch_size=1024, verbose=0), axis=1)
    return float(np.mean(predicted == f["y_test"]))


@click.command()
@click.option("--weights", required=True, help="The backbone weights.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
@click.option("--sets", default=",".join(SETS), show_default=True)
@click.option("--work", default="/tmp/tledge-recipe", show_default=True)
def main(weights, variants, sets, work):
    from recipe import write_between, write_results

    from tledge.core.quiet import quiet_tensorflow_logs
    quiet_tensorflow_logs()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    from tledge.measure.bench import machine_info

    results["machine"] = machine_info()[0]["machine_id"]
    for pair in sets.split(","):
        data_set, limit, epochs = SETS[pair]
        f = features(data_set, limit, weights, Path(work))
        for variant in variants.split(","):
            start = time.perf_counter()
            accs = [fit(f, epochs, variant, seed, weights) for seed in SEEDS]
            row = {"set": pair, "variant": variant, "test": accs,
                   "seconds": round((time.perf_counter() - start) / len(SEEDS), 1)}
            results["rows"] = [r for r in results["rows"]
                               if (r["set"], r["variant"]) != (pair, variant)] + [row]
            write_results(RESULTS, results)
            click.echo(json.dumps(row))
    write_between(ROOT / "benchmarks/recipe.md", BEGIN, END, render(results))


def render(results: dict) -> str:
    sets = [s for s in SETS if any(r["set"] == s for r in results["rows"])]
    lines = [f"Machine: `{results['machine']}`. Test accuracy (%) after phase 1 alone, mean of "
             f"seeds {', '.join(map(str, SEEDS))} (lowest-highest).", "",
             "| variant | " + " | ".join(f"{s} ({SETS[s][2]} ep)" for s in sets) + " |",
             "|---|" + "---:|" * len(sets)]
    for variant, (*_, what) in VARIANTS.items():
        cells = []
        for s in sets:
            row = next((r for r in results["rows"] if (r["set"], r["variant"]) == (s, variant)),
                       None)
            cells.append("-" if row is None else
                         f"{100 * np.mean(row['test']):.2f} ({100 * min(row['test']):.2f}-"
                         f"{100 * max(row['test']):.2f})")
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
