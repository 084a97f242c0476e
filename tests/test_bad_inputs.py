"""Bad inputs of the second campaign, each one line or a counted skip, never a hang or a
traceback: YAML bombs, pipes and broken links among images, labels files that do not fit,
environment variables. No TensorFlow: models are committed .tflite files."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, tledge, write_video

MODEL = Path(__file__).parent / "models" / "hard_swish_int8.tflite"  # 3 classes, 32x32


def _billion_laughs(path: Path) -> Path:
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path.write_text("x:\n" + "\n".join("  " + line for line in levels) +
                    "\ndata:\n  source: *i\n")
    return path


def _deep(path: Path) -> Path:
    path.write_text("data:\n  source: " + "[" * 20000 + "]" * 20000 + "\n")
    return path


def _wide(path: Path) -> Path:
    path.write_text("data:\n  source: [" + ", ".join(["[1, 2]"] * 10000) + "]\n")
    return path


@pytest.mark.parametrize("write, fragment", [
    (_billion_laughs, "aliases (*name) are not allowed"), (_deep, "nested too deeply"),
    (_wide, "data.source")])
def test_yaml_bombs_are_one_line_at_once(tmp_path, write, fragment):
    config = write(tmp_path / "config.yaml")
    line = one_line_error(tledge("train", "--config", config, timeout=60), fragment)
    assert len(line) < 400, line  # the value is shown cut, never formatted whole
    run = tmp_path / "run"  # a run's config.yaml read by export: the same loader
    run.mkdir()
    (run / "config.yaml").write_bytes(config.read_bytes())
    (run / "model.keras").write_bytes(b"")
    (run / "labels.txt").write_text("a\nb\n")
    from tledge.core.config import RunConfig
    from tledge.core.errors import TledgeError

    with pytest.raises(TledgeError, match="config file|data.source"):
        RunConfig.from_yaml(run / "config.yaml")


@pytest.fixture
def folder_with_traps(tmp_path):
    """Two classes of real images, plus a named pipe, a dangling link and a link loop."""
    root = tmp_path / "data"
    for label, rgb in (("a", (220, 30, 30)), ("b", (30, 30, 220))):
        (root / label).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 40), rgb).save(root / label / f"{i}.png")
    os.mkfifo(root / "a" / "pipe.png")
    os.symlink("nowhere.png", root / "b" / "dangling.png")
    os.symlink("loop.png", root / "b" / "loop.png")
    return root


def test_pipes_and_broken_links_are_skipped_and_counted(folder_with_traps, tmp_path):
    from tledge.data.folder import scan_folder

    paths, labels, classes, others = scan_folder(folder_with_traps)
    assert len(paths) == 4 and len(others) == 3 and classes == ["a", "b"]

    predict = tledge("predict", MODEL, folder_with_traps / "a" / "pipe.png",
                     folder_with_traps / "b" / "dangling.png", folder_with_traps / "a" / "0.png",
                     timeout=60)
    assert "not a regular file" in predict.stderr and "Traceback" not in predict.stderr
    assert "0.png: " in predict.stdout  # the good image still gets its line
    camera = tledge("camera", "--model", MODEL, "--source", folder_with_traps, "--headless",
                    timeout=60)
    assert camera.returncode == 0, camera.stderr[-2000:]
    assert "4 frames" in camera.stdout, camera.stdout


def test_a_camera_folder_sees_what_training_sees(tmp_path):
    """Transparent PNGs composited onto white, by the one image loader."""
    from tledge.camera import open_source
    from tledge.runtime import load_rgb

    (tmp_path / "f").mkdir()
    Image.new("RGBA", (8, 8), (10, 200, 10, 0)).save(tmp_path / "f" / "clear.png")
    Image.new("LA", (8, 8), (0, 128)).save(tmp_path / "f" / "grey.png")
    source = open_source(str(tmp_path / "f"))
    for name in ("clear.png", "grey.png"):
        ok, bgr, rgb = source.read()
        assert ok and np.array_equal(rgb, load_rgb(tmp_path / "f" / name))
        assert np.array_equal(bgr, rgb[:, :, ::-1])
    assert np.all(load_rgb(tmp_path / "f" / "clear.png") == 255)


def test_a_labels_file_that_does_not_fit_is_said_and_not_used(tmp_path, caplog):
    from tledge.runtime import Classifier

    model = tmp_path / "model.tflite"
    model.write_bytes(MODEL.read_bytes())
    (tmp_path / "labels.txt").write_text("cat\ndog\n")  # 2 names, 3 outputs
    with caplog.at_level("WARNING"):
        clf = Classifier(model, threads=1)
    assert clf.labels == ["0", "1", "2"]
    assert "names 2 classes but model.tflite has 3 outputs" in caplog.text
    (tmp_path / "labels.txt").write_bytes("café\nnaïve\nü\n".encode("latin-1"))
    assert Classifier(model, threads=1).labels == ["café", "naïve", "ü"]
    (tmp_path / "labels.txt").write_bytes("\ufeffa\r\nb\r\nc\r\n".encode("utf-8"))
    assert Classifier(model, threads=1).labels == ["a", "b", "c"]


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e9"])
def test_a_bad_image_limit_is_one_line_naming_the_variable(tmp_path, value):
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    proc = tledge("predict", MODEL, image, env=dict(os.environ, TLEDGE_MAX_IMAGE_PIXELS=value),
                  timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "TLEDGE_MAX_IMAGE_PIXELS must be a whole number" in proc.stderr


def test_a_recording_in_a_format_opencv_cannot_write_is_refused_first(tmp_path):
    video = write_video(tmp_path / "in.mp4", frames=5)
    proc = tledge("camera", "--model", MODEL, "--source", video, "--headless", "--record",
                  tmp_path / "r.xyz", timeout=60)
    one_line_error(proc, "--record", ".mp4")
    assert not (tmp_path / "r.xyz").exists() and "frames in" not in proc.stdout


def test_a_recording_that_fills_the_disk_is_not_published(tmp_path, tiny_disk):
    video = write_video(tmp_path / "in.mp4", frames=300, size=(640, 480))
    target = tiny_disk / "r.mp4"
    proc = tledge("camera", "--model", MODEL, "--source", video, "--headless", "--record",
                  target, timeout=120)
    one_line_error(proc, "was not written whole", "r.mp4")
    assert list(tiny_disk.iterdir()) == []  # neither the file nor its temporary twin


@pytest.mark.parametrize("cluster, fragment", [
    ({"worker": "host1:2222"}, "must be a list"),
    ({"worker": ["host1:abc", "host2:2222"]}, "port from 1 to 65535"),
    ({"worker": ["host1:2222", "host2:99999"]}, "port from 1 to 65535"),
    ({"worker": ["host1:2222", 7]}, "is not host:port"),
    ({"worker": ["127.0.0.1:2222", "127.0.0.1:2222"]}, "more than once")])
def test_a_cluster_description_tf_would_hang_or_crash_on_is_one_line(monkeypatch, cluster,
                                                                     fragment):
    import json

    from tledge.core.errors import TledgeError
    from tledge.training.distribution import worker_role

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(TledgeError, match=fragment):
        worker_role("multi-worker")


@pytest.mark.parametrize("name", [
    "two\nlines", "para\u2029graph", " padded", "tab\there",
    b"caf\xe9".decode("utf-8", "surrogateescape")])
def test_a_class_name_that_cannot_round_trip_is_refused_before_work(tmp_path, name):
    from tledge.data.folder import scan_folder
    from tledge.core.errors import TledgeError

    root = tmp_path / "data"
    for label in (name, "ok"):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / label / "1.png")
    with pytest.raises(TledgeError, match="rename the folder"):
        scan_folder(root)


@pytest.mark.parametrize("name", ["日本語", "with space", "a,b;c", "ünïcödé", "x" * 200])
def test_unusual_but_faithful_class_names_round_trip(tmp_path, name):
    """What scan_folder accepts comes back the same through labels.txt and the metadata's."""
    from tledge.data.folder import scan_folder
    from tledge.runtime import read_labels_file

    root = tmp_path / "data"
    for label in (name, "ok"):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / label / "1.png")
    _, _, classes, _ = scan_folder(root)
    (tmp_path / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    assert read_labels_file(tmp_path / "labels.txt") == classes
