"""Where the classify path's time goes beyond bare inference, call by call.

    python benchmarks/classify_path.py MODEL.tflite [--calls 300]

Times, alternately in one loop (so a slow spell of a shared machine lands in all of them):
bare ``invoke()``, the resize of a 640x480 frame followed by ``invoke()``, ``Classifier.scores``
and ``Classifier.classify`` (resize + quantize + invoke + dequantize + top-5), at one thread,
cycling over eight seeded camera-sized frames. Prints p50 of each and its ratio to bare invoke.
"""

from __future__ import annotations

import time

import click
import numpy as np


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--calls", default=300, show_default=True)
def main(model: str, calls: int) -> None:
    from tledge.bench import frames
    from tledge.runtime import Classifier
    from tledge.runtime.preprocess import resize_rgb

    clf = Classifier(model, threads=1)
    size = (clf.height, clf.width)
    pictures = frames(0)
    clf.invoke(clf.preprocess(pictures[0])[None])
    steps = {
        "invoke": lambda i: clf.interpreter.invoke(),
        "resize + invoke": lambda i: (resize_rgb(pictures[i % 8], size),
                                      clf.interpreter.invoke()),
        "scores": lambda i: clf.scores(pictures[i % 8]),
        "classify": lambda i: clf.classify(pictures[i % 8], top_k=5),
    }
    ms: dict = {name: [] for name in steps}
    for i in range(calls + 20):
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            if i >= 20:  # warm-up
                ms[name].append(1000 * (time.perf_counter() - start))
    base = float(np.median(ms["invoke"]))
    for name, values in ms.items():
        p50 = float(np.median(values))
        click.echo(f"{name:<16} p50 {p50:6.3f} ms  {p50 / base:5.2f}x")


if __name__ == "__main__":
    main()
