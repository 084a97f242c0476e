"""The `tledge camera --serve` page, screenshotted by headless Chromium, and what serving costs.

    python benchmarks/serve_page.py --model RUN/export/model_int8.tflite \
        --compare RUN/export/model_fp32.tflite

Plays a generated 640x480 video of shapes in a loop through `tledge camera --serve` at
--threads 1, with one viewer on the stream (Chromium, then a plain HTTP reader), and writes:
- benchmarks/results/camera_serve_page.png: the page as a browser shows it;
- benchmarks/results/camera_serve_<machine>.md: per-stage p50/p90 with the JPEG encoding beside
  the other stages, and end-to-end FPS with and without the page being watched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import click
import numpy as np

HERE = Path(__file__).resolve().parent


@click.command()
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--compare", type=click.Path(exists=True, dir_okay=False))
@click.option("--frames", default=600, show_default=True, help="Frames per measured run.")
@click.option("--results-dir", default=str(HERE / "results"), show_default=True)
def main(model, compare, frames, results_dir):
    import cv2

    from tledge.core import fileio
    from tledge.measure.bench import machine_info
    from tledge.camera import CameraOptions, run_camera
    from tledge.data.shapes import CLASSES, draw_shape

    tmp = Path(tempfile.mkdtemp())
    video = tmp / "shapes.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (640, 480))
    for i in range(60):
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[:, 80:560] = draw_shape(i % len(CLASSES), 0, "test", i, 480)
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()

    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def options(**extra):
        # flat out, as fast as the video decodes: what serving costs the pipeline
        return CameraOptions(model=model, compare=compare, source=str(video), loop=True,
                             headless=True, threads=1, realtime=False, **extra)

    # 1. the screenshot, from a browser watching the live page
    port = free_port()
    # (every frame on the stream: the headless shell's --timeout stops the page's loading, and
    # the <img> then shows what had arrived; at 15 a second that can be the very first frame)
    run = threading.Thread(target=run_camera, args=(options(serve=f"127.0.0.1:{port}",
                                                            serve_fps=0, duration=20.0),),
                           kwargs={"echo": lambda s: None}, daemon=True)
    run.start()
    time.sleep(5)
    browser = next(filter(None, map(shutil.which, ("chromium-headless-shell", "chromium"))))
    shot = Path(results_dir) / "camera_serve_page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--user-data-dir={tmp / 'profile'}", "--window-size=1100,560",
                    "--timeout=4000", f"--screenshot={shot}", f"http://127.0.0.1:{port}/"],
                   capture_output=True, timeout=120, check=True)
    run.join()

    # 2. the cost: the same run without --serve, and with it and one stream reader
    plain = run_camera(options(max_frames=frames), echo=lambda s: None)
    port = free_port()
    result = {}

    def watched():
        result["summary"] = run_camera(options(serve=f"127.0.0.1:{port}", max_frames=frames),
                                       echo=lambda s: None)

    run = threading.Thread(target=watched, daemon=True)
    run.start()
    deadline = time.time() + 30
    stream = None
    while stream is None and time.time() < deadline:
        try:
            stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10)
        except OSError:
            time.sleep(0.05)
    received = 0
    while run.is_alive():
        try:
            chunk = stream.read1(65536)
        except OSError:
            break
        if not chunk:
            break
        received += chunk.count(b"Content-Type: image/jpeg")
    run.join()
    served = result["summary"]
    info, _ = machine_info()
    lines = [f"# tledge camera --serve on {info['machine_id']}", "",
             f"Command: `python benchmarks/serve_page.py --model {model}"
             + (f" --compare {compare}" if compare else "") + f" --frames {frames}`  ",
             f"Machine: {info['cpu']}, {info['cores']} cores. A 640x480 video in a loop, "
             "--threads 1, headless; JPEG quality 75 at 640 px wide, at most 15 a second "
             "(--serve-fps), encoded in a thread of its own.",
             "", "| stage | without --serve: p50 / p90 | --serve, one viewer: p50 / p90 |",
             "|---|---:|---:|"]
    for stage in ("capture", "preprocess", "inference", "compare", "overlay", "jpeg"):
        cells = []
        for summary in (plain, served):
            s = summary.stages.get(stage)
            cells.append(f"{s['p50']:.2f} / {s['p90']:.2f} ms" if s else "-")
        lines.append(f"| {stage} | {cells[0]} | {cells[1]} |")
    lines += [f"| end to end | {plain.fps:.1f} FPS | {served.fps:.1f} FPS |", "",
              f"The viewer received {received} JPEGs while {served.frames} frames were classified "
              f"in {served.seconds:.1f} s: at most 15 a second, each the newest (a slow viewer "
              "skips frames; nothing queues for it). Without --serve (headless, no --record) no "
              "overlay is drawn at all; with it, the JPEG encoder works only while someone "
              "watches.", "",
              "![the page](camera_serve_page.png)"]
    stem = Path(results_dir) / f"camera_serve_{info['machine_id']}"
    fileio.write_text(f"{stem}.md", "\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
