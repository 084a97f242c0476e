"""Phase 1 with cached backbone features vs a plain frozen ``fit``: same data, same seed.

    python benchmarks/feature_cache.py --data fashion_mnist --limit 500 --epochs 5 --repeats 3 \
        --weights ../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5

Each repeat times both paths back to back (alternating which goes first), so machine noise hits
both alike; the table gives medians and the per-repeat speed-up. Writes
``benchmarks/results/feature_cache.md`` and ``.json``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import click

from tledge.core.quiet import quiet_tensorflow_logs
quiet_tensorflow_logs()


@click.command()
@click.option("--data", default="fashion_mnist", show_default=True)
@click.option("--image-size", default=96, show_default=True)
@click.option("--limit", default=500, show_default=True, help="Images per class.")
@click.option("--epochs", default=5, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--weights", default="imagenet", show_default=True)
@click.option("--out", default="benchmarks/results/feature_cache", show_default=True,
              help="Path stem of the .md and .json results.")
def main(data, image_size, limit, epochs, repeats, weights, out):
    import tf_keras as keras

    from tledge import data as data_mod
    from tledge.core import fileio
    from tledge.core.config import PhaseHParams, RunConfig
    from tledge.models import build_classifier
    from tledge.training.distribution import resolve_strategy
    from tledge.training.fitting import evaluate_accuracy
    from tledge.training.train import frozen_phase

    config = RunConfig().override(
        data=dict(source=data, image_size=image_size, limit=limit, augment=False),
        model=dict(weights=weights), train=dict(seed=42))
    config = config.override(train=dict(frozen=PhaseHParams(epochs=epochs, learning_rate=1e-3)))
    splits = data_mod.load(config.data, config.train.seed)
    evaluation = splits.test if splits.test is not None else splits.val
    rows = {True: [], False: []}
    for r in range(repeats):
        for cache in ((True, False) if r % 2 == 0 else (False, True)):
            cfg = config.override(train=dict(feature_cache=cache))
            keras.utils.set_random_seed(42)
            model = build_classifier(cfg.model, len(splits.class_names), image_size)
            start = time.perf_counter()
            phase = frozen_phase(model, splits, cfg, resolve_strategy("none"))
            seconds = time.perf_counter() - start
            acc = evaluate_accuracy(model, evaluation, cfg.data.batch_size)
            rows[cache].append({"seconds": seconds, "val_accuracy": phase.val_accuracy,
                                "eval_accuracy": acc})
            click.echo(f"repeat {r + 1}: {'cached' if cache else 'plain '} {seconds:7.1f}s "
                       f"val {phase.val_accuracy:.4f} eval {acc:.4f}")
            keras.backend.clear_session()
    med = {c: {k: statistics.median(x[k] for x in rows[c]) for k in rows[c][0]} for c in rows}
    speedups = [p["seconds"] / c["seconds"] for p, c in zip(rows[False], rows[True])]
    result = {
        "command": "python benchmarks/feature_cache.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in dict(
                data=data, image_size=image_size, limit=limit, epochs=epochs,
                repeats=repeats, weights=weights).items()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"{platform.system()} {platform.release()}",
        "train_images": len(splits.train), "eval_images": len(evaluation),
        "eval_split": "test" if splits.test is not None else "val",
        "cached": rows[True], "plain": rows[False], "median": {str(k): v for k, v in med.items()},
        "speedup_per_repeat": speedups, "speedup_median": statistics.median(speedups),
    }
    fileio.write_json(f"{out}.json", result)
    md = [
        "# Phase 1: cached features vs plain frozen fit", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; {len(splits.train)} training images, {epochs} epochs, "
        f"accuracy on {len(evaluation)} {result['eval_split']} images; medians of {repeats}.", "",
        "| path | seconds (median) | val accuracy | " + result["eval_split"] + " accuracy |",
        "|---|---:|---:|---:|",
    ]
    for cache, name in ((False, "plain frozen fit"), (True, "cached features")):
        m = med[cache]
        md.append(f"| {name} | {m['seconds']:.1f} | {m['val_accuracy']:.4f} | "
                  f"{m['eval_accuracy']:.4f} |")
    md += ["", f"Speed-up, per repeat: {', '.join(f'{s:.2f}x' for s in speedups)}; "
               f"median {result['speedup_median']:.2f}x.", ""]
    fileio.write_text(f"{out}.md", "\n".join(md))
    click.echo("\n".join(md))


if __name__ == "__main__":
    main()
