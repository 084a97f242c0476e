"""The bad-input and fault campaign: every case ends in one line naming the problem and the
fix, a non-zero exit, no traceback, and nothing the user had lost or half-written.

T is the campaign's tiny training command (MobileNetV2 0.35 at 32 px, random weights, a few
seconds an epoch)."""

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tledge.core import fileio, rundir
from tledge.core.errors import TledgeError

from helpers import cli, one_line_error, stub_run, tledge

T = ["train", "--data", "shapes", "--backbone", "mobilenet_v2", "--alpha", "0.35",
     "--image-size", "32", "--weights", "none", "--epochs-frozen", "1", "--epochs-finetune",
     "1", "--epochs-qat", "0", "--limit", "40"]


# ---------------------------------------------------------------- 1. one writer per run folder

def _holder(folder: Path, seconds: float = 30):
    """Another process that holds ``folder``'s lock."""
    code = ("import sys, time; from tledge import rundir\n"
            f"with rundir.lock({str(folder)!r}, 'tledge train (test holder)'):\n"
            "    print('locked', flush=True); time.sleep(float(sys.argv[1]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_run_folder_belongs_to_one_process(tmp_path):
    run = tmp_path / "R"
    holder = _holder(run)
    try:
        with pytest.raises(TledgeError, match=r"in use by another tledge process .*PID "
                                              rf"{holder.pid} on .*delete .*\.tledge\.lock"):
            with rundir.lock(run, "second"):
                pass
        # the CLI: refused in one line, before loading any data; the holder's folder untouched
        one_line_error(tledge(*T, "--out", run), "in use by another tledge process")
        assert sorted(p.name for p in run.iterdir()) == [rundir.LOCK]
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over
    assert (run / rundir.LOCK).exists()
    with rundir.lock(run, "after") as folder:
        holder_now = json.loads((folder / rundir.LOCK).read_text())
        assert holder_now["pid"] == os.getpid() and holder_now["command"] == "after"
    assert not (run / rundir.LOCK).exists()


@pytest.mark.slow
def test_two_trains_into_one_folder_never_mix(tmp_path):
    """The campaign's case: T --epochs-frozen 3 --out R & then T --image-size 48 --out R."""
    run = tmp_path / "R"
    first = tledge(*T, "--epochs-frozen", "3", "--out", run, background=True)
    deadline = time.time() + 120
    while not (run / rundir.LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    second = tledge(*[a if a != "32" else "48" for a in T], "--out", run)
    third = tledge(*[a if a != "32" else "48" for a in T], "--out", run, "--overwrite")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    one_line_error(second, "in use by another tledge process")
    one_line_error(third, "in use by another tledge process")  # --overwrite or not
    assert "image_size: 32" in (run / rundir.CONFIG).read_text()
    # TensorFlow's start-up noise is gone, and Keras prints one line per epoch in a log
    for noise in ("cuInit", "I0000", "E0000", "NodeDef", "absl::InitializeLog", "oneDNN"):
        assert noise not in err, err[-2000:]
    assert "\r" not in out and "\x08" not in out
    import re
    epoch_lines = [line for line in out.splitlines() if re.match(r"\d+/\d+ - .*val_accuracy", line)]
    assert len(epoch_lines) == 3 + 1, out
    # issue 41's first hour: each phase opens with a header, a one-epoch phase says "Epoch 1/1",
    # no unlabelled Keras line ("7/7 - 2s - 2s/epoch - 223ms/step"), no "INFO:" prefix
    assert "== phase 1/3 frozen: a new head on the frozen backbone, 3 epochs ==" in out, out
    assert "== phase 2/3 finetune: the backbone's top at a lower learning rate, 1 epoch ==" in out
    assert "Epoch 1/1" in out and "Epoch 1/3" in out
    assert not [line for line in out.splitlines() if re.match(r"\d+/\d+ - \S+ - \S+/epoch", line)]
    assert not [line for line in (out + err).splitlines() if line.startswith("INFO:")], err


# ---------------------------------------------------------------- 2. export: verify, then publish

@pytest.mark.slow
def test_an_interrupted_export_leaves_no_unverified_file(colour_run, tmp_path, monkeypatch):
    from tledge import export as ex
    from tledge.core.config import ExportOptions

    run, splits, _ = colour_run
    out = tmp_path / "export"
    calls = []

    class Interrupting:
        def __init__(self, path, *a, **k):
            calls.append(Path(path))
            raise KeyboardInterrupt

    monkeypatch.setattr("tledge.runtime.Classifier", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        ex.export(run, ExportOptions(formats=("int8",)), out=out, splits=splits,
                  echo=lambda s: None)
    assert calls and calls[0].name != "model_int8.tflite"  # verified under a temporary name
    assert not list(out.glob("*")) or sorted(p.name for p in out.iterdir()) == []
    monkeypatch.undo()
    # a rerun is not blocked by "already exists", and publishes file, report and card together
    ex.export(run, ExportOptions(formats=("int8",), max_drop=100), out=out, splits=splits,
              echo=lambda s: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "export_report.json", "labels.txt", "model_card.json", "model_int8.tflite"]


# ---------------------------------------------------------------- 3. a full disk

@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_a_failed_status(tiny_disk):
    run = tiny_disk / "run"
    proc = tledge(*T, "--out", run)
    one_line_error(proc, "no space left on the device")
    # the half-written model's space is freed: the failed status fits, and says so
    status = json.loads((run / rundir.METRICS).read_text())["status"]
    assert status.startswith("failed"), status
    assert not [p for p in run.rglob("*") if ".tmp" in p.name], "half-written temporary files"


@pytest.mark.slow
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(colour_run, tiny_disk):
    # fill the disk but for a few kilobytes: the lock fits, the model files do not
    with open(tiny_disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    (tiny_disk / "filler").write_bytes((tiny_disk / "filler").read_bytes()[:-16384])
    out = tiny_disk / "export"
    proc = tledge("export", colour_run[0], "--fp32", "--int8", "--out", out)
    one_line_error(proc, "no space left on the device")
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], left  # no half-written or unverified file, no lock


def test_disk_errors_from_h5py_and_keras_are_recognised():
    from tledge.core.errors import disk_error

    assert "no space left" in disk_error(OSError(28, "No space left on device", "/x/m.keras"))
    assert "no space left" in disk_error(OSError(
        "Unable to synchronously create file (file write failed: errno = 28, error message = "
        "'No space left on device')"))
    assert "read-only" in disk_error(OSError(30, "Read-only file system", "/ro/x"))
    assert disk_error(OSError(2, "No such file")) is None


# ---------------------------------------------------------------- 4, 5. unwritable outputs

@pytest.mark.parametrize("args", [
    ["train", "--out", "{file}/run"],
    ["train", "--out", "/proc/tledge-run"],
    ["evaluate", "{model}", "--data", "shapes", "--out", "{file}/eval"],
    ["bench", "{model}", "--json", "{file}/b.json"],
    ["bench", "{model}", "--markdown", "{file}/b.md"],
    ["camera", "--model", "{model}", "--output", "{file}/f.jsonl", "--headless"],
    ["camera", "--model", "{model}", "--record", "{file}/r.mp4", "--headless"],
])
def test_unwritable_outputs_are_refused_before_any_work(args, tmp_path):
    regular = tmp_path / "a_file"
    regular.write_text("precious")
    args = [a.replace("{file}", str(regular)).replace("{model}", str(tmp_path / "m.tflite"))
            for a in args]
    (tmp_path / "m.tflite").write_bytes(b"junk")  # never reached: outputs are checked first
    started = time.time()
    out = one_line_error(cli(*args), "cannot")
    assert "a_file" in out or "/proc" in out
    assert time.time() - started < 20
    assert regular.read_text() == "precious"


def test_read_only_mount_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m",
                                            "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("needs root to mount a read-only tmpfs")
    try:
        one_line_error(cli("train", "--out", ro / "run"), "not writable", "Read-only")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_bench_keeps_its_measurements_when_one_output_fails(tmp_path, monkeypatch):
    from tledge.measure import bench, benchreport

    report = {"machine": {"machine_id": "m", "cpu": "c", "cores": 1, "arch": "x", "os": "o",
                          "python": "3"}, "warnings": [], "options": {"runs": 3, "warmup": 0},
              "threads": [1], "results": [], "time": "now"}
    real = fileio.write_text

    def failing(path, text):
        if str(path).endswith(".md"):
            raise OSError(28, "No space left on device")
        return real(path, text)

    monkeypatch.setattr(bench.fileio, "write_text", failing)
    with pytest.raises(TledgeError, match=r"could not write .*b\.md .*No space.*b\.json"):
        benchreport.write_outputs(report, tmp_path / "b.json", tmp_path / "b.csv",
                                  tmp_path / "b.md", None, echo=lambda s: None)
    assert json.loads((tmp_path / "b.json").read_text())["machine"]["machine_id"] == "m"
    assert (tmp_path / "b.csv").is_file()


def test_a_failed_train_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "new" / "run"
    one_line_error(tledge(*T, "--unfreeze", "no_such_layer", "--out", out), "no_such_layer")
    assert not out.exists()


# ---------------------------------------------------------------- 6, 7. images

def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header then claims another size (a decompression bomb's header)."""
    import io
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_an_image_claiming_20000x20000_is_skipped_as_unreadable(tmp_path):
    from tledge.data.folder import load_folder
    from tledge.runtime import load_rgb

    bomb = tmp_path / "data" / "a" / "bomb.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(_png_claiming(20000, 20000))
    for label in "ab":
        for i in range(3):
            (tmp_path / "data" / label).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8), (200, 10 * i, 0)).save(tmp_path / "data" / label / f"{i}.png")
    with pytest.raises(TledgeError, match="too large to decode.*20000x20000"):
        load_rgb(bomb)
    images, classes, skipped = load_folder(tmp_path / "data", 32, None, 0)
    assert skipped == 1 and len(images) == 6


@pytest.mark.parametrize("writer", ["pillow", "opencv"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path, writer):
    from tledge.runtime import load_rgb
    from tledge.runtime.preprocess import load_image

    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    if writer == "pillow":
        Image.fromarray(ramp).save(path)
    else:
        import cv2
        cv2.imwrite(str(path), ramp)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # a 16-bit PNG indeed
    expected = np.round(ramp / 257.0)
    rgb = load_rgb(path)
    assert rgb.shape == (48, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - expected).max() <= 1
    assert (rgb == 255).mean() < 0.01  # before: 99% of pixels clipped to white
    assert abs(load_image(path, 32).mean() - 127.5) < 3  # training reads it the same way


# ---------------------------------------------------------------- 8-10. values

@pytest.mark.parametrize("args, fragments", [
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--lr-finetune", "inf"], ["--lr-finetune", "finite"]),
    (["--seed", "-1"], ["--seed", "at least 0"]),
    (["--alpha", "-1"], ["--alpha", "above 0"]),
    (["--unfreeze", "foo bar"], ["--unfreeze"]),
    (["--image-size", "100000"], ["--image-size", "at most"]),
])
def test_bad_values_are_refused_up_front(args, fragments, tmp_path):
    out = one_line_error(cli(*T, *args, "--out", tmp_path / "r"), *fragments)
    assert not (tmp_path / "r").exists(), out


@pytest.mark.parametrize("yaml_text, fragments", [
    ("data:\n  image_size: abc\n", ["data.image_size", "whole number"]),
    ("train:\n  seed: abc\n", ["train.seed", "whole number"]),
    ("data:\n  val_split: '0.5'\n", ["data.val_split", "a number"]),
    ("train:\n  frozen: 3\n", ["train.frozen", "mapping"]),
    ("model:\n  dropout: [1, 2]\n", ["model.dropout", "a number"]),
    ("data:\n  augment: maybe\n", ["data.augment", "true or false"]),
    ("- a\n- b\n", ["mapping"]),
])
def test_config_values_of_the_wrong_type_name_the_key(yaml_text, fragments, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    one_line_error(cli("train", "--config", path, "--out", tmp_path / "r"), *fragments)


def test_a_binary_config_file_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    one_line_error(cli("train", "--config", path, "--out", tmp_path / "r"), "not a text file")


@pytest.mark.slow
def test_a_nan_loss_stops_the_phase_with_a_failed_status(tiny_splits, tmp_path, monkeypatch):
    import tf_keras as keras

    from tledge.training import train as tr
    from helpers import tiny_config

    def poisoned(model, *args, **kwargs):
        # the loss goes NaN in the first steps, as with a huge learning rate or bad data
        layer = model.get_layer("predictions")
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * np.nan, bias])
        return real(model, *args, **kwargs)

    real = tr.frozen_phase
    monkeypatch.setattr(tr, "frozen_phase", poisoned)
    keras.backend.clear_session()
    with pytest.raises(TledgeError, match="phase frozen: the loss became NaN"):
        tr.train(tiny_config(feature_cache=False), tmp_path / "run", splits=tiny_splits,
                 echo=lambda s: None)
    metrics = json.loads((tmp_path / "run" / rundir.METRICS).read_text())
    assert metrics["status"].startswith("failed during frozen"), metrics
    assert metrics["phases_completed"] == []


@pytest.mark.parametrize("args, fragments", [
    (["export", "{run}", "--eval-limit", "0"], ["--eval-limit", "at least 1"]),
    (["export", "{run}", "--eval-limit", "-5"], ["--eval-limit", "at least 1"]),
    (["export", "{run}", "--max-drop", "nan"], ["--max-drop", "finite"]),
    (["predict", "{model}", "x.png", "--threads", "-1"], ["--threads", "-1"]),
    (["predict", "{model}", "x.png", "--top-k", "0"], ["--top-k", "0"]),
    (["bench", "{model}", "--threads", "0"], ["--threads", "1 or more"]),
    (["bench", "{model}", "--threads", "a,b"], ["--threads", "integers"]),
    (["camera", "--model", "{model}", "--max-frames", "0"], ["--max-frames"]),
])
def test_bad_command_options(args, fragments, tmp_path):
    (tmp_path / "run").mkdir()
    args = [a.replace("{run}", str(tmp_path / "run")).replace("{model}", str(tmp_path / "m"))
            for a in args]
    output = one_line_error(cli(*args), *fragments, code=(1, 2))  # Click (2) or tledge (1)
    assert "(0,)" not in output and "Traceback" not in output


@pytest.mark.parametrize("command", ["predict", "bench", "evaluate"])
def test_a_thread_count_past_the_cores_is_one_line_before_any_thread_starts(colour_tflite,
                                                                          tmp_path, command):
    """--threads 1000000 ended in SIGSEGV (the thread pool failed to start) and exhausted the
    machine's thread table: it is refused before an interpreter is made."""
    import cv2

    folder = tmp_path / "data" / "red"
    folder.mkdir(parents=True)
    cv2.imwrite(str(folder / "x.png"), np.zeros((8, 8, 3), np.uint8))
    model = str(colour_tflite["int8"])
    args = {"predict": ["predict", model, str(folder / "x.png"), "--threads", "1000000"],
            "bench": ["bench", model, "--threads", "1,1000000", "--runs", "3"],
            "evaluate": ["evaluate", model, "--data", str(tmp_path / "data"),
                         "--threads", "1000"]}[command]
    one_line_error(cli(*args), "--threads", "cores", "give 1 to")


def test_more_threads_than_cores_is_said(colour_tflite, caplog):
    import logging

    from tledge.runtime import Classifier

    with caplog.at_level(logging.WARNING, logger="tledge"):
        Classifier(colour_tflite["int8"], threads=(os.cpu_count() or 1) + 2)
    assert "more than this machine's" in caplog.text


# ---------------------------------------------------------------- 11, 12. models

@pytest.mark.parametrize("which, fragment", [("vector_in", "not an RGB image"),
                                             ("image_out", "not a vector of class scores")])
def test_a_tflite_that_is_not_an_image_classifier(not_classifiers, which, fragment, tmp_path):
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(image)
    model = not_classifiers[which]
    for args in (["predict", model, image], ["evaluate", model, "--data", "shapes"],
                 ["camera", "--model", model, "--source", tmp_path, "--headless"],
                 ["bench", model, "--runs", "3"]):
        one_line_error(tledge(*args), fragment)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate model.keras", "truncate model_qat.h5",
                                    "delete labels.txt"])
def test_a_damaged_run_is_one_line_naming_the_file(colour_run, tmp_path, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(colour_run[0], run)
    verb, name = damage.split()
    if verb == "truncate":
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])
    else:
        (run / name).unlink()
    image = tmp_path / "x.png"
    Image.new("RGB", (20, 20)).save(image)
    one_line_error(tledge("export", run, "--int8", "--out", tmp_path / "e"), name)
    if name != "model_qat.h5":
        one_line_error(tledge("predict", run, image), name)
    else:
        one_line_error(tledge("predict", run, image, "--qat"), name)


# ---------------------------------------------------------------- 13, 14. camera, predict

def test_a_source_that_never_delivers_a_frame_fails(colour_tflite, tmp_path, monkeypatch):
    from tledge.camera import CameraOptions, pipeline, run_camera

    monkeypatch.setattr(pipeline, "open_source", lambda spec, *sizes: pipeline.Source(
        "fake camera", True, lambda: (False, None, None), lambda: None, lambda: None))
    out = tmp_path / "frames.jsonl"
    with pytest.raises(TledgeError, match="fake camera delivered no frame"):
        run_camera(CameraOptions(model=str(colour_tflite["int8"]), source="0", headless=True,
                                 retries=0, output=str(out)), echo=lambda s: None)
    assert not out.exists()  # no 0-byte file to block the rerun


def test_an_all_corrupt_folder_leaves_no_output_file(colour_tflite, tmp_path):
    from tledge.camera import CameraOptions, run_camera

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"not a png")
    out = tmp_path / "frames.jsonl"
    with pytest.raises(TledgeError, match="could be decoded"):
        run_camera(CameraOptions(model=str(colour_tflite["int8"]), source=str(folder),
                                 headless=True, output=str(out)), echo=lambda s: None)
    assert not out.exists()


def test_predict_reports_every_file_then_fails(colour_tflite, tmp_path):
    good = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (50, 60, 220)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    proc = tledge("predict", colour_tflite["int8"], good, bad, tmp_path / "missing.jpg", good)
    assert proc.stdout.count(f"{good}: blue") == 2  # the files after the bad ones still ran
    assert f"{bad}: error:" in proc.stderr and "missing.jpg: error:" in proc.stderr
    one_line_error(proc, "2 of 4 image(s) could not be read")


# ---------------------------------------------------------------- 15. bench's messages

def test_bench_names_are_whole_and_errors_not_doubled(colour_tflite, not_classifiers, tmp_path):
    from tledge.measure import bench, benchreport

    long = tmp_path / "model_dynamic_with_a_long_name.tflite"
    long.write_bytes(colour_tflite["int8"].read_bytes())
    report = bench.bench([str(long)], bench.BenchOptions(threads=(1,), runs=3, warmup=0),
                         echo=lambda s: None)
    assert long.name in benchreport.format_table(report)
    with pytest.raises(TledgeError) as e:
        bench.run_worker({"model": str(not_classifiers["vector_in"]), "threads": 1,
                          "options": {"runs": 3, "warmup": 0}})
    assert "Error" not in str(e.value) and "not an RGB image" in str(e.value)


@pytest.mark.slow
def test_a_read_only_run_exports_elsewhere(colour_run, tmp_path):
    """A run on a read-only mount cannot take the lock file: it is checked, not locked."""
    import shutil

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                                            str(ro)], capture_output=True).returncode:
        pytest.skip("needs root to mount a tmpfs and remount it read-only")
    try:
        shutil.copytree(colour_run[0], ro / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        proc = tledge("export", ro / "run", "--fp32", "--out", tmp_path / "e")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / "e" / "model_fp32.tflite").is_file()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# ---------------------------------------------------------------- issue 37: paths

@pytest.mark.parametrize("command", ["evaluate --out", "bench --json", "camera --output",
                                     "train --out", "export --out"])
@pytest.mark.parametrize("bad", ["long", "loop"])
def test_a_path_the_file_system_cannot_take_is_one_line_before_any_work(colour_tflite, tmp_path,
                                                                       command, bad):
    """A name over 255 bytes was an OSError [Errno 36] traceback, a path under a symbolic link
    loop [Errno 40] or FileExistsError, some after minutes of work: refused first."""
    import cv2

    for name in ("red", "blue"):
        (tmp_path / "data" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / name / "x.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    stub_run(tmp_path / "run")  # export checks --out before it loads a model
    out = str(tmp_path / ("a" * 300 if bad == "long" else "loop1/out"))
    model, data = str(colour_tflite["int8"]), str(tmp_path / "data")
    args = {"evaluate --out": ["evaluate", model, "--data", data, "--out", out],
            "bench --json": ["bench", model, "--runs", "3", "--json", out + ".json"],
            "camera --output": ["camera", "--model", model, "--source", data, "--headless",
                                "--output", out + ".jsonl"],
            "train --out": ["train", "--data", data, "--out", out],
            "export --out": ["export", str(tmp_path / "run"), "--out", out]}[command]
    fragment = "over the 255" if bad == "long" else "loops or leads nowhere"
    start = time.monotonic()
    output = one_line_error(cli(*args), fragment)
    assert len(output) < 400 and time.monotonic() - start < 30
    assert not list(tmp_path.glob("*.json*"))


@pytest.mark.parametrize("code, fragment", [(36, "too long for the file system"),
                                            (40, "symbolic links loop"),
                                            (17, "exists and is not a folder"),
                                            (20, "a part of this path is a file")])
def test_a_path_error_met_anywhere_is_one_line(code, fragment):
    """What the checks before the work cannot foresee (a path made during it): the CLI turns
    the OSError into one line naming the path, shortened."""
    from tledge.core.errors import path_error

    text = path_error(OSError(code, os.strerror(code), "/tmp/" + "a" * 300 + "\x1b[2J"))
    assert fragment in text and "\x1b" not in text and len(text) < 250


# ---------------------------------------------------------------- issue 37: the camera's pacing

def _avi_claiming(path: Path, rate: int, scale: int) -> Path:
    """A 5-frame MJPG AVI whose header claims rate / scale frames a second."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
    for i in range(5):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    at = data.index(b"strh")
    struct.pack_into("<II", data, at + 28, scale, rate)  # dwScale, dwRate
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate, scale, args", [
    (1, 10 ** 9, ["--realtime"]),  # 1e-9 FPS: waited for ever after frame 1
    (10 ** 9, 1, ["--record", "{tmp}/out.avi"]),  # 1e9 FPS: --record blamed its output file
    (1, 10 ** 9, ["--record", "{tmp}/out.avi"]),
])
def test_a_video_header_claiming_an_absurd_frame_rate_is_not_believed(colour_tflite, tmp_path,
                                                                      rate, scale, args):
    video = _avi_claiming(tmp_path / "claims.avi", rate, scale)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = tledge("camera", "--model", str(colour_tflite["int8"]), "--source", str(video),
                  "--headless", *args, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "not believed" in proc.stderr and "5 frames" in proc.stdout + proc.stderr
    if "--record" in args:
        assert (tmp_path / "out.avi").stat().st_size > 0


@pytest.mark.parametrize("flag", ["--duration", "--serve-fps"])
def test_a_nan_camera_option_is_one_line(colour_tflite, flag):
    """--duration nan passed every range check and the camera never ended."""
    one_line_error(cli("camera", "--model", str(colour_tflite["int8"]), "--source", "0", flag,
                       "nan"), flag, "finite")


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    """kill -9 during export left a .model_fp32.tflite.PID.0.verifying file for ever, one more
    per kill. The folder's holder removes those of dead processes, never a live one's, never
    another file."""
    from tledge.core.fileio import remove_leftovers

    dead = subprocess.Popen(["true"])
    dead.wait()
    names = {f".model_fp32.tflite.{dead.pid}.0.verifying": True,
             ".model_int8.tflite.a1b2c3.tmp.tflite": True,
             ".export_report.json.x9.tmp.json": True,
             ".model_int8.tflite.1.0.verifying": False,  # pid 1 is alive
             ".tledge.lock": False, ".keep": False, "model_int8.tflite": False,
             ".notes.txt.x9.tmp.txt": False}  # not a file export writes
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    gone = remove_leftovers(tmp_path, lambda n: n.startswith("model_") or n == "export_report.json")
    assert sorted(gone) == sorted(n for n, removed in names.items() if removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, removed in names.items() if not removed)
