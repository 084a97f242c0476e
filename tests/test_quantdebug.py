"""The per-layer int8 report and --keep-float, on a model built to break int8 in one known layer.

The model classifies colours well in float. Its layer 'broken' gives an input channel that is
always zero a weight of 1000 in every output channel: harmless in float (1000 x 0), but int8
scales each output channel's weights to that 1000, so all its real weights round to zero and
int8 accuracy collapses to chance. The report must rank 'broken' first; keeping it float must
pass the gate."""

import json

import numpy as np
import pytest

from helpers import LABELS, SIZE, colour_set
from tledge.core import fileio, rundir
from tledge.core.config import ExportOptions, RunConfig
from tledge.data import Splits, stratified_split
from tledge.core.errors import TledgeError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    import tf_keras as keras
    from tledge.models import PREPROCESS

    keras.utils.set_random_seed(0)
    train, val = stratified_split(colour_set(40, 0), 0.25, seed=0)
    splits = Splits(train, val, colour_set(10, 1), LABELS)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name=PREPROCESS)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(8, 1, activation="relu", name="broken")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(train.x.astype(np.float32), train.y, epochs=40, batch_size=16, verbose=0)
    # conv_a's channel 7 is always 0 (ReLU of a negative constant); 'broken' weighs it 1000
    w, b = model.get_layer("conv_a").get_weights()
    w[..., 7], b[7] = 0.0, -1.0
    model.get_layer("conv_a").set_weights([w, b])
    w, b = model.get_layer("broken").get_weights()
    w[0, 0, 7, :] = 1000.0
    model.get_layer("broken").set_weights([w, b])
    float_acc = np.mean(model.predict(val.x.astype(np.float32), verbose=0).argmax(1) == val.y)
    assert float_acc >= 0.9, "the float model must classify well"
    run = tmp_path_factory.mktemp("broken_run")
    fileio.write_text(run / rundir.CONFIG, RunConfig().override(
        data={"image_size": SIZE}, model={"weights": "none"}).to_yaml())
    fileio.write_labels(run / rundir.LABELS, LABELS)
    model.save(run / rundir.FLOAT_MODEL)
    return run, splits


def _export(run, splits, out, **options):
    from tledge.export import export

    lines = []
    try:
        report = export(run, ExportOptions(formats=("int8",), **options), out=out,
                        splits=splits, echo=lines.append)
        return report, None, lines
    except TledgeError as e:
        return None, str(e), lines


def test_the_gate_fails_and_the_report_ranks_the_broken_layer_first(broken_run, tmp_path):
    run, splits = broken_run
    out = tmp_path / "export"
    report, error, lines = _export(run, splits, out)
    assert error is not None and "int8 lost" in error
    assert "worst layers: broken (CONV_2D" in error and "quant_debug.csv" in error
    assert "--keep-float auto" in error
    rows = (out / "quant_debug.csv").read_text().splitlines()
    assert rows[0].startswith("layer,op,tensor,rel_rmse")
    assert rows[1].startswith("broken,CONV_2D,")
    assert (out / "quant_debug.png").stat().st_size > 0
    assert (out / "model_int8.REJECTED.tflite").is_file()


def test_keeping_the_broken_layer_float_passes_the_gate(broken_run, tmp_path):
    from tledge.runtime import Classifier

    run, splits = broken_run
    out = tmp_path / "export"
    report, error, lines = _export(run, splits, out, keep_float=("broken",), debug=True)
    assert error is None, error
    (result,) = report["formats"]
    assert result["passed"] and result["drop_points"] <= 1.0
    clf = Classifier(out / "model_int8.tflite")
    assert clf.input_dtype == np.uint8 and clf.output_dtype == np.uint8  # still uint8 in/out
    card = json.loads((out / "model_card.json").read_text())
    assert card["files"]["model_int8.tflite"]["keep_float"] == ["broken"]
    assert (out / "quant_debug.csv").is_file()  # --debug writes the report on a pass too


def test_keep_float_auto_finds_the_layer_and_reports_the_cost(broken_run, tmp_path):
    run, splits = broken_run
    out = tmp_path / "export"
    report, error, lines = _export(run, splits, out, keep_float=("auto",))
    assert error is None, error
    (result,) = report["formats"]
    assert result["passed"]
    cost = result["quantization"]["keep_float_cost"]
    assert cost["layers"] == ["broken"]
    assert isinstance(cost["size_bytes"], int) and "latency_ms_1_thread" in cost
    assert any("keep-float auto: 1 layer(s) float" in line for line in lines)


def test_unknown_keep_float_layer_is_one_line(broken_run, tmp_path):
    run, splits = broken_run
    _, error, _ = _export(run, splits, tmp_path / "e", keep_float=("no_such_layer",))
    assert "no_such_layer" in error and "quant_debug.csv" in error and "\n" not in error


def test_every_format_loads_in_older_runtimes_with_one_output_name(colour_run, tmp_path):
    """The Task Library 0.4.4 could not load the dynamic file (FULLY_CONNECTED version 12 needs
    runtime 2.17); the QAT int8 file's output was 'quant_predictions'. Now: one signature in
    every format, each file's minimum runtime recorded, uint8 output statistics 0..255."""
    from ai_edge_litert.interpreter import Interpreter

    from tledge.export import export
    from tledge.runtime.metadata import read_metadata

    run, splits, _ = colour_run
    out = tmp_path / "export"
    export(run, ExportOptions(formats=("fp32", "fp16", "dynamic", "int8")), out=out,
           splits=splits, echo=lambda s: None)
    card = json.loads((out / "model_card.json").read_text())
    for fmt in ("fp32", "fp16", "dynamic", "int8"):
        path = out / f"model_{fmt}.tflite"
        signature = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]
        assert signature == {"inputs": ["image"], "outputs": ["predictions"]}, (fmt, signature)
        version = card["files"][path.name]["min_runtime_version"]
        assert version and tuple(map(int, version.split("."))) < (2, 17), (fmt, version)
    meta = read_metadata((out / "model_int8.tflite").read_bytes())
    stats = meta.subgraphMetadata[0].outputTensorMetadata[0].stats
    assert (stats.min, stats.max) == ([0.0], [255.0])
    assert card["files"]["model_int8.tflite"]["converted_from"] == "qat"


def test_rows_with_impossible_reference_values_are_flagged_not_ranked():
    """A ReLU6 output whose float reference reads 2.3e34 (seen on a real run) must not be
    named the worst layer."""
    from tledge.quantize.quantdebug import LayerError, _reliable, first_new, worst_names

    def row(layer, rel, fmax, scale=6 / 255):
        values = {"float_min": 0.0, "float_max": fmax, "rel_rmse": rel, "scale": scale}
        return LayerError(layer, "CONV_2D", layer, rel, 0.3, 0.5, 0.0, 0.0, fmax, scale, -128,
                          reliable=_reliable({k: str(v) for k, v in values.items()}))

    rows = sorted([row("garbage", 2e33, 2.3e34), row("real", 0.4, 5.9),
                   row("nan", float("nan"), 1.0), row("fine", 0.1, 6.0)],
                  key=lambda r: (not r.reliable, -r.rel_rmse))
    assert [r.layer for r in rows][:2] == ["real", "fine"]
    assert not rows[2].reliable and not rows[3].reliable
    assert worst_names(rows, 2).startswith("real (CONV_2D") and "garbage" not in \
        worst_names(rows, 3)
    assert first_new(rows, ["real", "fine"]) is None


def test_the_report_of_a_qat_run_analyses_the_file_that_ships(colour_run, tmp_path):
    """Issue 24: the report came from a post-training conversion of the float model while the
    int8 file that ships came from QAT, and ranked rows on impossible values. Now it analyses
    model_int8.tflite itself against the QAT model computing in float, and says so."""
    import csv
    import math

    from tledge.quantize.conversion import QuantizationConfig, convert
    from tledge.training.runmodel import load_keras_file
    from tledge.quantize.graph_rewrite import strip_fake_quant
    from tledge.runtime import Classifier

    from helpers import assert_quiet, tledge

    run, splits, _ = colour_run
    out = tmp_path / "export"
    proc = tledge("export", run, "--int8", "--debug", "--max-drop", "100", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_quiet(proc.stderr)  # no converter, debugger or LiteRT noise on the terminal
    report = json.loads((out / "export_report.json").read_text())
    assert report["formats"][0]["source"] == "qat"
    analysed = report["int8_layer_report"]["analysed"]
    assert analysed.startswith("model_int8.tflite (from the QAT model)"), analysed
    lines = proc.stdout.splitlines()
    assert any("against the QAT model in float" in line for line in lines)
    assert any(line.startswith("worst int8 layers:") and "analysed: model_int8.tflite" in line
               for line in lines)
    with open(out / "quant_debug.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3  # both convolutions, the dense layer
    for row in rows:  # finite everywhere, and no requantizing or delegate node as a "layer"
        assert all(math.isfinite(float(row[k])) for k in ("rel_rmse", "end_to_end",
                                                           "float_min", "float_max")), row
        assert row["op"] not in ("QUANTIZE", "DEQUANTIZE", "DELEGATE"), row
    reliable = [r for r in rows if r["reliable"] == "True"]
    assert rows[:len(reliable)] == reliable  # flagged rows, if any, last
    added = [float(r["rel_rmse"]) for r in reliable]
    assert added == sorted(added, reverse=True)
    # the reference: the QAT model's fp32 conversion without its fake quantization is the QAT
    # model computing in float (no QUANTIZE left), and classifies as the QAT model does
    qat_model = load_keras_file(run / rundir.QAT_MODEL, qat=True)
    twin, removed = strip_fake_quant(convert(qat_model, QuantizationConfig.for_float32()))
    assert removed > 0
    twin_file = tmp_path / "twin.tflite"
    twin_file.write_bytes(twin)
    clf = Classifier(twin_file, labels=LABELS)
    ops = {op["op_name"] for op in clf.interpreter._get_ops_details()}
    assert not ops & {"QUANTIZE", "DEQUANTIZE"}, ops
    ours = clf.predict_batch(splits.val.x).argmax(1)
    keras_qat = qat_model.predict(splits.val.x.astype(np.float32), verbose=0).argmax(1)
    assert np.mean(ours == keras_qat) >= 0.95
