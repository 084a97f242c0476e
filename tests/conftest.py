import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from tledge.config import (DataOptions, FineTuneHParams, ModelOptions, PhaseHParams, QATHParams,
                           RunConfig, TrainOptions)

SIZE = 32


def tiny_config(**train_overrides) -> RunConfig:
    """A MobileNetV2 0.35 at 32x32 with random weights: seconds per phase on a CPU."""
    train = dict(frozen=PhaseHParams(epochs=1, learning_rate=1e-2),
                 finetune=FineTuneHParams(epochs=1, learning_rate=1e-3, unfreeze="10"),
                 qat=QATHParams(enabled=False), seed=1)
    train.update(train_overrides)
    return RunConfig(
        data=DataOptions(source="shapes", image_size=SIZE, augment=False, batch_size=16,
                         shapes_per_class=8),
        model=ModelOptions(backbone="mobilenet_v2", alpha=0.35, weights="none", dropout=0.0),
        train=TrainOptions(**train))


@pytest.fixture(scope="session")
def tiny_splits():
    from tledge import data
    return data.load(tiny_config().data, seed=1)


def image_grid(rng: np.random.Generator, n: int, size: int = SIZE) -> np.ndarray:
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
