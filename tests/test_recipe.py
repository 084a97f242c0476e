"""The recipe's knobs: schedules and warm-up, standardised head features, label smoothing, a
test folder."""

import numpy as np
import pytest
from PIL import Image

from tledge import data
from tledge.core.config import DataOptions, FineTuneHParams, TrainOptions
from tledge.core.errors import TledgeError


def test_defaults_are_the_measured_recipe():
    """benchmarks/recipe.md says why each of these is what it is."""
    from tledge.core.config import RunConfig

    config = RunConfig()
    assert config.data.augment is False
    ft = config.train.finetune
    assert (ft.learning_rate, ft.schedule, ft.warmup, ft.unfreeze) == (1e-4, "cosine", 0.1, "auto")
    assert config.train.label_smoothing == 0.1
    frozen = config.train.frozen
    assert (frozen.learning_rate, frozen.schedule, config.train.feature_norm) == (3e-3, "cosine",
                                                                                 True)
    assert config.train.qat.schedule == "constant"


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup": 1.0}, "--warmup"), ({"warmup": -0.1}, "--warmup")])
def test_bad_warmup_is_refused(kwargs, message):
    with pytest.raises(TledgeError, match=message):
        FineTuneHParams(**kwargs)


def test_bad_label_smoothing_is_refused():
    with pytest.raises(TledgeError, match="--label-smoothing"):
        TrainOptions(label_smoothing=1.0)


@pytest.mark.slow
def test_phase_rate_warms_up_then_decays():
    from tledge.core.config import PhaseHParams
    from tledge.training.fitting import phase_rate

    constant = FineTuneHParams(learning_rate=1e-4, schedule="constant", warmup=0.0)
    assert phase_rate(constant, 100) == 1e-4
    cosine = phase_rate(FineTuneHParams(learning_rate=1e-4, warmup=0.0), 100)
    assert float(cosine(0)) == pytest.approx(1e-4) and float(cosine(100)) == pytest.approx(1e-6)
    warm = phase_rate(FineTuneHParams(learning_rate=1e-4, warmup=0.1), 100)
    rates = [float(warm(s)) for s in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(1e-6) and rates[2] == pytest.approx(1e-4)
    assert rates[0] < rates[1] < rates[2] > rates[3] > rates[4]
    assert rates[4] == pytest.approx(1e-6, rel=0.05)
    flat = phase_rate(FineTuneHParams(learning_rate=1e-4, schedule="constant", warmup=0.2), 100)
    assert float(flat(0)) == pytest.approx(1e-6)
    assert float(flat(20)) == pytest.approx(1e-4) and float(flat(90)) == pytest.approx(1e-4)
    head = phase_rate(PhaseHParams(learning_rate=3e-3), 100)  # phase 1: cosine, no warm-up
    assert float(head(0)) == pytest.approx(3e-3) and float(head(100)) == pytest.approx(3e-5)
    assert phase_rate(PhaseHParams(learning_rate=3e-3, schedule="constant"), 100) == 3e-3
    with pytest.raises(TledgeError, match="--lr-schedule-frozen"):
        PhaseHParams(schedule="step")


def test_feature_statistics_in_chunks_with_a_floor(tmp_path):
    """Mean and standard deviation per feature, the same from memory and from a disk file;
    a feature (nearly) constant on the training split is not divided by (nearly) zero."""
    from tledge.data.cache import DiskArray, RowWriter
    from tledge.training.features import feature_statistics

    rng = np.random.default_rng(0)
    f = rng.normal(2.0, 3.0, (5000, 6)).astype(np.float32)
    f[:, 4] = 1.5  # constant
    f[:, 5] = 1.5 + rng.normal(0, 1e-6, 5000)  # nearly
    mean, std = feature_statistics(f)
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std[:4], f[:, :4].std(0), rtol=1e-4)
    assert np.all(std[4:] >= 0.1 * np.median(f.std(0))), std
    writer = RowWriter(tmp_path / "f.npy", len(f), (6,), np.float32)
    writer.write(f)
    writer.close()
    on_disk = feature_statistics(DiskArray(tmp_path / "f.npy"))
    np.testing.assert_allclose(on_disk[0], mean, rtol=1e-6)
    np.testing.assert_allclose(on_disk[1], std, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("head_units", [0, 8])
def test_standardised_head_is_a_reparametrisation_folded_back_exactly(head_units):
    """Entering leaves the model's function unchanged; what the head learns on standardised
    features is, after the block, the model's own function on raw images; no layer is added."""
    from helpers import tiny_config
    from tledge.models import build_classifier, head_layers
    from tledge.training.features import feature_statistics, head_on_features, standardised_head

    config = tiny_config().override(model={"head_units": head_units})
    model = build_classifier(config.model, 3, 32)
    layers = [layer.name for layer in model.layers]
    x = np.random.default_rng(1).integers(0, 255, (16, 32, 32, 3)).astype(np.float32)
    extractor, _ = head_on_features(model)
    features = extractor(x).numpy()
    mean, std = feature_statistics(features)
    before = model(x).numpy()
    with standardised_head(model, mean, std) as norm:
        _, head = head_on_features(model, norm)
        np.testing.assert_allclose(head(features).numpy(), before, rtol=1e-4, atol=1e-6)
        rng = np.random.default_rng(2)
        for layer in head_layers(model):  # what training would do: new weights
            layer.set_weights([rng.normal(0, 0.3, w.shape) for w in layer.get_weights()])
        learned = head(features).numpy()
    assert not np.allclose(learned, before)
    np.testing.assert_allclose(model(x).numpy(), learned, rtol=1e-4, atol=1e-5)
    assert [layer.name for layer in model.layers] == layers


@pytest.mark.slow
def test_frozen_phase_on_images_uses_sampled_statistics(tiny_splits):
    """With augmentation (no feature cache) phase 1 standardises from a sample of the split;
    the model it leaves has the same layers, and --no-feature-norm trains a different head."""
    from helpers import tiny_config
    from tledge.models import build_classifier
    from tledge.training.distribution import resolve_strategy
    from tledge.training.train import frozen_phase

    heads = []
    for norm in (True, False):
        config = tiny_config().override(data={"augment": True}, train={"feature_norm": norm})
        model = build_classifier(config.model, len(tiny_splits.class_names), 32)
        names = [layer.name for layer in model.layers]
        result = frozen_phase(model, tiny_splits, config, resolve_strategy("none"))
        assert not result.feature_cache and [layer.name for layer in model.layers] == names
        assert np.isfinite(result.val_accuracy)
        heads.append(model.get_layer("predictions").get_weights()[0])
    assert not np.allclose(*heads)


def test_train_flags_for_phase_one(tmp_path, monkeypatch):
    """--lr-schedule-frozen, --no-feature-norm and --batchnorm reach the run's config."""
    import yaml
    from click.testing import CliRunner

    from tledge.training import train as train_mod
    from tledge.cli import main

    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda config, out, **kw: seen.update(config=config))
    monkeypatch.setattr("tledge.cli.require_training_stack", lambda what: None)  # not the subject
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "r"),
                                       "--lr-schedule-frozen", "constant", "--no-feature-norm",
                                       "--batchnorm", "train"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.train.frozen.schedule == "constant" and config.train.feature_norm is False
    assert config.train.finetune.batchnorm == "train"
    saved = yaml.safe_load(config.to_yaml())
    assert saved["train"]["frozen"]["schedule"] == "constant"




@pytest.mark.slow
def test_label_smoothing_is_keras_own_loss_on_one_hot_labels(tmp_path):
    """Smoothing needs one-hot labels (tf_keras' sparse loss has none): the pipeline gives them,
    the loss is Keras' own, and the saved model loads with a plain load_model."""
    import tf_keras as keras

    from tledge.core.config import RunConfig
    from tledge.data.pipeline import batches
    from tledge.training.fitting import classification_loss, compile_model, label_depth

    assert classification_loss(0.0) == "sparse_categorical_crossentropy"
    loss = classification_loss(0.1)
    assert isinstance(loss, keras.losses.CategoricalCrossentropy)
    assert label_depth(RunConfig(), 3) == 3
    assert label_depth(RunConfig().override(train={"label_smoothing": 0.0}), 3) == 0
    x = np.random.default_rng(0).integers(0, 255, (12, 4, 4, 3)).astype(np.uint8)
    y = np.arange(12, dtype=np.int32) % 3
    _, labels = next(iter(batches(x, y, 12, one_hot=3)))
    assert labels.shape == (12, 3) and np.array_equal(np.argmax(labels, 1), y)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    compile_model(model, 1e-2, 0.1)
    model.fit(batches(x, y, 4, one_hot=3), epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")  # compiled, no custom objects
    assert loaded.loss.get_config()["label_smoothing"] == 0.1


def _tree(root, classes, n=4):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                root / c / f"{i}.png")
    return root


def test_test_folder_becomes_the_test_split(tmp_path):
    train = _tree(tmp_path / "train", ["a", "b"])
    test = _tree(tmp_path / "test", ["a", "b"], n=3)
    splits = data.load(DataOptions(source=str(train), image_size=32, test_source=str(test)), 0)
    assert len(splits.test) == 6 and sorted(splits.test.y) == [0, 0, 0, 1, 1, 1]
    other = _tree(tmp_path / "other", ["a", "c"])
    with pytest.raises(TledgeError, match="not the training data's"):
        data.load(DataOptions(source=str(train), image_size=32, test_source=str(other)), 0)
    with pytest.raises(TledgeError, match="brings its own test split"):
        data.load(DataOptions(source="shapes", image_size=32, shapes_per_class=4,
                              test_source=str(test)), 0)


def test_qat_and_train_depend_one_way():
    """train -> qat -> fitting: qat.py never imports tledge.training.train (at any depth of its
    code)."""
    import ast
    from pathlib import Path

    import tledge

    def imported(module: str) -> set:
        tree = ast.parse((Path(tledge.__file__).parent / "training" / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert "tledge.training.train" not in imported("qat")
    assert not {"tledge.training.train", "tledge.training.qat"} & imported("fitting")
    assert "tledge.training.qat" in imported("train")


@pytest.mark.slow
def test_batchnorm_train_updates_the_statistics_of_the_unfrozen_part(tmp_path, tiny_splits):
    """--batchnorm train: a pretrained backbone's BatchNorm layers in the unfrozen part update
    their moving statistics; the frozen part's stay; the default keeps them all."""
    import tf_keras as keras

    from helpers import tiny_config
    from tledge.models import backbone_layers, build_classifier
    from tledge.training.distribution import resolve_strategy
    from tledge.training.train import finetune_phase

    weights = tmp_path / "w.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                   weights=None).save_weights(weights)
    moved = {}
    for mode in ("frozen", "train"):
        config = tiny_config().override(model={"weights": str(weights)},
                                        train={"finetune": {"batchnorm": mode}})
        model = build_classifier(config.model, len(tiny_splits.class_names), 32)
        bns = [layer for layer in backbone_layers(model)
               if isinstance(layer, keras.layers.BatchNormalization)]
        before = [layer.moving_mean.numpy().copy() for layer in bns]
        finetune_phase(model, tiny_splits, config, resolve_strategy("none"))
        moved[mode] = [not np.allclose(b, layer.moving_mean.numpy())
                       for b, layer in zip(before, bns)]
    assert not any(moved["frozen"])
    assert any(moved["train"]) and not all(moved["train"]), "unfreeze 10: only the top BNs"
