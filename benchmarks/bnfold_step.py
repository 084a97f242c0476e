"""A fine-tune step with frozen BatchNorm as it is, and folded (tledge.training.bnfold).

    python benchmarks/bnfold_step.py --size 96 --size 224

MobileNetV2 1.0 (random weights, every BatchNorm frozen as in the default fine-tune of a
pretrained backbone), a new 10-class head, batch 32, Adam: 3 warm-up steps each, then 10
rounds of 5 steps of each model, interleaved in one process; prints the median milliseconds a
step and the median of the paired ratios (benchmarks/train_speed.md, "Frozen BatchNorm folded").
"""

from __future__ import annotations

import time

import click
import numpy as np


@click.command()
@click.option("--size", "sizes", type=int, multiple=True, default=(96, 224), show_default=True)
@click.option("--rounds", default=10, show_default=True)
def main(sizes, rounds):
    import tf_keras as keras

    from tledge.training.bnfold import folded

    for size in sizes:
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                              weights=None, alpha=1.0)
        pooled = keras.layers.GlobalAveragePooling2D()(base.output)
        model = keras.Model(base.input, keras.layers.Dense(10)(pooled))
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        twin, said = folded(model)
        x = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
        y = np.arange(32) % 10
        times = {"frozen BatchNorm": [], "folded": []}
        models = {"frozen BatchNorm": model, "folded": twin}
        for m in models.values():
            m.compile(keras.optimizers.Adam(1e-4),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            for _ in range(3):
                m.train_on_batch(x, y)
        for _ in range(rounds):
            for name, m in models.items():
                start = time.perf_counter()
                for _ in range(5):
                    m.train_on_batch(x, y)
                times[name].append((time.perf_counter() - start) / 5 * 1000)
        ratio = np.median(np.array(times["folded"]) / np.array(times["frozen BatchNorm"]))
        print(f"{size} px ({said}): " + ", ".join(
            f"{k} {np.median(v):.0f} ms a step" for k, v in times.items())
            + f"; folded / frozen, paired: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
