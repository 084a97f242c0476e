"""The numpy-only runtime: backends, quantization, labels, and no TensorFlow on the way."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tledge.runtime as rt
import tledge.runtime.backends as backends
from tledge.core.errors import TledgeError

from helpers import COLOURS, LABELS, assert_quiet, stub_run

ROOT = Path(__file__).resolve().parents[1]


def test_backend_order_and_fallback(monkeypatch):
    tried = []

    def fake_load(name):
        tried.append(name)
        if name != "tensorflow":
            raise ImportError(f"No module named {name}")
        return rt.Backend("tensorflow", "9.9", object)

    monkeypatch.setattr(backends, "_load", fake_load)
    monkeypatch.setattr(backends, "_loaded", {})
    assert rt.get_backend().name == "tensorflow"
    assert tried == ["litert", "tflite_runtime", "tensorflow"]
    with pytest.raises(TledgeError, match="no TFLite interpreter.*litert: not installed"):
        rt.get_backend("litert")


def test_tflite_runtime_under_numpy2_is_reported_not_crashed(monkeypatch):
    def fake_load(name):
        if name == "tflite_runtime":
            raise SystemError("<built-in function ...> returned a result with an exception set")
        raise ImportError(f"No module named {name}")

    monkeypatch.setattr(backends, "_load", fake_load)
    monkeypatch.setattr(backends, "_loaded", {})
    found = rt.available_backends()
    assert found["tflite_runtime"].startswith("unavailable (SystemError")
    with pytest.raises(TledgeError, match="no TFLite interpreter"):
        rt.get_backend()


def test_explicit_backend_is_used():
    assert rt.get_backend("litert").name == "litert"
    with pytest.raises(TledgeError, match="unknown backend"):
        rt.get_backend("onnx")


def test_quantize_dequantize_formulas():
    q = rt.quantize(np.array([0.0, 0.5, 1.0, 9.0]), 1 / 128, -128, np.int8)
    assert q.tolist() == [-128, -64, 0, 127]  # q = round(x / scale) + zp, clipped
    np.testing.assert_allclose(rt.dequantize(np.array([-128, 0], np.int8), 0.5, -128), [0, 64])
    for dtype, zero_point in ((np.uint8, 3), (np.int8, -128), (np.int8, 5)):
        codes = np.arange(256, dtype=np.uint8).view(dtype).reshape(4, 64)
        table = rt.dequantize_table(dtype, 1 / 255, zero_point)
        np.testing.assert_array_equal(table[codes.view(np.uint8)],
                                      rt.dequantize(codes, 1 / 255, zero_point))
    assert rt.dequantize_table(np.float32, 1.0, 0) is None


def test_top_classes_ties_in_index_order_and_missing_labels():
    scores = np.array([0.1, 0.4, 0.4, 0.05, 0.4], np.float32)
    top = rt.top_classes(scores, ["a", "b", "c"], top_k=4)
    assert [(c.id, c.label) for c in top] == [(1, "b"), (2, "c"), (4, "4"), (0, "a")]
    assert all(type(c.id) is int and type(c.score) is float for c in top)
    assert top[0].score == float(scores[1])
    assert [c.id for c in rt.top_classes(scores, [], top_k=0)] == [1]  # at least one
    assert len(rt.top_classes(scores, [], top_k=99)) == 5


def test_python_and_numpy_ranking_agree(monkeypatch):
    """Up to 256 classes top_classes sorts Python floats, past it (or with a NaN) numpy's
    argsort: the same order either way, ties in index order, a NaN last."""
    import tledge.runtime.ranking as ranking

    rng = np.random.default_rng(0)
    for n in (1, 2, 10, 200, 256):
        scores = (rng.integers(0, 6, n) / 8).astype(np.float32)  # many ties
        python = rt.top_classes(scores, [], top_k=n)
        monkeypatch.setattr(ranking, "_PYTHON_SORT_MAX", 0)
        assert rt.top_classes(scores, [], top_k=n) == python
        monkeypatch.undo()
        assert [c.id for c in python] == np.argsort(-scores, kind="stable").tolist()
    with_nan = np.array([0.2, np.nan, 0.7, 0.2], np.float32)
    assert [c.id for c in rt.top_classes(with_nan, [], top_k=4)] == [2, 0, 3, 1]


def test_int8_model_quantized_input_and_dequantized_output(colour_tflite):
    clf = rt.Classifier(colour_tflite["int8"])
    assert clf.input_dtype == np.uint8 and clf.output_dtype == np.uint8
    frame = np.zeros((90, 120, 3), np.uint8)
    frame[...] = (230, 210, 40)  # yellow, any size: the runtime resizes
    assert clf.preprocess(frame).dtype == np.uint8
    scores = clf.scores(frame)
    assert scores.dtype == np.float32 and abs(scores.sum() - 1.0) < 0.05
    top = clf.classify(frame, top_k=2)
    assert top[0] == rt.Class(3, "yellow", pytest.approx(scores[3]))
    assert top[0].score >= top[1].score and len(top) == 2


@pytest.mark.parametrize("fmt", ["int8", "fp32"])
def test_classify_path_equals_plain_set_tensor(colour_tflite, fmt):
    """scores() writes pixels straight into the input buffer (casting for a float model); it
    must give what preprocess + set_tensor + invoke gives, for one image and for a batch."""
    clf = rt.Classifier(colour_tflite[fmt])
    reference = rt.make_interpreter(colour_tflite[fmt])
    inp, out = reference.get_input_details()[0], reference.get_output_details()[0]
    frames = np.random.default_rng(0).integers(0, 256, (3, 70, 50, 3), dtype=np.uint8)
    for frame in frames:
        reference.set_tensor(inp["index"], clf.preprocess(frame)[None])
        reference.invoke()
        expected = reference.get_tensor(out["index"])[0]
        if clf.output_dtype != np.float32:
            expected = rt.dequantize(expected, *clf.output_quant)
        np.testing.assert_array_equal(clf.scores(frame), expected)
    pixels = np.stack([clf.preprocess(f) for f in frames]).astype(np.uint8)
    np.testing.assert_array_equal(clf.predict_batch(pixels),
                                  np.stack([clf.scores(f) for f in frames]))
    np.testing.assert_array_equal(clf.invoke(clf.to_input_dtype(pixels[:1]))[0],
                                  clf.scores(frames[0]))
    # what set_tensor refused must not turn into a silent cast or broadcast
    for bad in (pixels[:1, :, :, :1], pixels[:1].astype(np.float64)):
        with pytest.raises(TledgeError, match="takes \\(N, "):
            clf.predict_batch(bad)
    wrong = np.int8 if clf.input_dtype != np.int8 else np.uint8
    with pytest.raises(TledgeError, match=clf.input_dtype.name):
        clf.invoke(pixels[:1].astype(wrong))


class _SignedOutput:
    """A uint8-output interpreter seen as an int8-output one: each code less 128, and its zero
    point too, so the scores are the same."""

    def __init__(self, inner):
        self._inner = inner
        self._out = inner.get_output_details()[0]["index"]

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_output_details(self):
        details = [dict(d) for d in self._inner.get_output_details()]
        scale, zero_point = details[0]["quantization"]
        details[0].update(dtype=np.int8, quantization=(scale, zero_point - 128))
        return details

    def get_tensor(self, index):
        out = self._inner.get_tensor(index)
        return (out ^ np.uint8(0x80)).view(np.int8) if index == self._out else out


@pytest.mark.parametrize("kind", ["uint8", "int8", "fp32"])
def test_classify_is_top_classes_of_scores(colour_tflite, kind):
    """classify() ranks an 8-bit output from its codes, in Python floats: exactly
    top_classes(scores()) (the same floats, ties in index order) for every output type."""
    path = colour_tflite["fp32" if kind == "fp32" else "int8"]
    clf = rt.Classifier(path)
    if kind == "int8":
        clf = rt.Classifier(path, interpreter=_SignedOutput(rt.make_interpreter(path)))
        assert clf.output_dtype == np.int8
    plain = rt.Classifier(path)
    frames = np.random.default_rng(1).integers(0, 256, (6, 40, 30, 3), dtype=np.uint8)
    frames[0] = (230, 210, 40)
    for frame in frames:
        scores = clf.scores(frame)
        np.testing.assert_array_equal(scores, plain.scores(frame))
        for top_k in (1, 3, 9):
            assert clf.classify(frame, top_k) == rt.top_classes(scores, clf.labels, top_k)
        # the camera's halves: raw output in the inference loop, scores in the output thread
        raw = clf.invoke(clf.preprocess(frame)[None], dequantize=False)
        assert raw.dtype == clf.output_dtype
        np.testing.assert_array_equal(clf.dequantize_output(raw)[0], scores)
    assert clf.classify(frames[0])[0].label == "yellow"


def test_labels_from_metadata_then_labels_txt(colour_tflite, tmp_path):
    assert rt.Classifier(colour_tflite["int8"]).labels == LABELS  # embedded
    # The same model without its appended label archive: labels.txt beside it is used.
    raw = colour_tflite["int8"].read_bytes()
    bare = raw[:raw.rfind(b"PK\x03\x04")]
    (tmp_path / "model.tflite").write_bytes(bare)
    assert rt.read_embedded_labels(tmp_path / "model.tflite") is None
    assert rt.Classifier(tmp_path / "model.tflite").labels == ["0", "1", "2", "3"]
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    assert rt.Classifier(tmp_path / "model.tflite").labels == ["a", "b", "c", "d"]


CLASSIFY = """
import sys, numpy as np
from tledge.runtime import Classifier
clf = Classifier(sys.argv[1])
frame = np.full((48, 64, 3), (50, 60, 220), np.uint8)
top = clf.classify(frame, top_k=1)[0]
assert 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)
print(clf.backend, top.label)
"""


def test_runtime_never_imports_tensorflow(colour_tflite):
    proc = subprocess.run([sys.executable, "-c", CLASSIFY, str(colour_tflite["int8"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["litert", "blue"]


def _pi_python():
    path = Path(os.environ.get("TLEDGE_PI_PYTHON", ROOT / ".venv-pi" / "bin" / "python"))
    return path if path.exists() else None


@pytest.mark.skipif(_pi_python() is None,
                    reason="no pi-only environment: `make install-pi` builds .venv-pi")
def test_pi_environment_without_tensorflow(colour_tflite, tmp_path):
    """In a venv with only tledge[pi] installed: TensorFlow is absent, classify and predict
    work."""
    python = _pi_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    check = subprocess.run([str(python), "-c", "import tensorflow"], capture_output=True,
                           text=True, env=env)
    assert check.returncode != 0 and "No module named 'tensorflow'" in check.stderr
    proc = subprocess.run([str(python), "-c", CLASSIFY, str(colour_tflite["int8"])],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["litert", "blue"]
    image = tmp_path / "blue.png"
    from PIL import Image
    Image.new("RGB", (40, 30), (50, 60, 220)).save(image)
    tledge = python.parent / "tledge"
    out = subprocess.run([str(tledge), "predict", str(colour_tflite["int8"]), str(image)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "blue" in out.stdout.split(":")[1].split(",")[0]
    assert_quiet(out.stderr)  # LiteRT's "INFO: Created ... XNNPACK delegate" line is held back
    loud = subprocess.run([str(tledge), "-v", "predict", str(colour_tflite["int8"]), str(image)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert "XNNPACK delegate" in loud.stderr, loud.stderr  # and shown with -v
    doctor = subprocess.run([str(tledge), "doctor"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert doctor.returncode == 0 and "tensorflow" in doctor.stdout
    # The README's other Pi commands, pictures included, and one line for what needs TF.
    data = tmp_path / "data"
    for label, rgb in zip(LABELS, COLOURS):
        (data / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30, 30), tuple(int(v) for v in rgb)).save(data / label / f"{i}.png")
    model = str(colour_tflite["int8"])
    commands = [
        (["evaluate", model, "--data", str(data), "--out", str(tmp_path / "ev")], 0),
        (["bench", model, "--threads", "1", "--runs", "3", "--warmup", "0",
          "--chart", str(tmp_path / "b.png"), "--json", str(tmp_path / "b.json")], 0),
        (["train", "--data", "shapes", "--out", str(tmp_path / "run")], 1),
        (["predict", str(stub_run(tmp_path / "stub")), str(image)], 1),
    ]
    for args, rc in commands:
        done = subprocess.run([str(tledge), *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == rc, (args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, (args, done.stderr[-2000:])
        assert_quiet(done.stderr)
        if rc:
            assert 'pip install "tledge[train]"' in done.stderr, done.stderr
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "b.png").stat().st_size > 0


@pytest.mark.slow
def test_bench_json_has_every_field(colour_tflite, colour_run, tmp_path):
    from tledge.measure import bench, benchreport
    report = bench.bench([str(colour_tflite["int8"]), str(colour_tflite["fp32"]),
                          str(colour_run[0])],
                         bench.BenchOptions(threads=(1, 2), runs=5, warmup=1, data=None),
                         echo=lambda s: None)
    paths = benchreport.write_outputs(report, tmp_path / "b.json", tmp_path / "b.csv",
                                tmp_path / "b.md", tmp_path / "b.png")
    assert all(p.is_file() for p in paths)
    data = json.loads((tmp_path / "b.json").read_text())
    assert {"cpu", "cores", "os", "python", "arch", "machine_id"} <= set(data["machine"])
    rows = data["results"]
    assert [(r["format"], r["threads"]) for r in rows] == [
        ("int8", 1), ("int8", 2), ("fp32", 1), ("fp32", 2), ("keras-float", None)]
    for r in rows:
        for key in ("size_bytes", "load_ms", "first_ms", "throughput_ips", "memory_mb",
                    "peak_rss_mb", "backend", "device", "classify_overhead_pct", "accuracy"):
            assert key in r, key
        for kind in ("invoke", "classify"):
            assert set(r[kind]) == {"p50", "p90", "p99", "mean", "std"}
            assert 0 < r[kind]["p50"] <= r[kind]["p99"]
    assert rows[0]["backend"].startswith("litert") and rows[-1]["backend"].startswith("tensorflow")
    assert "| model |" in (tmp_path / "b.md").read_text()
    assert (tmp_path / "b.csv").read_text().count("\n") == 6


def test_bench_peak_memory_is_the_workers_own(colour_tflite):
    """A worker's peak memory is its own, not its parent's: make bench's parent holds
    TensorFlow and the models it built (3.3 GB), which getrusage's ru_maxrss counted."""
    from tledge.measure import bench
    ballast = np.ones(600 * 2**20, np.uint8)  # the parent's 600 MB, touched
    report = bench.bench([str(colour_tflite["int8"])],
                         bench.BenchOptions(threads=(1,), runs=3, warmup=0),
                         echo=lambda s: None)
    row = report["results"][0]
    assert 0 < row["memory_mb"] <= row["peak_rss_mb"] < 400, row["peak_rss_mb"]
    del ballast


def test_bench_hands_over_frames_as_the_camera_does():
    """The classify path is timed on frames a capture thread has just converted from BGR (as
    tledge camera's does): the seeded RGB frames, a new array each time, made on another
    thread, and that conversion is not part of the timed call."""
    import threading

    from tledge.measure import bench
    stored = bench.frames(3)
    received = []

    def full(frame):
        received.append(frame)
        time.sleep(0.002)

    def slow_capture(i):
        time.sleep(0.2)
        return capture(i)

    with bench.Capture(stored) as capture:
        for i in (0, 9):
            frame = capture(i)
            np.testing.assert_array_equal(frame, stored[i % len(stored)])
            assert frame.flags.c_contiguous and not np.shares_memory(frame, stored)
        assert capture(1) is not capture(1)
        names = capture._pool.submit(lambda: threading.current_thread().name).result()
        assert names.startswith("tledge-capture")
        bare_ms, full_ms = bench._time_paired(lambda i: None, full, slow_capture, 4, 1)
    assert len(received) == 5 and len(full_ms) == 4 and max(full_ms) < 150  # capture untimed
    np.testing.assert_array_equal(received[-1], stored[3])


def test_bench_accuracy_and_bad_paths(colour_tflite, tmp_path):
    from tledge.measure import bench
    folder = tmp_path / "colours"
    from PIL import Image
    for label, rgb in zip(LABELS, ([220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 210, 40])):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), tuple(rgb)).save(folder / label / f"{i}.png")
    report = bench.bench([str(colour_tflite["int8"])],
                         bench.BenchOptions(threads=(1,), runs=3, warmup=0, data=str(folder)),
                         echo=lambda s: None)
    assert report["results"][0]["accuracy"] == 1.0
    with pytest.raises(TledgeError, match="does not exist"):
        bench.bench([str(tmp_path / "missing.tflite")], bench.BenchOptions(), echo=print)
    (tmp_path / "junk.tflite").write_bytes(b"junk" * 10)
    with pytest.raises(TledgeError, match="not a TFLite model"):
        bench.bench([str(tmp_path / "junk.tflite")], bench.BenchOptions(), echo=print)


def test_doctor_exits_nonzero_without_a_runtime(monkeypatch):
    from click.testing import CliRunner
    from tledge.cli import main

    monkeypatch.setattr(backends, "installed_version", lambda name: None)
    result = CliRunner().invoke(main, ["doctor", "--no-tensorflow"])
    assert result.exit_code == 1
    assert "no TFLite runtime can load a model" in result.output
    assert "pip install ai-edge-litert" in result.output


def test_evaluate_keeps_one_report_per_data_set(colour_tflite, tmp_path):
    """A second data set needs no --out: the default folder is named after the data."""
    from PIL import Image

    from helpers import cli

    model = tmp_path / "model_int8.tflite"
    model.write_bytes(colour_tflite["int8"].read_bytes())
    for name, size in (("day", 32), ("night shots", 24)):
        for label, rgb in zip(LABELS, COLOURS):
            (tmp_path / name / label).mkdir(parents=True)
            Image.new("RGB", (size, size), tuple(int(v) for v in rgb)).save(
                tmp_path / name / label / "1.png")
        result = cli("evaluate", model, "--data", tmp_path / name)
        assert result.exit_code == 0, result.output
    for folder in ("model_int8_evaluation_day", "model_int8_evaluation_night_shots"):
        report = json.loads((tmp_path / folder / "evaluation.json").read_text())
        assert report["accuracy"] == 1.0, folder
    again = cli("evaluate", model, "--data", tmp_path / "day")  # the same data: refused
    assert again.exit_code == 1 and "--overwrite" in again.output


@pytest.mark.parametrize("stem", ["unit_range_fp32", "unit_range_uint8", "signed_range_fp32"])
def test_another_tools_model_scores_as_mediapipe_tasks_does(stem, tmp_path):
    """Issue 24: a MediaPipe Model Maker classifier (float input in [0, 1], metadata mean 0 /
    std 255) scored 33.8% in tledge, which fed it raw pixels. The input's normalisation now
    comes from the metadata, in every command (they all classify through Classifier)."""
    import hashlib

    from helpers import MODELS, colour_set

    expected = json.loads((MODELS / "mediapipe_scores.json").read_text())
    images = colour_set(expected["per_class"], expected["seed"]).x
    assert hashlib.sha256(images).hexdigest() == expected["images_sha256"]
    clf = rt.Classifier(MODELS / f"{stem}.tflite")
    ours = clf.predict_batch(images)
    # one image at a time (scores() fills the input buffer itself), the same bits
    np.testing.assert_array_equal(clf.scores(images[0]), ours[0])
    theirs = np.array(expected["scores"][stem])
    # the same scores as MediaPipe Tasks: to a uint8 output's step, else to float rounding
    tolerance = 1 / 256 + 1e-6 if clf.output_dtype == np.uint8 else 1e-4
    np.testing.assert_allclose(ours, theirs, atol=tolerance)
    assert (ours.argmax(1) == np.repeat(np.arange(4), expected["per_class"])).all()
    # fed raw pixels, as before, the same model answers wrongly: the test can tell
    if clf.input_dtype == np.float32:
        raw = clf.invoke(images.astype(np.float32))
        assert (raw.argmax(1) != ours.argmax(1)).mean() >= 0.5


def test_a_float_model_without_normalisation_metadata_is_warned_once(tmp_path, caplog):
    """No metadata: raw pixels assumed (tledge's own files), said in one line, once a file."""
    import logging

    from helpers import MODELS
    from tledge.runtime.metadata import metadata_buffer

    stripped = tmp_path / "no_metadata.tflite"
    data = (MODELS / "unit_range_fp32.tflite").read_bytes()
    assert metadata_buffer(data) is not None
    # a flatbuffer with its metadata entry renamed reads as one without normalisation
    stripped.write_bytes(data.replace(b"TFLITE_METADATA", b"OTHER_METADATA_"))
    with caplog.at_level(logging.WARNING, logger="tledge"):
        clf = rt.Classifier(stripped)
        rt.Classifier(stripped)
    assert clf.normalization.is_identity
    warnings = [r.getMessage() for r in caplog.records if "normalisation metadata" in r.message]
    assert len(warnings) == 1 and "raw pixels 0..255" in warnings[0] and "\n" not in warnings[0]
