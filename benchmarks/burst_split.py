"""Validation accuracy with near-duplicate bursts split at random, and kept whole (issue 38).

    apt-get install dataset-fashion-mnist       # Fashion-MNIST, offline
    W=../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5
    python benchmarks/burst_split.py --weights $W

A collected set as ``tledge collect`` writes one (its own Collection code, shots.jsonl with
bursts): four Fashion-MNIST classes that look alike (T-shirt/top, Pullover, Coat, Shirt) are
the objects; a burst photographs one garment (one Fashion-MNIST picture) pasted on a textured
background at a random place, size and brightness, for FRAMES frames that move it by a pixel or
two and add sensor noise, as a held button does. BURSTS bursts a class go into the training
folder, TEST_BURSTS other garments into a test folder. The same training folder trains twice
with the same seed: as collected (each burst on one side of the train/validation split), and
with its manifest removed (frames split at random, siblings on both sides). The validation
accuracy each run reports is set against its test accuracy on the unseen garments: the gap is
what validation overstates. Writes benchmarks/burst_split.md and results/burst_split.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("T-shirt/top", "Pullover", "Coat", "Shirt")


def burst(garment: np.ndarray, rng: np.random.Generator, frames: int) -> list:
    """``frames`` BGR pictures of one garment, 128 px, as a held button takes them."""
    size = int(rng.integers(56, 96))
    x0, y0 = (int(v) for v in rng.integers(0, 128 - size, 2))
    tone = rng.uniform(0.6, 1.2)
    background = rng.integers(40, 200, 3)
    texture = rng.normal(0, 12, (128, 128, 1))
    from PIL import Image

    item = np.asarray(Image.fromarray(garment).resize((size, size)), np.float32) / 255
    shots = []
    for _ in range(frames):
        dx, dy = (int(v) for v in rng.integers(-2, 3, 2))
        canvas = np.clip(background + texture, 0, 255).astype(np.float32) * np.ones((1, 1, 3))
        x, y = min(max(x0 + dx, 0), 128 - size), min(max(y0 + dy, 0), 128 - size)
        patch = canvas[y:y + size, x:x + size]
        canvas[y:y + size, x:x + size] = patch * (1 - item[..., None]) + \
            255 * tone * item[..., None] * np.array([0.9, 0.95, 1.0])
        canvas += rng.normal(0, 6, canvas.shape)
        shots.append(np.clip(canvas, 0, 255).astype(np.uint8))
    return shots


def write_sets(work: Path, bursts: int, test_bursts: int, frames: int, seed: int) -> None:
    from tledge.camera.collect import Collection
    from tledge.data.builtin import CLASS_NAMES, load_raw

    (x, y), _ = load_raw("fashion_mnist")
    rng = np.random.default_rng(seed)
    names = CLASS_NAMES["fashion_mnist"]
    for folder in ("collected", "test"):
        shutil.rmtree(work / folder, ignore_errors=True)
    collected = Collection(work / "collected", [c.replace("/", "_") for c in CLASSES])
    test = Collection(work / "test", [c.replace("/", "_") for c in CLASSES])
    for name in CLASSES:
        pool = rng.permutation(np.flatnonzero(y == names.index(name)))
        label = name.replace("/", "_")
        for i, index in enumerate(pool[:bursts + test_bursts]):
            target = collected if i < bursts else test
            tag = target.new_burst()
            for shot in burst(x[index], rng, frames):
                target.save(label, shot, tag)


def train(work: Path, data: Path, weights: str, out: Path, epochs: str, seed: int) -> dict:
    frozen, finetune = epochs.split(",")
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "tledge.cli", "train", "--data", str(data), "--test-data",
             str(work / "test"), "--image-size", "96", "--weights", weights, "--epochs-frozen",
             frozen, "--epochs-finetune", finetune, "--no-qat", "--val-split", "0.25",
             "--seed", str(seed), "--out", str(out), "--overwrite"],
            stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"tledge train failed: see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics["test_accuracy"],
            "train_images": metrics["train_images"], "val_images": metrics["val_images"]}


@click.command()
@click.option("--weights", required=True, help="MobileNetV2 1.0 backbone weights (no top).")
@click.option("--work", type=click.Path(file_okay=False), default="/tmp/tledge-bursts")
@click.option("--bursts", default=12, show_default=True, help="Bursts a class, to train on.")
@click.option("--test-bursts", default=10, show_default=True, help="Other garments to test.")
@click.option("--frames", default=8, show_default=True, help="Frames a burst.")
@click.option("--epochs", default="5,2", show_default=True, help="frozen,finetune")
@click.option("--seeds", default="0,1", show_default=True)
def main(weights, work, bursts, test_bursts, frames, epochs, seeds):
    work = Path(work)
    write_sets(work, bursts, test_bursts, frames, seed=7)
    random_split = work / "collected-no-manifest"
    shutil.rmtree(random_split, ignore_errors=True)
    shutil.copytree(work / "collected", random_split)
    for manifest in random_split.glob("shots*.jsonl"):
        manifest.unlink()
    rows = []
    for seed in (int(s) for s in seeds.split(",")):
        for split, data in (("bursts kept whole (shots.jsonl)", work / "collected"),
                            ("frames at random (no manifest)", random_split)):
            row = {"split": split, "seed": seed,
                   **train(work, data, str(Path(weights).resolve()),
                           work / f"run-{seed}-{data.name}", epochs, seed)}
            row["overstated"] = row["val_accuracy"] - row["test_accuracy"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_table(rows, bursts, test_bursts, frames, epochs)


def write_table(rows: list, bursts: int, test_bursts: int, frames: int, epochs: str) -> None:
    from tledge.measure.bench import machine_info

    machine = machine_info()[0]["machine_id"]
    lines = ["# Bursts and the validation split", "",
             "`python benchmarks/burst_split.py --weights <offline MobileNetV2 1.0>` on "
             f"{machine}, {time.strftime('%Y-%m-%d')}: {len(CLASSES)} look-alike Fashion-MNIST "
             f"classes ({', '.join(CLASSES)}) as the objects, {bursts} bursts of {frames} "
             "near-duplicate frames a class to train on (one garment a burst, written by tledge "
             "collect's "
             f"own code), {test_bursts} other garments a class as the test set; 96 px, "
             f"epochs frozen,finetune {epochs}, no QAT, 25% validation.", "",
             "| split | seed | validation accuracy | test accuracy (unseen garments) | "
             "validation overstates by |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['seed']} | {100 * r['val_accuracy']:.1f}% | "
                     f"{100 * r['test_accuracy']:.1f}% | {100 * r['overstated']:+.1f} points |")
    means = {}
    for r in rows:
        means.setdefault(r["split"], []).append(r["overstated"])
    lines += [""] + [f"Mean over seeds, {split}: validation overstates test accuracy by "
                     f"{100 * float(np.mean(v)):+.1f} points." for split, v in means.items()]
    (ROOT / "benchmarks" / "burst_split.md").write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "results" / "burst_split.json").write_text(json.dumps(
        {"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
