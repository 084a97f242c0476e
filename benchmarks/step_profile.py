"""Where one training step's time goes, fine-tune against QAT (issue 39).

    python benchmarks/step_profile.py [--image-size 96] [--batch-size 32]

MobileNetV2 1.0 as the default recipe trains it (every layer's weights trainable, BatchNorm
frozen; random weights: the time does not depend on them), on random images; the QAT model is
tledge's own (``make_qat_model``). Each model's step is timed (5 x 10 steps, after 3 to trace),
then 10 steps run under TensorFlow's profiler and its op times are summed by kind. Op times
overlap (TensorFlow runs independent ops on both cores), so they add up to more than the wall
time. Prints a Markdown table.
"""

from __future__ import annotations

import collections
import glob
import os
import shutil
import tempfile
import time

import click
import numpy as np

GROUPS = [("convolution", ("Conv2D",)), ("depthwise convolution", ("Depthwise",)),
          ("BatchNorm", ("BatchNorm",)), ("fake quantization", ("FakeQuant",)),
          ("range tracking (min, max, moving average)", ("Min", "Max", "Assign")),
          ("ReLU6", ("Relu6",))]
NOT_OPS = ("Process", "Run", "MakeIterator")  # the profiler's outer events


def _group(op: str) -> str:
    return next((name for name, keys in GROUPS if any(k in op for k in keys)), "other")


def _profile(model, size: int, batch: int, steps: int = 10) -> tuple:
    """((median, fastest) wall ms a step, {group: op ms a step}, {op: ms a step} of 'other')."""
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    x = np.random.default_rng(0).random((batch * steps, size, size, 3), np.float32)
    y = keras.utils.to_categorical(np.arange(batch * steps) % 10, 10)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    model.fit(ds.take(3), verbose=0)
    walls = []
    for _ in range(5):
        start = time.perf_counter()
        model.fit(ds, verbose=0)
        walls.append(1000 * (time.perf_counter() - start) / steps)
    logdir = tempfile.mkdtemp(prefix="tledge-profile-")
    try:
        tf.profiler.experimental.start(logdir)
        model.fit(ds, verbose=0)
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        path = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    groups, other = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                op = name.split(":")[-1].strip()
                if ":" not in name or op in NOT_OPS or op.startswith("__"):
                    continue
                ms = event.duration_ps / 1e9 / steps
                groups[_group(op)] += ms
                if _group(op) == "other":
                    other[op] += ms
    return (float(np.median(walls)), min(walls)), groups, other


@click.command()
@click.option("--image-size", default=96, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
def main(image_size, batch_size):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_keras as keras

    from tledge.core.config import ModelOptions
    from tledge.measure.bench import machine_info
    from tledge.models import build_classifier, set_backbone_trainable
    from tledge.training.qat import make_qat_model

    model = build_classifier(ModelOptions(backbone="mobilenet_v2", alpha=1.0, weights="none"),
                             10, image_size)
    set_backbone_trainable(model, "all", freeze_batchnorm=True, backbone="mobilenet_v2")
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    model.compile(keras.optimizers.Adam(1e-4), loss)
    finetune = _profile(model, image_size, batch_size)
    qat_model = make_qat_model(model)
    qat_model.compile(keras.optimizers.Adam(1e-5), loss)
    qat = _profile(qat_model, image_size, batch_size)
    print(f"{machine_info()[0]['machine_id']}, MobileNetV2 1.0 at {image_size} px, batch "
          f"{batch_size}: op time a step by kind")
    print("\n| op kind | fine-tune, ms | share | QAT, ms | share |\n|---|---:|---:|---:|---:|")
    totals = [sum(finetune[1].values()), sum(qat[1].values())]
    for name in [g for g, _ in GROUPS] + ["other"]:
        a, b = finetune[1][name], qat[1][name]
        print(f"| {name} | {a:.0f} | {100 * a / totals[0]:.0f}% | {b:.0f} | "
              f"{100 * b / totals[1]:.0f}% |")
    print(f"| **op time, all** | {totals[0]:.0f} | | {totals[1]:.0f} | |")
    print(f"| **wall time a step: median (fastest) of 5 x 10 steps** | {finetune[0][0]:.0f} "
          f"({finetune[0][1]:.0f}) | | {qat[0][0]:.0f} ({qat[0][1]:.0f}) | |")
    print("\nlargest 'other' ops in QAT: " + ", ".join(
        f"{op} {ms:.1f} ms" for op, ms in qat[2].most_common(5)))


if __name__ == "__main__":
    main()
