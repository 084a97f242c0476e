"""``tledge tune``: registered on the ``tledge`` group by tledge.cli; TensorFlow loads only when
a candidate is built or trained."""

from __future__ import annotations

from pathlib import Path

import click

from tledge.core import fileio


@click.command(short_help="The most accurate model within a latency budget, timed on the device.")
@click.option("--data", required=True,
              help="A folder with one subfolder per class, or cifar10 / fashion_mnist / shapes.")
@click.option("--max-latency-ms", type=float, required=True,
              help="The budget: p50 of the int8 file's classify path (frame in, top-k out).")
@click.option("--on", metavar="[USER@]HOST[:DIR]",
              help="Time the candidates on this device over SSH (one deploy, one session).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interpreter threads the latency is measured at.")
@click.option("--time-budget", default="30m", show_default=True,
              help="The whole tune's time: 30m, 2h, 1h30m, 900s (a bare number is minutes).")
@click.option("--out", type=click.Path(file_okay=False), default="models/tune",
              show_default=True, help="The tune's folder; a tune run again into it goes on.")
@click.option("--space", type=click.Path(dir_okay=False),
              help="YAML: candidates: [{backbone: mobilenet_v2, alpha: [0.35, 1.0], "
                   "image_size: [96, 160]}, ...].  [default: MobileNetV2 0.35-1.0, "
                   "MobileNetV3 Small/Large (+ minimalistic), EfficientNet-Lite0; 96-224 px]")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet, none, or a weights file: each candidate it fits starts from it, "
                   "the others from random weights (said in the table).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N images per class.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Epochs per phase in the first round of training; each round doubles them.")
@click.option("--runs", type=click.IntRange(min=3), default=30, show_default=True,
              help="Timed inferences per candidate.")
def tune(data, max_latency_ms, on, threads, time_budget, out, space, weights, limit, epochs,
         runs):
    """Find the most accurate model that meets a latency budget on your device.

    Every candidate's int8 file is built and timed first (latency does not depend on the
    weights), here or on --on HOST; those over the budget are dropped with their figure. The
    rest train briefly, and the better half again for twice as long, until one is left or the
    time budget is spent. Writes tune.json (every figure; a tune run again goes on from it),
    tune.md, tune.png (accuracy against latency, the budget, the Pareto front) and best.yaml.

    \b
    tledge tune --data ~/pictures/flowers --max-latency-ms 50 --on pi@raspberrypi.local
    tledge train --config models/tune/best.yaml --data ~/pictures/flowers
    """
    from tledge.tune.search import TuneOptions, parse_duration, tune as run_tune

    if on:
        from tledge.device.ssh import Target
        Target.parse(on)  # a bad host or folder is one line before any work
    fileio.check_output_dir(Path(out), "--out")
    options = TuneOptions(data=data, max_latency_ms=max_latency_ms, out=Path(out), on=on,
                          threads=threads, time_budget_s=parse_duration(time_budget),
                          space=Path(space) if space else None, weights=weights, limit=limit,
                          epochs=epochs, runs=runs)
    from tledge.tune.space import load_space
    load_space(options.space)  # a bad space is one line before TensorFlow loads
    from tledge.tune.stages import num_classes
    num_classes(data)  # a missing folder, or one class only, before any work
    from tledge.core.errors import require_training_stack
    require_training_stack("tledge tune (it builds and trains candidates)")
    try:
        run_tune(options, echo=click.echo)
    except KeyboardInterrupt:
        click.echo(f"tune interrupted: what it found is in {out}/tune.json; run the same "
                   "command again to go on", err=True)
        raise
