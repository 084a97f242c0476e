"""QAT, TFLite conversion, metadata and the accuracy gate.

Most tests use a small hand-built classifier with tledge's layout (``preprocess`` first, flat
head) trained in seconds on noisy solid colours, so that int8 agreement and the accuracy gate
are measured on a model that has really learned something. QAT wrapping is tested on the real
backbones separately.
"""

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tledge.core import rundir
from tledge.core.config import ExportOptions, ModelOptions
from tledge.data import ImageSet, Splits
from tledge.core.errors import TledgeError
from tledge.export import QuantizationConfig, check_quantized, convert, export
from tledge.runtime.metadata import read_metadata
from tledge.models import PREPROCESS, build_classifier
from tledge.training.qat import load_qat_model, make_qat_model  # noqa: F401
from tledge.runtime import Classifier, read_embedded_labels

from helpers import LABELS, SIZE

pytestmark = pytest.mark.slow

def assert_qat_wrapped(qat) -> None:
    """The QAT twin of a tledge classifier: the input quantized, the in-model normalisation and
    the head wrapped."""
    names = [layer.name for layer in qat.layers]
    assert any(n.startswith("quantize_layer") for n in names)  # the input quantizer
    assert f"quant_{PREPROCESS}" in names
    assert "quant_predictions" in names


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
# MobileNetV2's QAT twin is checked where a real QAT phase makes it (test_train's
# test_init_from_a_run_skips_to_qat), the six other backbones in test_backbones.py
def test_qat_wraps_resnet50():
    model = build_classifier(ModelOptions(backbone="resnet50", alpha=0.35, weights="none"), 3, 32)
    qat = make_qat_model(model)
    assert_qat_wrapped(qat)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    assert qat(x, training=False).shape == (2, 3)  # one call: no predict function traced


def test_fp32_tflite_matches_keras(colour_run, tmp_path):
    _, splits, model = colour_run
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(model, QuantizationConfig.for_float32()))
    clf = Classifier(path, labels=LABELS)
    assert clf.input_dtype == np.float32
    tflite = clf.predict_batch(splits.val.x)
    keras_out = model.predict(splits.val.x.astype(np.float32), verbose=0)
    np.testing.assert_allclose(tflite, keras_out, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("from_qat", [False, True])
def test_int8_is_full_integer_with_uint8_io_and_agrees_with_float(colour_run, tmp_path, from_qat):
    run, splits, model = colour_run
    source = load_qat_model(run / rundir.QAT_MODEL) if from_qat else model
    raw = convert(source, QuantizationConfig.for_int8(splits.train.x[:50], from_qat=from_qat))
    info = check_quantized(raw, "int8")
    assert info["input_dtype"] == "uint8" and info["output_dtype"] == "uint8"
    assert "float32" not in info["tensor_types"]
    path = tmp_path / "m.tflite"
    path.write_bytes(raw)
    clf = Classifier(path, labels=LABELS)
    # Raw pixels in: scale 1, zero point 0 (the calibrated input range is 0..255).
    scale, zero_point = clf.input_quant
    assert zero_point == 0 and abs(scale - 1.0) < 0.02
    # Probabilities out: q / 256.
    assert clf.output_quant == (pytest.approx(1 / 256), 0)
    int8 = clf.predict_batch(splits.val.x)
    ref = source.predict(splits.val.x.astype(np.float32), verbose=0)
    assert np.mean(int8.argmax(1) == ref.argmax(1)) >= 0.9
    assert np.abs(int8 - ref).max() < 0.25


def test_export_writes_verified_files_with_metadata(colour_run, tmp_path):
    run, splits, _ = colour_run
    out = tmp_path / "export"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # what two export runs killed with -9 left: removed by the next export, which says so
    left = [out / f".model_fp32.tflite.{dead.pid}.0.verifying",
            out / ".model_int8.tflite.k2j3h4.tmp.tflite"]
    for path in left:
        path.write_bytes(b"half a model")
    said = []
    report = export(run, ExportOptions(formats=("fp32", "fp16", "dynamic", "int8")), out=out,
                    splits=splits, echo=said.append)
    assert not any(p.exists() for p in left)
    assert f"removed 2 file(s) a killed export left in {out}" in said
    by_format = {r["format"]: r for r in report["formats"]}
    assert set(by_format) == {"fp32", "fp16", "dynamic", "int8"}
    assert by_format["int8"]["source"] == "qat"
    for fmt, r in by_format.items():
        path = out / f"model_{fmt}.tflite"
        assert r["passed"] and path.is_file(), fmt
        assert read_embedded_labels(path) == LABELS
        meta = read_metadata(path.read_bytes())
        files = meta.subgraphMetadata[0].outputTensorMetadata[0].associatedFiles
        assert files[0].name.decode() == "labels.txt" and files[0].type == 2  # TENSOR_AXIS_LABELS
        assert zipfile.ZipFile(path).read("labels.txt").decode().split() == LABELS
    assert by_format["fp32"]["agreement"] == 1.0
    assert by_format["int8"]["agreement"] >= 0.9
    assert by_format["int8"]["size_bytes"] < by_format["fp32"]["size_bytes"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["files"]["model_int8.tflite"]["input_dtype"] == "uint8"
    assert card["labels"] == LABELS
    assert (out / "labels.txt").read_text().split() == LABELS
    assert json.loads((out / "export_report.json").read_text())["formats"]
    with pytest.raises(TledgeError, match="already exists.*--overwrite"):
        export(run, ExportOptions(formats=("fp32",)), out=out, splits=splits, echo=lambda s: None)


def test_accuracy_gate_rejects_a_badly_calibrated_int8_model(colour_run, tmp_path):
    """Calibrating on black images gives an input range of zero width: every real pixel
    saturates and the int8 model collapses. The gate must fail the export and the file must
    carry the failure in its name."""
    run, splits, _ = colour_run
    black = ImageSet(np.zeros((20, SIZE, SIZE, 3), np.uint8), np.zeros(20, np.int32))
    bad = Splits(black, splits.val, None, LABELS)
    out = tmp_path / "bad"
    with pytest.raises(TledgeError, match="accuracy gate failed: int8 lost"):
        export(run, ExportOptions(formats=("int8",), ptq=True), out=out, splits=bad,
               echo=lambda s: None)
    assert not (out / "model_int8.tflite").exists()
    assert (out / "model_int8.REJECTED.tflite").is_file()
    report = json.loads((out / "export_report.json").read_text())
    assert report["formats"][0]["passed"] is False and report["formats"][0]["source"] == "float"

    good = tmp_path / "good"
    export(run, ExportOptions(formats=("int8",), ptq=True), out=good, splits=splits,
           echo=lambda s: None)
    assert (good / "model_int8.tflite").is_file()


def test_a_qat_model_worse_than_the_float_one_gives_way_to_post_training_int8(colour_run,
                                                                              tmp_path):
    """A QAT phase can end worse than the float model it started from (seen: a QAT that lost 6
    points on validation, its int8 file rejected). Here the QAT model's head is wrecked: every
    image is called the first colour. Export tries the float model quantized after training,
    ships it because it passes, and says why in one line."""
    import shutil

    from tledge.training.fitting import save_model

    run, splits, _ = colour_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    qat = load_qat_model(copy / rundir.QAT_MODEL)
    head = qat.get_layer("quant_predictions")
    head.set_weights([np.zeros_like(w) if w.ndim == 2 else
                      np.eye(len(LABELS))[0] * 10 if w.shape == (len(LABELS),) else w
                      for w in head.get_weights()])
    save_model(qat, copy / rundir.QAT_MODEL)
    lines = []
    report = export(copy, ExportOptions(formats=("int8",)), splits=splits, echo=lines.append)
    text = "\n".join(lines)
    assert "from the QAT model lost" in text and "trying post-training int8" in text
    assert "WARNING: model_int8.tflite is quantized after training from the float model" in text
    (result,) = report["formats"]
    assert result["passed"] and result["source"] == "float"
    assert (copy / "export" / "model_int8.tflite").is_file()
    assert not list((copy / "export").glob("*REJECTED*"))
    card = json.loads((copy / "export" / "model_card.json").read_text())
    assert card["files"]["model_int8.tflite"]["converted_from"] == "float"


@pytest.mark.parametrize("content, message", [
    (b"", "not a TFLite model"),
    (b"PK\x03\x04 this is a zip, not a model", "not a TFLite model"),
])
def test_non_tflite_files_are_refused(tmp_path, content, message):
    path = tmp_path / "x.tflite"
    path.write_bytes(content)
    with pytest.raises(TledgeError, match=message):
        Classifier(path)


def test_truncated_tflite_is_refused(colour_run, tmp_path):
    _, _, model = colour_run
    raw = convert(model, QuantizationConfig.for_float32())
    path = tmp_path / "cut.tflite"
    path.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(TledgeError, match="truncated or corrupt"):
        Classifier(path)


def test_range_calibration_makes_a_fresh_qat_model_match_the_float_one(colour_run):
    """Without it tfmot starts every activation range at [-6, 6] and the QAT model begins far
    from the float model it wraps (here: at chance)."""
    from tledge.data.pipeline import batches
    from tledge.training.qat import calibrate_ranges

    _, splits, model = colour_run
    x = splits.val.x.astype(np.float32)
    reference = model.predict(x, verbose=0)
    qat = make_qat_model(model)
    before = np.abs(qat.predict(x, verbose=0) - reference).max()
    assert calibrate_ranges(qat, batches(splits.train.x, splits.train.y, 16).repeat().take(50))
    after = qat.predict(x, verbose=0)
    assert np.mean(after.argmax(1) == reference.argmax(1)) == 1.0
    assert np.abs(after - reference).max() < 0.05 < before
    preprocess_max = [v for v in qat.non_trainable_variables
                      if v.name.startswith("quant_preprocess/output_max")][0]
    assert abs(float(preprocess_max.numpy()) - 1.0) < 0.05  # x / 127.5 - 1 tops out at 1


def test_export_warns_and_records_when_the_delegate_does_not_take_the_graph(colour_run,
                                                                             tmp_path):
    """A head with UnitNormalization (TFLite's L2_NORMALIZATION, which XNNPACK does not run)
    cuts the fp32 graph in two: export says so in one line naming the op, and the model card
    keeps the count."""
    import tf_keras as keras

    from tledge.core import fileio
    from tledge.core.config import RunConfig

    _, splits, _ = colour_run
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name=PREPROCESS)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.UnitNormalization()(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(len(LABELS), activation="softmax")(x))
    run = tmp_path / "run"
    fileio.write_text(run / rundir.CONFIG, RunConfig().override(
        data={"image_size": SIZE}).to_yaml())
    fileio.write_labels(run / rundir.LABELS, LABELS)
    model.save(run / rundir.FLOAT_MODEL)
    lines = []
    export(run, ExportOptions(formats=("fp32",), max_drop=100.0), splits=splits,
           echo=lines.append)
    warning = [line for line in lines if "not fully delegated" in line]
    assert len(warning) == 1 and "L2_NORMALIZATION" in warning[0], lines
    card = json.loads((run / "export" / "model_card.json").read_text())
    assert card["files"]["model_fp32.tflite"]["delegation"]["partitions"] == 2
    assert card["files"]["model_fp32.tflite"]["delegation"]["undelegated"] == {
        "L2_NORMALIZATION": 1}


def _graph(raw: bytes) -> dict:
    """What a committed model must keep: ops, tensor types and shapes, I/O quantization."""
    from tledge.runtime import get_backend

    interpreter = get_backend().interpreter_cls(model_content=raw)
    interpreter.allocate_tensors()
    io = [(d["shape"].tolist(), np.dtype(d["dtype"]).name, d["quantization"])
          for d in interpreter.get_input_details() + interpreter.get_output_details()]
    return {"ops": [op["op_name"] for op in interpreter._get_ops_details()],
            "tensors": sorted((np.dtype(t["dtype"]).name, tuple(t["shape"].tolist()))
                              for t in interpreter.get_tensor_details()),
            "io": io, "signatures": interpreter.get_signature_list()}


# make_models.py calls the converter as it is (its uint8 input has no "statistics")
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs")
def test_committed_models_match_their_script(colour_run, tmp_path):
    """tests/models/*.tflite (what the fast tier runs on) are what make_models.py and today's
    export make: the same graphs, and the colour files classify as a fresh export does."""
    import importlib.util

    from helpers import MODELS, export_colour_run

    spec = importlib.util.spec_from_file_location("make_models", MODELS / "make_models.py")
    make_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_models)
    fresh = {"hard_swish_int8": make_models.hard_swish_int8(), **make_models.not_classifiers(),
             **make_models.normalised_models()}
    run, splits, _ = colour_run  # the same seeded recipe as make_models.colour_models()
    exported = export_colour_run(run, splits, tmp_path / "export")
    fresh.update({f"colour_{fmt}": path.read_bytes() for fmt, path in exported.items()})
    committed = {path.stem: path.read_bytes() for path in MODELS.glob("*.tflite")}
    assert sorted(committed) == sorted(fresh), "run tests/models/make_models.py"
    for stem, raw in fresh.items():
        assert _graph(committed[stem]) == _graph(raw), \
            f"{stem}.tflite differs from what make_models.py makes now: run it and commit"
    for fmt in ("int8", "fp32"):
        new, old = (Classifier(MODELS / f"colour_{fmt}.tflite"), Classifier(exported[fmt]))
        assert old.labels == new.labels == LABELS  # embedded by export's metadata
        agree = np.mean(new.predict_batch(splits.test.x).argmax(1)
                        == old.predict_batch(splits.test.x).argmax(1))
        assert agree >= 0.95, (fmt, agree)


def test_the_card_describes_every_model_file_in_the_folder(colour_run, tmp_path):
    """An export of fewer formats into a folder that holds more: refused without --overwrite
    (naming the files), and with it the earlier files go, so card and report describe every
    model file there."""
    run, splits, _ = colour_run
    out = tmp_path / "export"
    export(run, ExportOptions(formats=("fp32", "dynamic")), out=out, splits=splits,
           echo=lambda s: None)
    with pytest.raises(TledgeError, match="holds model_dynamic.tflite, model_fp32.tflite from "
                                          "an earlier export.*--overwrite"):
        export(run, ExportOptions(formats=("int8",)), out=out, splits=splits,
               echo=lambda s: None)
    assert (out / "model_fp32.tflite").is_file()  # nothing lost without being asked
    lines = []
    export(run, ExportOptions(formats=("int8", "fp32")), out=out, splits=splits,
           overwrite=True, echo=lines.append)
    assert any("removed model_dynamic.tflite" in line for line in lines)
    card = json.loads((out / "model_card.json").read_text())
    report = json.loads((out / "export_report.json").read_text())
    files = sorted(p.name for p in out.glob("model_*.tflite"))
    assert files == sorted(card["files"]) == ["model_fp32.tflite", "model_int8.tflite"]
    assert sorted(Path(r["path"]).name for r in report["formats"]) == files
