"""The Raspberry Pi path on this machine: a crashing backend, the Pi camera's colours and its
ISP-scaled stream, a readable overlay, and one line where a [pi] install lacks TensorFlow.
(tests/test_pi_emulated.py runs the same commands on an emulated arm64 Raspberry Pi OS.)"""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

import tledge.runtime as rt
import tledge.runtime.backends as backends
from tledge.core.errors import TledgeError
from tledge.runtime import probe

from helpers import LABELS, stub_run, tledge

FAKES = Path(__file__).resolve().parent / "fakes"
# crashing_litert: a stand-in that segfaults; shadow/ai_edge_litert: the same, under LiteRT's name
SHADOW = FAKES / "shadow"


@pytest.fixture
def fresh_backends(monkeypatch, tmp_path):
    """An empty probe cache and no backend loaded yet in this process."""
    monkeypatch.setenv("TLEDGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(backends, "_warned", set())
    return tmp_path / "cache" / probe.CACHE_FILE


def test_probe_reports_a_crash_as_a_signal(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    result = probe.run_child("crashing_litert.interpreter")
    assert not result.ok and result.detail == "crashed with SIGSEGV"
    assert probe.run_child("ai_edge_litert.interpreter").ok  # the real one, beside it
    missing = probe.run_child("no_such_backend.interpreter")
    assert not missing.ok and "No module named" in missing.detail


def test_a_crashing_backend_is_skipped_for_the_next_one_and_cached(monkeypatch, caplog,
                                                                     fresh_backends):
    monkeypatch.syspath_prepend(str(FAKES))
    # Slot 1 holds the crashing stand-in, slot 2 the real LiteRT.
    monkeypatch.setitem(backends._MODULES, "litert", "crashing_litert.interpreter")
    monkeypatch.setitem(backends._MODULES, "tflite_runtime", "ai_edge_litert.interpreter")
    monkeypatch.setitem(backends._DISTS, "tflite_runtime", ("ai-edge-litert",))
    with caplog.at_level(logging.WARNING, logger="tledge"):
        backend = rt.get_backend()
    assert backend.name == "tflite_runtime"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "litert" in warning and "crashed with SIGSEGV" in warning
    assert "using tflite_runtime" in warning
    cache = json.loads(fresh_backends.read_text())
    assert sorted(v["ok"] for v in cache.values()) == [False, True]
    # Later calls and later processes use the cache: no child process.
    monkeypatch.setattr(backends, "_loaded", {})
    monkeypatch.setattr(probe, "run_child", lambda module: pytest.fail("probed again"))
    assert rt.get_backend().name == "tflite_runtime"
    with pytest.raises(TledgeError, match="crashed with SIGSEGV.*tledge doctor"):
        rt.get_backend("litert")


@pytest.mark.parametrize("block_tensorflow", [True, False], ids=["pi-install", "train-install"])
def test_cli_never_shows_a_bare_segfault(tmp_path, block_tensorflow):
    """``ai_edge_litert`` itself replaced by a stand-in that segfaults in Interpreter(...).
    With no other backend: one line and exit 1, and doctor shows the probe. With TensorFlow's
    interpreter at hand: a one-line warning, and the prediction."""
    from PIL import Image

    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(image)
    env = {"PYTHONPATH": str(SHADOW), "TLEDGE_CACHE_DIR": str(tmp_path / "cache")}
    proc = tledge("predict", str(probe.PROBE_MODEL), str(image), env=env,
                   block_tensorflow=block_tensorflow)
    assert "Traceback" not in proc.stderr and proc.returncode in (0, 1), proc.stderr[-1500:]
    if block_tensorflow:
        assert proc.returncode == 1
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "litert" in errors[0] and "crashed with SIGSEGV" in errors[0]
        doctor = tledge("doctor", "--no-tensorflow", env=env, block_tensorflow=True)
        assert doctor.returncode == 1
        assert "crashed with SIGSEGV (cached)" in doctor.stdout
    else:
        assert proc.returncode == 0 and proc.stdout.startswith(f"{image}: ")
        warnings = [line for line in proc.stderr.splitlines() if "crashed with SIGSEGV" in line]
        assert len(warnings) == 1 and "using tensorflow" in warnings[0]


def test_doctor_tells_the_truth_about_tensorflow(fresh_backends):
    doctor = tledge("doctor", "--no-tensorflow",
                    env={"TLEDGE_CACHE_DIR": str(fresh_backends.parent)})
    assert doctor.returncode == 0, doctor.stderr
    tf_line = next(line for line in doctor.stdout.splitlines()
                   if line.split()[:1] == ["tensorflow"])
    assert "not installed" not in tf_line and "not checked (--no-tensorflow)" in tf_line
    assert "probe: ok" in doctor.stdout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")  # chosen on purpose
def test_tensorflow_backend_is_what_it_says(fresh_backends, colour_tflite):
    """TensorFlow's interpreter is tf.lite.Interpreter (the public API), which importing the
    module "tensorflow.lite" does not give; where it is missing, say so, not "install it"."""
    import tensorflow as tf

    if hasattr(tf.lite, "Interpreter"):
        clf = rt.Classifier(colour_tflite["int8"], backend="tensorflow")
        assert clf.backend == "tensorflow"
        assert clf.classify(np.full((20, 20, 3), (50, 60, 220), np.uint8))[0].label == "blue"
    else:
        with pytest.raises(TledgeError) as e:
            rt.get_backend("tensorflow")
        assert "Interpreter" in str(e.value) and "--backend litert" in str(e.value)


# ------------------------------------------------------------------ the Pi camera

@pytest.fixture
def picamera(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    sys.modules.pop("picamera2", None)
    import picamera2

    picamera2.instances.clear()
    yield picamera2
    sys.modules.pop("picamera2", None)


def test_picamera_frames_reach_the_model_in_the_right_colours(picamera):
    from tledge.camera import open_source

    main_only = open_source("picamera")
    ok, bgr, small = main_only.read()
    main_only.release()
    assert ok and small is None and bgr.shape == (480, 640, 3)
    assert picamera.instances[-1].config["main"]["format"] == "RGB888"
    # the scene is red: OpenCV's BGR puts red last
    assert bgr[..., 2].mean() > 200 and bgr[..., 0].mean() < 30

    with_lores = open_source("picamera", model_size=(32, 32))
    ok, bgr, small = with_lores.read()
    with_lores.release()
    config = picamera.instances[-1].config
    assert config["lores"]["format"] == "YUV420" and config["lores"]["size"][1] == 32
    assert small.shape == (32, 32, 3)  # cropped to the requested size after the ISP's alignment
    assert small[..., 0].mean() > 200 and small[..., 2].mean() < 40  # RGB: red first


def test_picamera_run_classifies_red_from_the_lores_stream(picamera, colour_tflite, tmp_path,
                                                           monkeypatch):
    from tledge.camera import CameraOptions, pipeline, run_camera

    seen = []
    real = pipeline.load_frame_model

    def spy(*args):
        model = real(*args)
        prepare = model.prepare
        model.prepare = lambda rgb: (seen.append(rgb.shape), prepare(rgb))[1]
        return model

    monkeypatch.setattr(pipeline, "load_frame_model", spy)
    out, rec = tmp_path / "frames.jsonl", tmp_path / "rec.mp4"
    summary = run_camera(CameraOptions(model=str(colour_tflite["int8"]), source="picamera",
                                       headless=True, max_frames=6, output=str(out),
                                       record=str(rec), threads=1), echo=lambda s: None)
    assert summary.frames == 6
    labels = {json.loads(line)["top_k"][0][0] for line in out.read_text().splitlines()}
    assert labels == {"red"}, labels
    # inference got the ISP-scaled lores frames, never the 640x480 main stream
    assert seen and set(seen) == {(32, 32, 3)}
    import cv2
    ok, frame = cv2.VideoCapture(str(rec)).read()  # the recording is the main stream, in colour
    assert ok and frame.shape == (480, 640, 3)
    assert frame[300:, :, 2].mean() > 180 and frame[300:, :, 0].mean() < 60


def test_v4l2_capture_size_follows_the_model():
    from tledge.camera.sources import capture_size_for, picamera_lores_size

    assert capture_size_for((224, 224)) == (320, 240)
    assert capture_size_for((96, 96)) == (160, 120)
    assert capture_size_for((260, 260)) == (352, 288)
    assert capture_size_for((300, 300)) == (640, 480)
    assert capture_size_for((4000, 4000)) == (1920, 1080)
    assert picamera_lores_size((225, 223)) == (224, 226)
    assert picamera_lores_size((1000, 1000)) == (640, 480)


def test_overlay_text_sits_on_a_panel_that_fits_it():
    """On rendered pixels: every text pixel lies on the dark panel with a margin on each side
    that scales with the font (measured on the glyphs drawn, so it holds for any OpenCV font:
    5.1 draws another typeface than 4.x and 5.0), even left and right, and text and panel
    contrast."""
    import cv2
    from tledge.camera.outputs import Packet
    from tledge.camera.overlay import draw_overlay
    from tledge.runtime import Class

    class M:
        name = "model_int8.tflite"

    for height in (240, 480, 720, 1080):
        frame = np.full((height, height * 4 // 3, 3), 235, np.uint8)  # a bright scene
        packet = Packet(0, 0.0, frame, [], {"inference": 12.3},
                        [[Class(0, "a_rather_long_label_name", 0.91), Class(1, LABELS[1], 0.05)]])
        img = draw_overlay(packet, [M()], {"n": 0, "agree": 0}, {})
        changed = np.any(img != frame, axis=2)
        ys, xs = np.nonzero(changed)
        assert xs.min() == 0 and ys.min() == 0  # the panel starts at the corner
        x1, y1 = xs.max() + 1, ys.max() + 1
        panel = img[:y1, :x1].astype(int)
        text = panel[..., 1] > 150  # the green of the first model's text (80, 255, 80)
        background = ~text & (np.abs(panel - panel[0, 0]).sum(axis=2) == 0)
        assert text.sum() > 50
        assert background.mean() > 0.6 and panel[0, 0].max() < 90  # a dark panel
        # the font's size on these pixels: the height of the first line's ink
        rows = text.any(axis=1)
        first = np.nonzero(rows)[0][0]
        line = first + np.argmin(rows[first:])  # the first row without ink below the first line
        glyph = line - first
        assert glyph >= 6 * height / 720  # the text grows with the frame
        tx, ty = np.nonzero(text.any(axis=0))[0], np.nonzero(rows)[0]
        margins = {"left": tx.min(), "right": x1 - 1 - tx.max(),
                   "top": ty.min(), "bottom": y1 - 1 - ty.max()}
        for side, margin in margins.items():
            assert 1 <= margin <= glyph, f"{height} px frame: {side} margin {margin} px, " \
                f"glyphs {glyph} px high"
        assert abs(margins["left"] - margins["right"]) <= max(2, glyph // 4), margins
        assert panel[text][:, 1].mean() - panel[background][:, 1].mean() > 120
    # OpenCV's width depends on thickness: measuring at one and drawing at another misfits
    w1 = cv2.getTextSize("a_rather_long_label_name 0.91", 0, 0.5, 1)[0][0]
    w3 = cv2.getTextSize("a_rather_long_label_name 0.91", 0, 0.5, 3)[0][0]
    assert w1 <= w3


# ------------------------------------------------------------------ a [pi] install

def _without_tensorflow(args, tmp_path):
    """Run the CLI as a [pi] install would: the training stack cannot be imported."""
    return tledge(*args, env={"TLEDGE_CACHE_DIR": str(tmp_path)}, block_tensorflow=True)


def test_commands_that_need_tensorflow_say_so_in_one_line(colour_tflite, tmp_path):
    run = stub_run(tmp_path / "run")
    from PIL import Image
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20), (200, 30, 30)).save(image)
    cases = [["train", "--data", "shapes", "--out", tmp_path / "r"],
             ["export", run, "--int8", "--out", tmp_path / "e"],
             ["predict", run, image],
             ["evaluate", run, "--data", "shapes", "--out", tmp_path / "ev"],
             ["camera", "--model", colour_tflite["int8"], "--compare", run, "--source",
              tmp_path, "--headless"],
             ["bench", run]]
    for args in cases:
        proc = _without_tensorflow(args, tmp_path)
        assert proc.returncode == 1, (args, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr, (args, proc.stderr[-1500:])
        errors = [line for line in proc.stderr.splitlines()
                  if line.strip() and not line.startswith("INFO: Created TensorFlow Lite")]
        assert len(errors) == 1 and 'pip install "tledge[train]"' in errors[0], (args, errors)
    # and what a Pi runs still works
    ok = _without_tensorflow(["predict", colour_tflite["int8"], image], tmp_path)
    assert ok.returncode == 0 and "red" in ok.stdout, ok.stderr[-1500:]
