"""Fine-tune and QAT on the frozen bottom's activations computed once (issue 39): the same model
a plain fit trains, a complete cut (skip connections too), and a plain fit where the bottom
changes."""

import numpy as np
import pytest

from tledge.core.config import QATHParams, RunConfig
from tledge.core.errors import TledgeError
from tledge.training.features import images_only


def test_where_the_cache_cannot_apply_says_why():
    assert images_only(RunConfig(), None) is None
    assert "--augment" in images_only(RunConfig().override(data={"augment": True}), None)
    assert images_only(RunConfig().override(train={"feature_cache": False}), None) == \
        "--no-feature-cache"


@pytest.mark.parametrize("bad", ["a b", "x;y", ""])
def test_bad_unfreeze_qat_is_refused(bad):
    with pytest.raises(TledgeError, match="unfreeze"):
        QATHParams(unfreeze=bad)
    assert QATHParams(unfreeze="finetune").unfreeze == "finetune"


def _tiny_model(config, splits):
    import tf_keras as keras

    from tledge.models import build_classifier

    keras.utils.set_random_seed(config.train.seed)
    return build_classifier(config.model, len(splits.class_names), config.data.image_size)


@pytest.mark.slow
@pytest.mark.parametrize("unfreeze, inputs", [("10", 1), ("block_2_project", 2)])
def test_the_cut_computes_what_the_model_computes(tiny_splits, unfreeze, inputs):
    """Top on bottom is the model: at a block boundary one tensor crosses the cut, inside a
    residual block the skip connection's crosses too."""
    from helpers import tiny_config
    from tledge.training.features import split_at, top_layer_names
    from tledge.models import set_backbone_trainable

    config = tiny_config()
    model = _tiny_model(config, tiny_splits)
    set_backbone_trainable(model, unfreeze, freeze_batchnorm=False)
    bottom, top = split_at(model, top_layer_names(model, unfreeze, "mobilenet_v2"))
    assert len(top.inputs) == inputs
    x = tiny_splits.val.x.astype(np.float32)
    np.testing.assert_allclose(top(bottom(x, training=False), training=False).numpy(),
                               model(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert top.get_layer("predictions") is model.get_layer("predictions")  # shared, not copied
    assert split_at(model, top_layer_names(model, "all", "mobilenet_v2"))[0] is None


@pytest.mark.slow
def test_cached_finetune_trains_the_weights_a_plain_fit_trains(tiny_splits, monkeypatch):
    """One epoch on cached activations and one through the whole network: the same weights.

    (At a cut inside a residual block the two agree to float round-off in the first steps,
    which Adam amplifies on a random tiny model's near-zero gradients: the cut is tested by
    what it computes above.)"""
    from helpers import tiny_config
    from tledge.training import train as train_mod
    from tledge.training.distribution import resolve_strategy
    from tledge.training.train import finetune_phase

    # the cache alone: the plain fit would fold the frozen bottom's BatchNorm, the same model to
    # float round-off (tests/test_bnfold.py), which Adam amplifies on this random tiny model
    monkeypatch.setattr(train_mod, "folded_batchnorm", lambda model, phase: model)
    weights, results = [], []
    for cache in (True, False):
        config = tiny_config().override(train={"feature_cache": cache})
        model = _tiny_model(config, tiny_splits)
        start = model.get_weights()
        results.append(finetune_phase(model, tiny_splits, config, resolve_strategy("none")))
        weights.append(model.get_weights())
    assert [r.feature_cache for r in results] == [True, False]
    assert any(not np.allclose(a, b) for a, b in zip(weights[1], start))  # it learned
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert results[0].history["val_accuracy"] == pytest.approx(
        results[1].history["val_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize("augment", [False, True])
def test_qat_keeps_the_bottom_and_trains_the_top(tmp_path, augment):
    """Below --unfreeze-qat the QAT model keeps its weights (tfmot would train a wrapped
    kernel whatever its layer's trainable flag) and its calibrated ranges; the top adapts.
    Without augmentation on cached activations, with it through the bottom every step."""
    import tf_keras as keras

    from helpers import colour_splits, small_classifier, tiny_config
    from tledge.training.distribution import resolve_strategy
    from tledge.training.qat import qat_phase

    keras.utils.set_random_seed(0)
    splits = colour_splits()
    model = small_classifier()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(splits.train.x.astype(np.float32), splits.train.y, epochs=5, verbose=0)
    qat = QATHParams(epochs=1, learning_rate=1e-3, unfreeze="finetune")
    config = tiny_config(qat=qat).override(
        data={"augment": augment, "image_size": splits.train.x.shape[1]},
        train={"finetune": {"unfreeze": "3"}})  # the second convolution on

    def kernel(qat_model, name):
        layer = qat_model.get_layer(f"quant_{name}")
        return next(w for w in layer.weights if "kernel" in w.name).numpy().copy()

    bottom_conv = next(layer for layer in model.layers  # Keras numbers the names per process
                       if isinstance(layer, keras.layers.Conv2D))
    first = bottom_conv.get_weights()[0]
    phase, qat_model = qat_phase(model, splits, config, resolve_strategy("none"), tmp_path)
    assert phase.feature_cache is (not augment)
    # the second convolution's kernel, its BatchNorm's gamma and beta (a random backbone's train),
    # predictions' kernel and bias
    assert phase.trainable_weights == 5
    np.testing.assert_array_equal(kernel(qat_model, bottom_conv.name), first)
    assert not np.allclose(kernel(qat_model, "predictions"),
                           model.get_layer("predictions").get_weights()[0])
    assert (tmp_path / "model_qat.h5").is_file()
