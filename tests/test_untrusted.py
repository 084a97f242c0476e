"""A .tflite from elsewhere is untrusted input to native code; SIGTERM and SIGHUP are not
Ctrl-C unless tledge makes them so. No TensorFlow: the models are committed files, altered
here the way a damaged download or a hostile file would be."""

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, tledge

PROBE = Path(__file__).parents[1] / "tledge" / "runtime" / "probe.tflite"


def _altered(tmp_path: Path, change) -> Path:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(PROBE.read_bytes()), 0)
    change(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), b"TFL3")
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(bytes(builder.Output()))
    return path


def _huge_scale(model):
    # one per-channel weight scale of the first convolution set to 2e20: LiteRT's XNNPACK
    # preparation frees memory twice (SIGABRT) on it
    tensor = model.subgraphs[0].tensors[2]
    scale = list(tensor.quantization.scale)
    scale[0] = 2e20
    tensor.quantization.scale = scale


def _emptied_weights(model):
    # the dense layer's weights emptied: "Input tensor N lacks data" at invoke()
    tensor = next(t for t in model.subgraphs[0].tensors if b"MatMul" in (t.name or b""))
    model.buffers[tensor.buffer].data = None


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for label, rgb in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (folder / label).mkdir(parents=True)
        Image.new("RGB", (24, 24), rgb).save(folder / label / "1.png")
    return folder


@pytest.mark.parametrize("change, fragment", [(_huge_scale, "cannot be run safely"),
                                              (_emptied_weights, "lacks data")])
def test_a_damaged_model_is_one_error_line_in_every_command(tmp_path, images, change,
                                                            fragment):
    model = _altered(tmp_path, change)
    image = images / "a" / "1.png"
    for args in (["predict", model, image], ["evaluate", model, "--data", images, "--out",
                                             tmp_path / "ev"],
                 ["camera", "--model", model, "--source", images / "a", "--headless",
                  "--max-frames", "1"],
                 ["bench", model, "--runs", "3", "--threads", "1"]):
        line = one_line_error(tledge(*args, timeout=120), str(model.name))
        assert fragment in line, (args[0], line)


def test_a_healthy_model_is_checked_once(tmp_path, images, monkeypatch):
    """The check in a child process is cached by the file's content: a second load starts no
    child process."""
    from tledge.runtime import Classifier, probe

    monkeypatch.setenv("TLEDGE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "model.tflite"
    path.write_bytes(PROBE.read_bytes())
    calls = []
    real = probe._run_script
    monkeypatch.setattr(probe, "_run_script", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(2):
        Classifier(path, threads=1).classify(np.zeros((16, 16, 3), np.uint8))
    assert len([c for c in calls if c[0] is probe._CHILD and len(c[1]) == 2]) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_bench_like_ctrl_c(tmp_path, sig):
    """bench measures in a child process: a termination signal ends both, the usual way."""
    model = tmp_path / "probe.tflite"
    model.write_bytes(PROBE.read_bytes())
    proc = tledge("bench", model, "--runs", "100000000", "--threads", "1", background=True)
    child = None
    try:
        deadline = time.time() + 60
        while child is None and time.time() < deadline:
            found = subprocess.run(["pgrep", "-f", f"tledge.measure.bench .*{model}"],
                                   capture_output=True, text=True).stdout.split()
            child = int(found[0]) if found else None
            time.sleep(0.2)
        assert child, "the measuring child never started"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
        assert "Traceback" not in err and "Interrupted" in err, err[-2000:]
        time.sleep(0.5)
        cmdline = Path(f"/proc/{child}/cmdline")
        assert not cmdline.exists(), "the measuring child outlived bench"
    finally:  # never leave a spinning process behind, whatever failed
        proc.kill()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def test_sigterm_ends_the_camera_with_its_outputs_written(tmp_path):
    """systemctl stop or a dropped SSH session: the camera ends as on Ctrl-C (its summary, exit
    0: stopping a camera is how it ends), the recording and the JSON lines published, and no
    temporary file stays."""
    import json

    from helpers import write_video

    video = write_video(tmp_path / "in.mp4", frames=40, size=(160, 120))
    model = Path(__file__).parent / "models" / "hard_swish_int8.tflite"
    proc = tledge("camera", "--model", model, "--source", video, "--loop", "--headless",
                  "--record", tmp_path / "out.mp4", "--output", tmp_path / "out.jsonl",
                  background=True, cwd=tmp_path)
    try:
        deadline = time.time() + 60  # until frames have reached both outputs
        while time.time() < deadline and not (
                list(tmp_path.glob(".out.mp4*"))
                and any(p.stat().st_size for p in tmp_path.glob(".out.jsonl*"))):
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "(interrupted)" in out, (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    assert (tmp_path / "out.mp4").stat().st_size > 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["frame"] >= 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
