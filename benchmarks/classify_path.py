"""Where the classify path's time goes beyond bare inference, call by call.

    python benchmarks/classify_path.py MODEL.tflite [--calls 300]

Times, alternately in one loop (so a slow spell of a shared machine lands in all of them):
bare ``invoke()``; the resize of a 640x480 frame followed by ``invoke()``; ``Classifier.scores``
and ``Classifier.classify`` (resize + quantize + invoke + dequantize + top-5) of a frame handed
over as ``tledge bench`` and the camera hand it (just converted from BGR by a capture thread,
not timed); and ``classify`` of a frame read from memory long after it was made (eight seeded
frames in turn, so the resize's read of 0.9 MB comes from DRAM). One thread. Prints p50 of
each and its ratio to bare invoke.
"""

from __future__ import annotations

import time

import click
import numpy as np


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--calls", default=300, show_default=True)
def main(model: str, calls: int) -> None:
    from tledge.measure.bench import Capture, frames
    from tledge.runtime import Classifier
    from tledge.runtime.preprocess import resize_rgb

    clf = Classifier(model, threads=1)
    size = (clf.height, clf.width)
    stored = frames(0)
    clf.invoke(clf.preprocess(stored[0])[None])
    steps = {
        "invoke": lambda frame: clf.interpreter.invoke(),
        "resize + invoke": lambda frame: (resize_rgb(frame, size), clf.interpreter.invoke()),
        "scores": lambda frame: clf.scores(frame),
        "classify": lambda frame: clf.classify(frame, top_k=5),
        "classify, cold": None,  # a stored frame, last read eight calls ago
    }
    ms: dict = {name: [] for name in steps}
    with Capture(frames(1)) as capture:  # other pictures than the stored ones
        for i in range(calls + 20):
            for name, step in steps.items():
                frame = capture(i)  # not timed
                start = time.perf_counter()
                if step is None:
                    clf.classify(stored[i % len(stored)], top_k=5)
                else:
                    step(frame)
                if i >= 20:  # warm-up
                    ms[name].append(1000 * (time.perf_counter() - start))
    base = float(np.median(ms["invoke"]))
    for name, values in ms.items():
        p50 = float(np.median(values))
        click.echo(f"{name:<16} p50 {p50:6.3f} ms  {p50 / base:5.2f}x")


if __name__ == "__main__":
    main()
