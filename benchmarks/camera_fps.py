"""End-to-end FPS of `tledge camera` on a video file against 1 / (p50 inference time).

    python benchmarks/camera_fps.py --model benchmarks/models/mobilenet_v2_1_224/model_int8.tflite

Writes a 640x480 video of generated shapes, times the model's bare inference at one thread
(p50), then runs the camera pipeline headless on the video with --threads 1, so capture and
drawing have the other core, then times bare inference again. Capture, preprocessing and drawing
overlap inference when the pipeline works: FPS close to 1 / p50. The ratio of each run is taken
against the mean of the p50s just before and just after it, and the runs are repeated
(--repeats): on a shared machine whose speed drifts by 10 % from one second to the next, one
bare measurement taken a minute apart from the run says more about the drift than the pipeline.
The median ratio is the result.

Then the same run on the same pictures at each of --capture-sizes: what the CPU spends per frame
before inference when the camera delivers frames near the model's input (tledge camera asks a
V4L2 camera for the smallest common size at or above it when nothing needs full frames, and the
Pi camera's ISP scales its lores stream to the model's input at no CPU cost; a video of that size
stands in for both). Results: benchmarks/results/camera_<machine>.md and .json.
"""

from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

HERE = Path(__file__).resolve().parent


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--frames", default=300, show_default=True)
@click.option("--runs", default=100, show_default=True, help="Timed bare inferences.")
@click.option("--repeats", default=5, show_default=True,
              help="Pipeline runs on the 640x480 video, each between two bare timings.")
@click.option("--capture-sizes", default="640x480,320x240,224x224", show_default=True,
              help="Frame sizes to compare, WxH, comma-separated (the first is the main run).")
@click.option("--results-dir", default=str(HERE / "results"), show_default=True)
def main(model, frames, runs, repeats, capture_sizes, results_dir):
    import tempfile

    import cv2

    from tledge.core import fileio
    from tledge.measure.bench import machine_info
    from tledge.runtime.timing import latency_stats, time_ms
    from tledge.camera import CameraOptions, run_camera
    from tledge.data.shapes import CLASSES, draw_shape
    from tledge.runtime import Classifier

    tmp = Path(tempfile.mkdtemp())
    sizes = [tuple(int(v) for v in s.split("x")) for s in capture_sizes.split(",")]

    def make_video(width, height):
        path = tmp / f"shapes_{width}x{height}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0,
                                 (width, height))
        for i in range(frames):
            square = draw_shape(i % len(CLASSES), 0, "test", i, 480)
            frame = np.zeros((480, 640, 3), np.uint8)
            frame[:, 80:560] = square
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        return path

    video = make_video(*sizes[0])

    clf = Classifier(model, threads=1)
    x = clf.preprocess(np.zeros((480, 640, 3), np.uint8))[None]

    def bare() -> dict:
        return latency_stats(time_ms(lambda: clf.invoke(x), runs, warmup=10))

    pairs = []  # (mean bare p50 before and after the run, its summary, the timing after it)
    before = bare()
    for _ in range(max(1, repeats)):
        run = run_camera(CameraOptions(model=model, source=str(video), headless=True,
                                       threads=1), echo=lambda s: None)
        after = bare()
        pairs.append(((before["p50"] + after["p50"]) / 2, run, after))
        before = after
    ratios = [run.fps * p50 / 1000.0 for p50, run, _ in pairs]
    p50, summary, inference = pairs[int(np.argsort(ratios)[len(ratios) // 2])]
    by_size = []
    for width, height in sizes:
        path = video if (width, height) == sizes[0] else make_video(width, height)
        run = summary if path == video else run_camera(
            CameraOptions(model=model, source=str(path), headless=True, threads=1),
            echo=lambda s: None)
        by_size.append({"size": f"{width}x{height}", "fps": run.fps, "stages": run.stages})
        os.remove(path)
    ideal = 1000.0 / p50
    ratio = summary.fps / ideal
    info, _ = machine_info()
    result = {"model": model, "frames": summary.frames, "fps": summary.fps,
              "inference_ms": inference, "bare_p50_around_run_ms": p50, "ideal_fps": ideal,
              "ratio": ratio, "ratios": ratios,
              "stages": summary.stages, "by_capture_size": by_size, "machine": info,
              "command": f"python benchmarks/camera_fps.py --model {model} --frames {frames} "
                         f"--runs {runs} --repeats {repeats} --capture-sizes {capture_sizes}"}
    stem = Path(results_dir) / f"camera_{info['machine_id']}"
    fileio.write_json(f"{stem}.json", result)
    lines = [f"# tledge camera FPS on {info['machine_id']}", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores. Video: {frames} frames 640x480 "
             "(generated shapes, mp4v). Interpreter threads: 1.", "",
             "| measure | value |", "|---|---:|",
             f"| bare inference p50 (1 thread), before and after the run | {p50:.2f} ms |",
             f"| 1 / p50 | {ideal:.1f} FPS |",
             f"| camera end-to-end | {summary.fps:.1f} FPS ({summary.frames} frames) |",
             f"| ratio (the median run of {len(ratios)}) | {100 * ratio:.1f}% |",
             "| every run's ratio | " + ", ".join(f"{100 * r:.1f}%" for r in ratios) + " |"]
    for stage, s in summary.stages.items():
        lines.append(f"| {stage} p50 / p90 | {s['p50']:.2f} / {s['p90']:.2f} ms |")
    lines += ["", "By the size of the frames that reach inference (same pictures, same run of "
              "this script; capture = decode here, the camera's own work on a device):", "",
              "| frame size | capture p50 | preprocess p50 / p90 | before inference | "
              "inference p50 | end to end |", "|---|---:|---:|---:|---:|---:|"]
    for row in by_size:
        st = row["stages"]
        before = st["capture"]["p50"] + st["preprocess"]["p50"]
        lines.append(f"| {row['size']} | {st['capture']['p50']:.2f} ms | "
                     f"{st['preprocess']['p50']:.2f} / {st['preprocess']['p90']:.2f} ms | "
                     f"{before:.2f} ms | {st['inference']['p50']:.2f} ms | {row['fps']:.1f} FPS |")
    fileio.write_text(f"{stem}.md", "\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
