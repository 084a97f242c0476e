"""The recipe on a tiny MobileNetV2 (alpha 0.35, 32x32, random weights) and generated shapes."""

import json

import numpy as np
import pytest
import yaml

from helpers import keras, tiny_config
from tledge.core import rundir
from tledge.core.config import PhaseHParams
from tledge.core.errors import TledgeError
from tledge.models import backbone_layers, build_classifier, head_layers
from tledge.training.distribution import resolve_strategy
from tledge.training.train import Interrupted, finetune_phase, frozen_phase, train

pytestmark = pytest.mark.slow


def _weights(layers):
    return {w.name: w.numpy().copy() for layer in layers for w in layer.weights}


def _model(config, splits):
    keras.utils.set_random_seed(config.train.seed)
    return build_classifier(config.model, len(splits.class_names), config.data.image_size)


@pytest.mark.parametrize("augment", [False, True])
def test_frozen_phase_changes_only_the_head(tiny_splits, augment):
    config = tiny_config().override(data={"augment": augment})
    model = _model(config, tiny_splits)
    before_backbone = _weights(backbone_layers(model))
    before_head = _weights(head_layers(model))
    result = frozen_phase(model, tiny_splits, config, resolve_strategy("none"))
    assert result.feature_cache is (not augment)
    for name, value in _weights(backbone_layers(model)).items():
        np.testing.assert_array_equal(value, before_backbone[name], err_msg=name)
    assert any(not np.array_equal(v, before_head[k])
               for k, v in _weights(head_layers(model)).items())


@pytest.fixture(scope="module")
def backbone_weights_file(tmp_path_factory):
    """A weights file for the tiny backbone: the code path of a pretrained backbone (BatchNorm
    kept frozen) without downloading anything."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_0.35_no_top.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False,
                                   weights=None).save_weights(path)
    return str(path)


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_finetune_changes_only_unfrozen_layers_and_keeps_batchnorm_statistics(
        tiny_splits, backbone_weights_file, schedule, monkeypatch):
    from tledge.training import train as train_mod
    from tledge.training.fitting import compile_model

    config = tiny_config().override(data={"augment": True},
                                    model={"weights": backbone_weights_file},
                                    train={"finetune": {"schedule": schedule}})
    model = _model(config, tiny_splits)
    layers = backbone_layers(model)
    before = _weights(layers)
    compiled = []  # the model fit: its twin with the frozen BatchNorm folded (bnfold)
    monkeypatch.setattr(train_mod, "compile_model", lambda m, *a: compiled.append(m) or
                        compile_model(m, *a))
    finetune_phase(model, tiny_splits, config, resolve_strategy("none"))
    after = _weights(layers)
    top = {w.name for layer in layers[-10:] for w in layer.weights
           if not isinstance(layer, keras.layers.BatchNormalization)}
    assert top, "the top 10 layers hold weights"
    changed = {name for name in before if not np.array_equal(before[name], after[name])}
    assert changed and changed <= top, f"frozen weights moved: {sorted(changed - top)[:5]}"
    bn_stats = [w.name for layer in layers if isinstance(layer, keras.layers.BatchNormalization)
                for w in layer.weights if "moving" in w.name]
    assert bn_stats and not changed.intersection(bn_stats)
    # The rate of the phase's last step: cosine decays towards 1% of the phase's rate,
    # lr(t) = 1e-3 * (0.01 + 0.99 * (1 + cos(pi * t / n)) / 2) for step t of n.
    n = -(-len(tiny_splits.train) // config.data.batch_size)
    cosine = 1e-3 * (0.01 + 0.99 * (1 + np.cos(np.pi * (n - 1) / n)) / 2)
    assert compiled[0].name.endswith("_bnfold")
    final_lr = float(compiled[0].optimizer.learning_rate.numpy())
    assert final_lr == pytest.approx(cosine if schedule == "cosine" else 1e-3, rel=1e-3)


def test_feature_cache_gives_the_same_head_as_a_plain_fit(tiny_splits):
    """The bottleneck trick is an optimisation, not a different model: the same predictions.

    Compared by what the models compute, not weight by weight: a random backbone's features
    vary little, so the head's first layer, which has the features' standardisation folded
    in (1/std), holds weights of ~1e5 whose last digits follow the order of float sums (the two
    paths add in different orders), while the function they compute agrees."""
    config = tiny_config(frozen=PhaseHParams(epochs=3, learning_rate=1e-2))
    x = tiny_splits.val.x.astype(np.float32)
    predictions = []
    for cache in (True, False):
        cfg = config.override(train={"feature_cache": cache})
        model = _model(cfg, tiny_splits)
        before = model(x, training=False).numpy()
        result = frozen_phase(model, tiny_splits, cfg, resolve_strategy("none"))
        assert result.feature_cache is cache
        predictions.append(model(x, training=False).numpy())
        assert np.abs(predictions[-1] - before).max() > 0.05  # the head did learn
    np.testing.assert_allclose(predictions[0], predictions[1], atol=2e-3)


@pytest.fixture(scope="module")
def tiny_run(tiny_splits, tmp_path_factory):
    """One run of tiny_config() (frozen, fine-tune) that several tests read; copy it to change
    it."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return out, train(tiny_config(), out, splits=tiny_splits, echo=lambda s: None)


def test_run_folder_contents_and_refusal_to_overwrite(tiny_splits, tiny_run):
    out, result = tiny_run
    config = tiny_config()
    for name in (rundir.CONFIG, rundir.LABELS, rundir.HISTORY, rundir.CURVES,
                 rundir.FLOAT_MODEL, rundir.METRICS):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    assert (out / rundir.LABELS).read_text().split("\n")[:2] == ["circle", "square"]
    saved = yaml.safe_load((out / rundir.CONFIG).read_text())
    assert saved["model"]["alpha"] == 0.35 and saved["train"]["finetune"]["unfreeze"] == "10"
    history = json.loads((out / rundir.HISTORY).read_text())
    assert set(history) == {"frozen", "finetune"}
    assert len(history["frozen"]["val_accuracy"]) == 1 and history["frozen"]["feature_cache"]
    metrics = json.loads((out / rundir.METRICS).read_text())
    assert metrics["status"] == "complete" and metrics["phases_completed"] == ["frozen", "finetune"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["test_images"] == 48
    assert (out / rundir.CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded = keras.models.load_model(out / rundir.FLOAT_MODEL)
    x = tiny_splits.val.x[:4].astype(np.float32)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)

    stamp = (out / rundir.FLOAT_MODEL).stat().st_mtime_ns
    with pytest.raises(TledgeError, match="already holds a run.*--overwrite"):
        train(config, out, splits=tiny_splits, echo=lambda s: None)
    assert (out / rundir.FLOAT_MODEL).stat().st_mtime_ns == stamp


def test_zero_epoch_phase_is_skipped(tiny_splits, tmp_path):
    config = tiny_config(frozen=PhaseHParams(epochs=0))
    lines = []
    train(config, tmp_path / "r", splits=tiny_splits, echo=lines.append)
    assert any("phase frozen: skipped" in line for line in lines)
    history = json.loads((tmp_path / "r" / rundir.HISTORY).read_text())
    assert list(history) == ["finetune"]


def test_random_backbone_trains_its_batchnorm_in_finetune(tiny_splits):
    """From random weights there are no statistics to keep: BatchNorm must learn them."""
    config = tiny_config()
    model = _model(config, tiny_splits)
    finetune_phase(model, tiny_splits, config, resolve_strategy("none"))
    bn = [layer for layer in backbone_layers(model)[-10:]
          if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.trainable and layer.momentum == 0.9 for layer in bn)


def test_a_random_backbone_gets_batchnorm_statistics_from_the_data(tiny_splits):
    """Keras' initial BatchNorm statistics shrink a random backbone's features to ~1e-12 in
    inference mode (the frozen phase's); set from the data they have the data's scale, and
    nothing but the moving statistics changes."""
    from tledge.training.features import head_on_features
    from tledge.training.runmodel import batchnorm_from_data

    config = tiny_config()
    model = _model(config, tiny_splits)
    for layer in backbone_layers(model):
        layer.trainable = False
    extractor, _ = head_on_features(model)
    x = tiny_splits.train.x[:32]
    assert np.median(extractor(x, training=False).numpy().std(0)) < 1e-6
    before = {w.name: w.numpy() for w in model.weights if "/moving_" not in w.name}
    assert batchnorm_from_data(model, tiny_splits.train, 16, seed=1) > 10
    assert np.median(extractor(x, training=False).numpy().std(0)) > 1e-2
    after = {w.name: w.numpy() for w in model.weights if "/moving_" not in w.name}
    assert all(np.array_equal(before[name], after[name]) for name in before)
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.momentum == 0.9 for layer in bn)  # build_classifier's, put back
    assert not any(layer.trainable for layer in backbone_layers(model))


def test_a_random_backbone_trains_a_head_of_sane_scale(tiny_run):
    """Standardised features folded back into the head: with the data's statistics the head's
    kernel stays of the order of the features' inverse spread, not 1e11."""
    _, result = tiny_run
    dense = [layer for layer in head_layers(result.model)
             if isinstance(layer, keras.layers.Dense)][0]
    assert np.abs(dense.get_weights()[0]).max() < 1e3


def test_ctrl_c_keeps_finished_phases(tiny_splits, tmp_path, monkeypatch):
    import tledge.training.train as train_mod

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "finetune_phase", interrupt)
    out = tmp_path / "r"
    with pytest.raises(Interrupted, match="during phase finetune.*frozen.*saved"):
        train(tiny_config(), out, splits=tiny_splits, echo=lambda s: None)
    metrics = json.loads((out / rundir.METRICS).read_text())
    assert metrics["status"] == "interrupted during finetune"
    assert metrics["phases_completed"] == ["frozen"]
    model = keras.models.load_model(out / rundir.FLOAT_MODEL)
    assert model.output_shape == (None, 6)


def test_an_interrupted_overwrite_leaves_the_old_run_whole(tiny_splits, tmp_path,
                                                            monkeypatch):
    """Ctrl-C (or a failure) in the first phase of --overwrite: the old run's model, config,
    labels, metrics and export folder are all still there, unchanged. Once the new run has a
    model, what export made of the old one goes (the benchmark of issue 36 evaluated a stale
    int8 file left there), and a file of the user's in that folder stays."""
    import tledge.training.train as train_mod

    out = tmp_path / "r"
    no_finetune = tiny_config(finetune=tiny_config().train.finetune.__class__(epochs=0))
    train(no_finetune, out, splits=tiny_splits, echo=lambda s: None)
    export = out / rundir.EXPORT
    export.mkdir()
    for name in ("model_int8.tflite", "model_fp32.REJECTED.tflite", "labels.txt",
                 "model_card.json", "export_report.json", "quant_debug.csv", "my notes.txt"):
        (export / name).write_text(f"the old run's {name}")
    before = {name: (out / name).read_bytes() for name in (
        rundir.FLOAT_MODEL, rundir.CONFIG, rundir.LABELS, rundir.METRICS, rundir.HISTORY,
        f"{rundir.EXPORT}/model_int8.tflite")}

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "frozen_phase", interrupt)
    changed = tiny_config(seed=7)
    with pytest.raises(Interrupted, match="is as it was .the old run, whole"):
        train(changed, out, overwrite=True, splits=tiny_splits, echo=lambda s: None)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train_mod, "frozen_phase", fail)
    with pytest.raises(OSError):
        train(changed, out, overwrite=True, splits=tiny_splits, echo=lambda s: None)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".*tmp*"))

    monkeypatch.undo()
    train(no_finetune.override(train={"seed": 7}), out, overwrite=True, splits=tiny_splits,
          echo=lambda s: None)
    assert sorted(p.name for p in export.iterdir()) == ["my notes.txt"]
    (export / "my notes.txt").unlink()
    train(no_finetune, out, overwrite=True, splits=tiny_splits, echo=lambda s: None)
    assert not export.exists()  # emptied: the folder goes too


def test_a_worker_gone_mid_phase_is_one_line_and_a_failed_status(tiny_splits, tmp_path,
                                                                 monkeypatch):
    """A peer killed mid-training: TensorFlow raises UnavailableError on the survivors, which
    was a traceback. Now one line saying so, and metrics.json says failed."""
    import tensorflow as tf

    import tledge.training.train as train_mod

    def peer_gone(*args, **kwargs):
        raise tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed to "
                                         "connect to all addresses")

    monkeypatch.setattr(train_mod, "finetune_phase", peer_gone)
    out = tmp_path / "r"
    with pytest.raises(TledgeError, match="phase finetune stopped: a worker of the cluster is "
                       "gone .*restarting every worker"):
        train(tiny_config(), out, splits=tiny_splits, echo=lambda s: None)
    metrics = json.loads((out / rundir.METRICS).read_text())
    assert metrics["status"].startswith("failed during finetune")
    assert metrics["phases_completed"] == ["frozen"]


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_same_seed_same_run(tiny_splits, tmp_path):
    config = tiny_config().override(data={"augment": True})
    runs = [train(config, tmp_path / f"r{i}", splits=tiny_splits, echo=lambda s: None)
            for i in range(2)]
    assert runs[0].phases[-1].history == runs[1].phases[-1].history


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_init_from_a_run_skips_to_qat(tiny_splits, tiny_run, tmp_path, monkeypatch):
    import shutil

    from tledge.training import qat
    from tledge.core.config import QATHParams
    from tledge.training.fitting import PhaseResult, save_model

    shutil.copytree(tiny_run[0], tmp_path / "a")
    first = tiny_run[1]
    config = tiny_config(frozen=PhaseHParams(epochs=0),
                         finetune=tiny_config().train.finetune.__class__(epochs=0),
                         qat=QATHParams(enabled=True, epochs=1, learning_rate=1e-5),
                         init_from=str(tmp_path / "a"))
    second = train(config, tmp_path / "b", splits=tiny_splits, echo=lambda s: None)
    x = tiny_splits.val.x[:4].astype(np.float32)
    np.testing.assert_allclose(second.model.predict(x, verbose=0),
                               first.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    assert [p.name for p in second.phases] == ["qat"]
    assert (tmp_path / "b" / rundir.QAT_MODEL).is_file()
    from test_export import assert_qat_wrapped
    assert_qat_wrapped(second.qat_model)
    # the README's "redo QAT" recipe: the new run has its float model (export needs it) ...
    redone = keras.models.load_model(tmp_path / "b" / rundir.FLOAT_MODEL, compile=False)
    np.testing.assert_allclose(redone.predict(x, verbose=0), first.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    # ... and redone in place, the run keeps its own float model (what QAT does was proved
    # above: here a stand-in phase that saves the model it was given)
    def qat_phase(model, splits, config, strategy, out, backup=None):
        save_model(model, out / rundir.QAT_MODEL)
        return PhaseResult("qat", {"loss": [1.0]}, 1, 0.5), model

    monkeypatch.setattr(qat, "qat_phase", qat_phase)
    train(config, tmp_path / "a", overwrite=True, splits=tiny_splits, echo=lambda s: None)
    in_place = keras.models.load_model(tmp_path / "a" / rundir.FLOAT_MODEL, compile=False)
    np.testing.assert_allclose(in_place.predict(x, verbose=0), first.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert (tmp_path / "a" / rundir.QAT_MODEL).is_file()
    with pytest.raises(TledgeError, match="takes 32px images"):
        train(config.override(data={"image_size": 48}), tmp_path / "c", echo=lambda s: None)


def test_qat_weighs_the_rare_classes_in_full(tiny_splits, tmp_path, monkeypatch):
    """--class-weight auto: the square root of n / (classes x its images) in the float phases,
    that itself in QAT, the last phase (deferred re-weighting: benchmarks/imbalance.md)."""
    from tledge.core.config import QATHParams
    from tledge.data import ImageSet, Splits
    from tledge.training import fitting
    from tledge.training.qat import qat_phase

    train_set = tiny_splits.train
    keep = np.concatenate([np.flatnonzero(train_set.y == c)[:(6 if c < 3 else 1)]
                           for c in range(len(tiny_splits.class_names))])
    splits = Splits(ImageSet(train_set.x[keep], train_set.y[keep]), tiny_splits.val,
                    tiny_splits.test, tiny_splits.class_names)
    config = tiny_config(qat=QATHParams(epochs=1, learning_rate=1e-4))
    weighed = {}

    class Weighed(Exception):
        pass

    def fit_phase(model, fit_model, train_ds, val_ds, hp, early_stop, name, backup=None,
                  balance=None, prior=None):
        weighed[name] = balance.class_weight
        raise Weighed

    monkeypatch.setattr(fitting, "fit_phase", fit_phase)
    with pytest.raises(Weighed):
        qat_phase(_model(config, splits), splits, config, resolve_strategy("none"), tmp_path)
    assert weighed["qat"][5] == pytest.approx(6.0 * 21 / (6 * 6 * 1))  # not its square root
    assert weighed["qat"][0] == pytest.approx(21 / (6 * 6))


@pytest.mark.parametrize("lost", ["beyond chance", "within chance"])
def test_an_imbalanced_run_is_weighed_and_a_worse_phase_is_not_kept(tiny_splits, tmp_path,
                                                                    monkeypatch, lost):
    """Issue 36: the per-class counts and a warning; class weights in the fit; balanced
    accuracy picks the kept epoch; a fine-tune that ends below the frozen phase beyond chance
    does not replace its model (here a stand-in fine-tune that wrecks the weights, and
    validation predictions that lose every image), one that ends below it within chance (one
    image lost) does."""
    from tledge.training import train as train_mod
    from tledge.data import ImageSet, Splits
    from tledge.training.fitting import PhaseResult

    train_set = tiny_splits.train
    keep = np.concatenate([np.flatnonzero(train_set.y == c)[:(6 if c < 3 else 1)]
                           for c in range(len(tiny_splits.class_names))])
    splits = Splits(ImageSet(train_set.x[keep], train_set.y[keep]), tiny_splits.val,
                    tiny_splits.test, tiny_splits.class_names)
    fits = []
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **k: fits.append(
        k.get("class_weight")) or real_fit(self, *a, **k))

    def wrecking_finetune(model, splits, config, strategy, backup=None):
        model.set_weights([np.zeros_like(w) for w in model.get_weights()])
        return PhaseResult("finetune", history={"loss": [9.0], "val_accuracy": [0.0],
                                                "val_balanced_accuracy": [0.0]},
                           best_epoch=1, val_accuracy=0.0, val_balanced_accuracy=0.0,
                           monitor="balanced_accuracy")

    monkeypatch.setattr(train_mod, "finetune_phase", wrecking_finetune)
    y = np.asarray(splits.val.y)
    after = (y + 1) % len(splits.class_names) if lost == "beyond chance" else \
        np.where(np.arange(len(y)) == 0, (y + 1) % len(splits.class_names), y)
    calls = iter([y, after])  # the frozen model's validation predictions, then fine-tune's
    monkeypatch.setattr(train_mod, "predicted", lambda *a: next(calls))
    lines, out = [], tmp_path / "run"
    result = train(tiny_config(), out, splits=splits, echo=lines.append)
    text = "\n".join(lines)
    assert "images per class (train/val): circle 6/" in text
    assert "WARNING: the classes are imbalanced" in text and "6.0x the images" in text
    # --class-weight auto: the square root of n / (classes x its images)
    assert fits[0] is not None and fits[0][5] == pytest.approx((6.0 * 21 / (6 * 6 * 1)) ** 0.5)
    assert "best val_balanced_accuracy" in text
    assert f"phase finetune: ended below the model it started from on validation (balanced " \
           f"accuracy), {lost}" in text
    assert f"next: tledge export {out} --int8 --fp32" == lines[-1]
    metrics = json.loads((out / rundir.METRICS).read_text())
    if lost == "within chance":  # one image of the validation split: the fine-tune goes on
        assert metrics["phases"]["finetune"]["kept"] and metrics["kept_phase"] == "finetune"
        assert metrics["phases"]["finetune"]["worse_p"] == pytest.approx(0.5)
        saved = keras.models.load_model(out / rundir.FLOAT_MODEL, compile=False)
        assert all(np.abs(w).sum() == 0 for w in saved.get_weights())  # the fine-tune's model
        return
    assert metrics["kept_phase"] == "frozen" and not metrics["phases"]["finetune"]["kept"]
    assert metrics["phases"]["finetune"]["worse_p"] < 0.05
    assert metrics["images_per_class"]["train"]["star"] == 1
    history = json.loads((out / rundir.HISTORY).read_text())
    assert history["frozen"]["monitor"] == "balanced_accuracy"
    assert len(history["frozen"]["val_balanced_accuracy"]) == 1
    saved = keras.models.load_model(out / rundir.FLOAT_MODEL, compile=False)
    assert any(np.abs(w).sum() > 0 for w in saved.get_weights())  # the frozen phase's model
    for a, b in zip(saved.get_weights(), result.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert (out / rundir.CURVES).stat().st_size > 0


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_a_run_interrupted_mid_finetune_resumes_from_its_last_epoch(tiny_splits, tmp_path,
                                                                    monkeypatch):
    """Issue 36: Ctrl-C (SIGTERM is made one) after fine-tune's 2nd of 3 epochs; --resume keeps
    the frozen phase, trains only the 3rd epoch (weights and optimizer from the backup) and
    ends with the same phases and epochs as an uninterrupted run, its history whole."""
    from tledge.core import fileio

    config = tiny_config(finetune=tiny_config().train.finetune.__class__(
        epochs=3, learning_rate=1e-3, unfreeze="10"))
    monkeypatch.setattr(fileio, "cache_root", lambda: tmp_path / "cache")
    whole = train(config, tmp_path / "whole", splits=tiny_splits, echo=lambda s: None)

    fits, real_fit = [], keras.Model.fit

    class Count(keras.callbacks.Callback):
        """The epochs each fit runs (1-based), and Ctrl-C after the 2nd of the first
        fine-tune."""

        def __init__(self, stop):
            super().__init__()
            self.stop, self.epochs = stop, []
            fits.append(self.epochs)

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(epoch + 1)
            if self.stop and epoch == 1:
                raise KeyboardInterrupt

    def fit(self, *args, **kwargs):
        stop = len(fits) == 1 and not resumed  # the first run's fine-tune
        kwargs["callbacks"] = kwargs["callbacks"] + [Count(stop)]
        return real_fit(self, *args, **kwargs)

    resumed = False
    monkeypatch.setattr(keras.Model, "fit", fit)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match="during phase finetune.*--resume"):
        train(config, out, splits=tiny_splits, echo=lambda s: None)
    first = json.loads((out / rundir.HISTORY).read_text())
    assert list(first) == ["frozen"]
    resumed, lines = True, []
    result = train(config, out, splits=tiny_splits, echo=lines.append, resume=True)
    assert any("resuming after phase(s) frozen" in line for line in lines)
    assert fits == [[1], [1, 2], [3]]  # frozen; fine-tune stopped after 2; resumed: the 3rd
    history = json.loads((out / rundir.HISTORY).read_text())
    expected = json.loads((tmp_path / "whole" / rundir.HISTORY).read_text())
    assert [p.name for p in result.phases] == [p.name for p in whole.phases]
    assert {k: v["epochs"] for k, v in history.items()} == \
        {k: v["epochs"] for k, v in expected.items()} == {"frozen": 1, "finetune": 3}
    assert history["frozen"] == first["frozen"]  # kept as it was, not trained again
    assert json.loads((out / rundir.METRICS).read_text())["status"] == "complete"
    assert np.allclose(history["finetune"]["loss"], expected["finetune"]["loss"], rtol=0.2)
    with pytest.raises(TledgeError, match="finished.*nothing to resume"):
        train(config, out, splits=tiny_splits, echo=lambda s: None, resume=True)


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_resume_gives_a_finished_phase_more_epochs(tiny_splits, tiny_run, tmp_path):
    """Issue 36: --resume with more epochs for the last float phase goes on from its kept
    weights, its epochs of before kept in the history; an earlier phase cannot (its weights
    are gone), and a finished run given nothing more is refused."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    before = json.loads((out / rundir.HISTORY).read_text())
    finetune = tiny_config().train.finetune.__class__
    with pytest.raises(TledgeError, match="nothing to resume; give a phase more epochs"):
        train(tiny_config(), out, splits=tiny_splits, echo=lambda s: None, resume=True)
    with pytest.raises(TledgeError, match="phase frozen of this run cannot be given more"):
        train(tiny_config(frozen=PhaseHParams(epochs=2, learning_rate=1e-2)), out,
              splits=tiny_splits, echo=lambda s: None, resume=True)
    lines = []
    longer = tiny_config(finetune=finetune(epochs=3, learning_rate=1e-3, unfreeze="10"))
    result = train(longer, out, splits=tiny_splits, echo=lines.append, resume=True)
    assert any("phase finetune: 1 epoch(s) finished, 3 asked: 2 more from its kept epoch (1)"
               in line for line in lines), lines
    assert any("== phase 2/3 finetune" in line and "2 epochs ==" in line for line in lines)
    history = json.loads((out / rundir.HISTORY).read_text())
    assert history["frozen"] == before["frozen"]  # kept as it was, not trained again
    assert history["finetune"]["epochs"] == 3 and len(history["finetune"]["loss"]) == 3
    assert history["finetune"]["loss"][0] == before["finetune"]["loss"][0]
    assert [p.name for p in result.phases] == ["frozen", "finetune"]
    assert json.loads((out / rundir.METRICS).read_text())["status"] == "complete"
    assert yaml.safe_load((out / rundir.CONFIG).read_text())["train"]["finetune"]["epochs"] == 3
    x = tiny_splits.val.x[:4].astype(np.float32)
    saved = keras.models.load_model(out / rundir.FLOAT_MODEL, compile=False).predict(x, verbose=0)
    if history["finetune"]["best_epoch"] == 1:  # no new epoch beat it: the model it had
        np.testing.assert_allclose(saved, tiny_run[1].model.predict(x, verbose=0), atol=1e-6)
    else:  # a new epoch did: its weights, not the first's
        assert not np.allclose(saved, tiny_run[1].model.predict(x, verbose=0), atol=1e-6)
