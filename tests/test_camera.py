"""tledge camera on a video the test writes itself with OpenCV, and on a folder of images."""

import json

import numpy as np
import pytest

from helpers import COLOURS, LABELS, one_line_error, tledge, write_video
from tledge.camera import CameraOptions, run_camera
from tledge.core.errors import TledgeError

cv2 = pytest.importorskip("cv2")
N_FRAMES = 24


@pytest.fixture(scope="module")
def colour_video(tmp_path_factory):
    """24 frames, 6 of each colour, at 80x60 with a little noise, as mp4."""
    def frame(i, rng):
        rgb = COLOURS[i // 6][None, None, :] + rng.normal(0, 10, (60, 80, 3))
        return cv2.cvtColor(np.clip(rgb, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)

    path = write_video(tmp_path_factory.mktemp("video") / "colours.mp4", frames=N_FRAMES,
                       size=(80, 60), fps=12.0, frame=frame)
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) == N_FRAMES
    return path


def test_headless_video_with_output_compare_and_record(colour_tflite, colour_video, tmp_path):
    out, rec = tmp_path / "frames.jsonl", tmp_path / "annotated.mp4"
    lines = []
    summary = run_camera(CameraOptions(
        model=str(colour_tflite["int8"]), source=str(colour_video),
        compare=str(colour_tflite["fp32"]), headless=True, output=str(out), record=str(rec),
        threads=1, top_k=2), echo=lines.append)
    assert summary.frames == N_FRAMES and summary.reason == "end of source"
    assert summary.corrupt == 0 and summary.dropped == 0
    assert set(summary.stages) == {"capture", "preprocess", "inference", "compare", "overlay"}
    assert summary.agreement is not None and summary.agreement >= 0.9
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(N_FRAMES))
    for r in records:
        assert {"frame", "timestamp", "top_k", "latency_ms", "compare_top_k", "agree"} <= set(r)
        assert len(r["top_k"]) == 2 and set(r["latency_ms"]) == {"model_int8.tflite",
                                                                  "model_fp32.tflite"}
    predicted = [r["top_k"][0][0] for r in records]
    assert predicted[:6] == ["red"] * 6 and predicted[-6:] == ["yellow"] * 6
    video = cv2.VideoCapture(str(rec))
    assert video.get(cv2.CAP_PROP_FRAME_COUNT) == N_FRAMES
    ok, frame = video.read()
    assert ok and frame.shape == (60, 80, 3)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"
    assert "agreement" in summary.format()


def test_max_frames_and_folder_of_images(colour_tflite, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, rgb in enumerate(COLOURS):
        cv2.imwrite(str(folder / f"{i}_{LABELS[i]}.png"),
                    np.full((30, 40, 3), rgb[::-1], np.uint8))
    (folder / "9_broken.png").write_bytes(b"not a png")
    summary = run_camera(CameraOptions(model=str(colour_tflite["int8"]), source=str(folder),
                                       headless=True, output=str(tmp_path / "o.jsonl")),
                         echo=lambda s: None)
    assert summary.frames == 4 and summary.corrupt == 1
    labels = [json.loads(x)["top_k"][0][0] for x in (tmp_path / "o.jsonl").read_text().split("\n")
              if x]
    assert labels == LABELS
    short = run_camera(CameraOptions(model=str(colour_tflite["int8"]), source=str(folder),
                                     headless=True, max_frames=2), echo=lambda s: None)
    assert short.frames == 2 and short.reason == "--max-frames 2"


def test_live_dropout_is_retried_with_backoff_then_reported(colour_tflite, monkeypatch):
    """A live camera that stops giving frames is reopened with a growing delay; frames after a
    reconnection are classified; after --retries failures in a row the run ends and says why."""
    import time

    from tledge.camera import pipeline

    bgr = np.full((60, 80, 3), COLOURS[2][::-1], np.uint8)
    script = ["frame"] * 3 + ["gone"] + ["frame"] * 3
    reopened = []

    def read():
        time.sleep(0.01)
        return (True, bgr.copy(), None) if script and script.pop(0) == "frame" else \
            (False, None, None)

    monkeypatch.setattr(pipeline, "open_source", lambda spec, *sizes: pipeline.Source(
        "fake camera", True, read, lambda: reopened.append(time.perf_counter()), lambda: None))
    lines = []
    start = time.perf_counter()
    summary = run_camera(CameraOptions(model=str(colour_tflite["int8"]), source="0",
                                       headless=True, retries=2), echo=lines.append)
    assert summary.reason == "fake camera dropped out"
    assert summary.frames + summary.dropped == 6 and summary.frames >= 2
    # one drop-out in the middle (0.5 s), then two in a row at the end (0.5 s, 1 s)
    assert len(reopened) == 3
    assert reopened[2] - reopened[1] >= 0.9 and reopened[-1] - start >= 2.0
    warnings = [line for line in lines if "gave no frame" in line]
    assert [w.split("retry ")[1].split(" ")[0] for w in warnings] == ["1/2", "1/2", "2/2"]


@pytest.mark.parametrize("source, message", [
    ("7", "cannot open camera 7: cameras found"),
    ("/no/such/video.mp4", "neither a camera index"),
])
def test_bad_source_fails_cleanly(colour_tflite, source, message):
    with pytest.raises(TledgeError, match=message):
        run_camera(CameraOptions(model=str(colour_tflite["int8"]), source=source, headless=True),
                   echo=lambda s: None)


def test_missing_model_and_cli_one_line_error(colour_video, tmp_path):
    with pytest.raises(TledgeError, match="does not exist"):
        run_camera(CameraOptions(model=str(tmp_path / "none.tflite"), source=str(colour_video)))
    one_line_error(tledge("camera", "--model", tmp_path / "none.tflite", "--source",
                          colour_video, "--headless", timeout=120), "does not exist")


def test_a_watched_video_plays_at_its_own_frame_rate_and_a_headless_one_flat_out(
        colour_tflite, colour_video):
    """Issue 24: --loop with --serve replayed a 30 FPS file at 175-300 FPS, a flicker."""
    from tledge import camera
    from tledge.camera.outputs import StatusLineOutput, WindowOutput
    from tledge.camera.serve import ServeOutput

    model = str(colour_tflite["int8"])
    flat = run_camera(CameraOptions(model=model, source=str(colour_video), headless=True,
                                    threads=1), echo=lambda s: None)
    timed = run_camera(CameraOptions(model=model, source=str(colour_video), headless=True,
                                     threads=1, realtime=True), echo=lambda s: None)
    assert flat.frames == timed.frames == N_FRAMES
    # 24 frames at the file's 12 FPS: 23 intervals, 1.92 s from the first to the last
    assert 1.8 <= timed.seconds <= 2.6 and 9 <= timed.fps <= 12.6, timed.format()
    assert flat.fps > 2 * timed.fps, (flat.format(), timed.format())
    # the default: real time for what someone watches (a window, the page), else flat out
    source = camera.open_source(str(colour_video))
    try:
        for outputs, realtime, interval in (
                ([StatusLineOutput()], None, 0.0),
                ([WindowOutput()], None, 1 / 12),
                ([StatusLineOutput(), ServeOutput("0")], None, 1 / 12),
                ([WindowOutput()], False, 0.0),
                ([StatusLineOutput()], True, 1 / 12)):
            options = CameraOptions(model=model, source=str(colour_video), realtime=realtime)
            pipeline = camera.Pipeline(source, [], options, outputs, echo=lambda s: None)
            assert pipeline.frame_interval == pytest.approx(interval, rel=0.01), outputs
    finally:
        source.release()


def test_the_overlay_shows_fps(colour_tflite, colour_video, tmp_path, monkeypatch):
    from tledge.camera import pipeline
    from tledge.camera.outputs import Packet
    from tledge.camera.overlay import draw_overlay as draw
    from tledge.camera.overlay import overlay_lines

    shown = []

    def spy(packet, models, agreement, status):
        shown.append(status.get("fps"))
        return draw(packet, models, agreement, status)

    monkeypatch.setattr(pipeline, "draw_overlay", spy)
    run_camera(CameraOptions(model=str(colour_tflite["int8"]), source=str(colour_video),
                             headless=True, record=str(tmp_path / "r.mp4"), realtime=True),
               echo=lambda s: None)
    assert len(shown) == N_FRAMES and all(f is not None for f in shown[2:])
    assert 8 <= shown[-1] <= 14, shown  # frames classified a second, the file's 12 here
    packet = Packet(0, 0.0, np.zeros((120, 160, 3), np.uint8), [])
    lines = [text for text, _ in overlay_lines(packet, [], {"n": 0}, fps=12.34)]
    assert lines[0] == "12.3 FPS"
