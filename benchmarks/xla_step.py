"""One training step of the fine-tune (float) and QAT models with and without XLA
(``jit_compile``), alternating, on this CPU (issue 39).

    W=../shared/weights/mobilenet_v2_1.0_no_top_stanford_dogs.h5
    python benchmarks/xla_step.py --weights $W

MobileNetV2 1.0 with tledge's head, the whole backbone trainable with BatchNorm frozen (the
default fine-tune), a batch of 32 random images; per setting the first step (tracing and
compilation) and the median of 15 steps after it, each setting measured twice in turn.
"""

from __future__ import annotations

import time

import click
import numpy as np


@click.command()
@click.option("--weights", required=True, help="MobileNetV2 1.0 backbone weights (no top).")
@click.option("--image-size", default=96, show_default=True)
@click.option("--steps", default=15, show_default=True)
def main(weights, image_size, steps):
    import tf_keras as keras

    from tledge.core.config import ModelOptions
    from tledge.models import build_classifier, set_backbone_trainable
    from tledge.training.qat import make_qat_model

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, 10, (32,))
    for which in ("float", "qat"):
        model = build_classifier(ModelOptions(backbone="mobilenet_v2", alpha=1.0,
                                              weights=weights), 10, image_size)
        set_backbone_trainable(model, "all", freeze_batchnorm=True)
        if which == "qat":
            model = make_qat_model(model)
        for jit in (False, True, False, True):
            model.compile(optimizer=keras.optimizers.Adam(1e-4),
                          loss="sparse_categorical_crossentropy", jit_compile=jit)
            start = time.perf_counter()
            model.train_on_batch(x, y)
            first = time.perf_counter() - start
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times.append(time.perf_counter() - start)
            print(f"{which} {image_size}px jit_compile={jit}: first step {first:.1f} s, "
                  f"median step {1000 * np.median(times):.1f} ms", flush=True)


if __name__ == "__main__":
    main()
