"""The commands of the device side: ``bench``, ``doctor``, ``camera``, which run on a Pi as they
run here, and ``deploy``, with ``bench --on`` and ``camera --on``, which run them on a device from
the laptop over SSH (tledge.device). Registered on the ``tledge`` group by tledge.cli; TensorFlow is
never imported here.
"""

from __future__ import annotations

from pathlib import Path

import click

from tledge.core import fileio
from tledge.core.config import BACKENDS
from tledge.core.errors import TledgeError

backend_option = click.option("--backend", type=click.Choice(BACKENDS),
                              help="TFLite interpreter.  [default: the first installed]")


def on_option(theirs: str):
    """--on HOST, its help naming which of the command's paths are then the device's."""
    return click.option("--on", metavar="[USER@]HOST[:DIR]", help="Run it on a device over SSH "
                        "(your ssh config and keys), sending the models it lacks as tledge "
                        f"deploy does; {theirs}.  [DIR default: ~/tledge]")


def _target(on):
    from tledge.device.ssh import Target
    return Target.parse(on)


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as cause:
        raise click.BadParameter(
            f"expected comma-separated integers like 1,2,4, got {value!r}") from cause
    if not counts or any(c < 1 for c in counts):
        raise click.BadParameter(f"thread counts must be 1 or more, like 1,2,4; got {value!r}")
    return counts


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        width, height = (int(v) for v in value.lower().split("x"))
    except ValueError as cause:
        raise click.BadParameter(f"expected WIDTHxHEIGHT like 320x240, got {value!r}") from cause
    if width < 1 or height < 1:
        raise click.BadParameter(f"width and height must be positive, got {value!r}")
    return width, height


@click.command(short_help="Latency, size, memory and accuracy of models, side by side.")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--threads", callback=_int_list, help="Comma-separated thread counts for TFLite "
              "models.  [default: 1 and all cores]")
@click.option("--runs", type=click.IntRange(min=3), default=50, show_default=True,
              help="Timed inferences.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed inferences first.")
@click.option("--data", help="Also measure accuracy on this data (folder or built-in name).")
@click.option("--limit", type=click.IntRange(min=1),
              help="With --data: at most N images per class.")
@backend_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write results as CSV.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False),
              help="Write a Markdown table.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False),
              help="Write a PNG chart of latency per model and format.")
@on_option("--data then names a folder on the device")
@click.option("--compare-local", is_flag=True, help="With --on: measure here too; the device's "
              "rows and this machine's side by side.")
def bench(models, threads, runs, warmup, data, limit, backend, json_path, csv_path, md_path,
          chart_path, on, compare_local):
    """Latency, size, memory (and accuracy) of .tflite files and run folders, side by side."""
    from tledge.measure import bench as b, benchreport

    for path, flag in ((json_path, "--json"), (csv_path, "--csv"), (md_path, "--markdown"),
                       (chart_path, "--chart")):
        fileio.check_output_file(path, flag)
    options = b.BenchOptions(**{k: v for k, v in dict(
        threads=threads, runs=runs, warmup=warmup, data=data, limit=limit,
        backend=backend).items() if v is not None})
    if compare_local and not on:
        raise TledgeError("--compare-local compares a device's rows with this machine's: it "
                          "needs --on [USER@]HOST")
    if on:
        from tledge.device.remote import bench_on
        report = bench_on(_target(on), models, options, threads is not None, compare_local,
                          echo=click.echo)
    else:
        report = b.bench(models, options, echo=click.echo)
    click.echo(benchreport.format_table(report))
    benchreport.write_outputs(report, json_path, csv_path, md_path, chart_path, echo=click.echo)


@click.command(short_help="Check this machine: Python, TFLite runtimes, cameras, GPUs.")
@click.option("--no-tensorflow", is_flag=True, help="Skip the TensorFlow checks (faster).")
@click.option("--reprobe", is_flag=True, help="Probe every backend again instead of using the "
              "cached results (after installing another version).")
def doctor(no_tensorflow, reprobe):
    """Check this machine: Python, runtimes (each probed in a child process), numpy conflicts,
    OpenCV, cameras, GPUs."""
    from tledge.cli.doctor import format_checks, run_checks

    checks, usable = run_checks(check_tensorflow=not no_tensorflow, reprobe=reprobe)
    click.echo(format_checks(checks))
    if not usable:
        raise TledgeError("no TFLite runtime can load a model here: pip install 'tledge[pi]'")


@click.command(short_help="Live classification of a camera, video, folder or stream.")
@click.option("--model", required=True, type=click.Path(),
              help="The .tflite model to show (or a run folder).")
@click.option("--source", default="0", show_default=True, help="Camera index, /dev/videoN, a "
              "video file, a folder of images, an rtsp:// or http:// stream, or 'picamera'.")
@click.option("--compare", type=click.Path(), help="A second model on the same frames: the "
              "fp32 .tflite, or a run folder's float Keras model (needs TensorFlow).")
@click.option("--headless", is_flag=True, help="No window; print a status line per second.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write one JSON line per frame.")
@click.option("--record", type=click.Path(dir_okay=False), help="Write the annotated video (.mp4).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after N frames.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True, max=1e7),
              help="Stop after S seconds.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Interpreter threads.  [default: all cores]")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Labels shown per frame.")
@backend_option
@click.option("--capture-size", callback=_size, help="WxH to ask a camera for.  [default: the "
              "smallest common size at or above the model's input when --headless without "
              "--record, else the camera's own]")
@click.option("--serve", metavar="[HOST:]PORT", help="Serve a live page (annotated stream, "
              "top-k, FPS, latency; JSON at /stats.json) on PORT, bound to 127.0.0.1 unless "
              "HOST is given. From a laptop: ssh -L 8080:localhost:8080 pi.")
@click.option("--serve-token", metavar="SECRET", help="With --serve: every URL must carry "
              "?token=SECRET (use it when HOST is not 127.0.0.1).")
@click.option("--serve-fps", type=click.FloatRange(min=0, max=1000), default=15.0,
              show_default=True, help="With --serve: JPEGs a second at most on the stream "
              "(0: every frame).")
@click.option("--loop", is_flag=True, help="Play a video file or folder again when it ends.")
@click.option("--realtime/--flat-out", default=None, help="Play a video file at its own frame "
              "rate, or as fast as it decodes.  [default: its own rate when a window or --serve "
              "shows it, else flat out]")
@click.option("--overwrite", is_flag=True, help="Replace existing --output / --record files.")
@click.option("--save-uncertain", metavar="DATA", type=click.Path(file_okay=False),
              help="Save frames the model is unsure of (and, with --compare, frames where the "
              "models disagree) into DATA/unlabelled/ with a JSON sidecar, to label with "
              "tledge collect DATA (with --on: the device's DATA, relative to its DIR).")
@click.option("--uncertain-below", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --save-uncertain: a top-1 score under which a frame is uncertain (0.5: "
              "the other classes together outweigh the model's pick).")
@click.option("--save-max-per-minute", type=click.IntRange(1, 600), default=12,
              show_default=True, help="With --save-uncertain: frames saved in any minute at "
              "most, so a steady scene cannot fill the disk.")
@on_option("--source then names the device's camera, video file or stream")
@click.option("--local-port", type=click.IntRange(1, 65535), help="With --on: the port on this "
              "machine the page is forwarded to.  [default: --serve's port]")
def camera(model, source, compare, headless, output, record, max_frames, duration, threads,
           top_k, backend, capture_size, serve, serve_token, serve_fps, loop, realtime,
           save_uncertain, uncertain_below, save_max_per_minute, overwrite, on, local_port):
    """Live classification from a camera, video, folder or stream, with an overlay and FPS."""
    from tledge.camera import CameraOptions, run_camera

    for path, flag in ((output, "--output"), (record, "--record")):
        fileio.check_output_file(path, flag)
        if path and Path(path).exists() and not overwrite:
            raise TledgeError(f"{path} already exists: pass --overwrite or another file name")
    options = CameraOptions(model=model, source=source, compare=compare, headless=headless,
                            output=output, record=record, max_frames=max_frames,
                            duration=duration, threads=threads, top_k=top_k, backend=backend,
                            capture_size=capture_size, loop=loop, realtime=realtime,
                            serve=serve, serve_token=serve_token, serve_fps=serve_fps,
                            save_uncertain=save_uncertain, uncertain_below=uncertain_below,
                            save_max_per_minute=save_max_per_minute)
    if save_uncertain and not on:  # with --on, the device's folder
        fileio.check_output_dir(Path(save_uncertain) / "unlabelled", "--save-uncertain")
    if serve:
        from tledge.camera.serve import parse_serve
        parse_serve(serve)  # a bad address fails now, before the models load
    if serve_token and not serve:
        raise TledgeError("--serve-token needs --serve [HOST:]PORT")
    if local_port and not on:
        raise TledgeError("--local-port is where --on forwards the device's page: it needs --on")
    if on:
        from tledge.device.remote import camera_on
        return camera_on(_target(on), options, local_port, echo=click.echo)
    summary = run_camera(options, echo=click.echo)
    click.echo(summary.format())


@click.command(short_help="Take labelled pictures with a camera, from a web page.")
@click.argument("data", type=click.Path(file_okay=False))
@click.option("--source", default="0", show_default=True, help="Camera index, /dev/videoN, a "
              "video file, a folder of images, an rtsp:// or http:// stream, or 'picamera'.")
@click.option("--serve", metavar="[HOST:]PORT", default="8080", show_default=True,
              help="The page: live picture, a button per label (click: a shot; hold: a "
              "burst), counts, undo, unlabelled frames; bound to 127.0.0.1 unless HOST is given.")
@click.option("--serve-token", metavar="SECRET", help="Every URL must carry ?token=SECRET (use "
              "it when HOST is not 127.0.0.1).")
@click.option("--labels", help="Labels to offer, comma-separated, besides DATA's subfolders "
              "(more can be added on the page).")
@click.option("--burst-fps", type=float, default=5.0, show_default=True,
              help="Shots a second while a label's button is held.")
@click.option("--duration", type=float, help="Stop after S seconds.  [default: Ctrl-C]")
@click.option("--loop", is_flag=True, help="Play a video file or folder again when it ends.")
@click.option("--headless", is_flag=True, help="No window (with one, keys 1-9 take a shot for "
              "that label).")
@on_option("DATA and --source then name the device's folder (relative: under DIR) and "
           "camera; tledge pull brings the pictures back")
@click.option("--local-port", type=click.IntRange(1, 65535), help="With --on: the port on this "
              "machine the page is forwarded to.  [default: --serve's port]")
def collect(data, source, serve, serve_token, labels, burst_fps, duration, loop, headless, on,
            local_port):
    """Take labelled pictures for tledge train --data DATA with the camera the model will run
    on: one JPEG per shot in DATA/LABEL/, a line per shot in DATA/shots.jsonl (time, label,
    source, burst). Frames tledge camera --save-uncertain DATA kept wait on the page for a
    label. Scripts: POST /capture (label, count), GET /counts.json, POST /undo, POST /label.

    \b
    tledge collect data/mine --labels mug,keys,phone
    tledge collect data/mine --source picamera --serve 0.0.0.0:8080 --serve-token SECRET
    """
    from tledge.camera.collect import parse_labels
    from tledge.camera.collect_page import CollectOptions, run_collect

    if serve_token and not serve:
        raise TledgeError("--serve-token needs --serve [HOST:]PORT")
    if local_port and not on:
        raise TledgeError("--local-port is where --on forwards the device's page: it needs --on")
    options = CollectOptions(data=data, source=source, serve=serve or None,
                             serve_token=serve_token, labels=tuple(parse_labels(labels)),
                             burst_fps=burst_fps, duration=duration, loop=loop,
                             headless=headless)
    if on:
        from tledge.device.remote import collect_on
        collect_on(_target(on), options, local_port, echo=click.echo)
        return
    fileio.check_output_dir(data, "DATA")
    run_collect(options, echo=click.echo)
    click.echo(f"next: tledge train --data {data}")


@click.command(short_help="Bring the pictures collected on a device here, over SSH.")
@click.argument("device", metavar="[USER@]HOST:DIR")
@click.argument("local", type=click.Path(file_okay=False))
def pull(device, local):
    """Copy a device's data folder (tledge collect --on, tledge camera --save-uncertain) into
    LOCAL: only the files LOCAL lacks (by SHA-256), each checked and written whole; run it
    again to go on after an interruption. A local file with other content is never replaced.

    \b
    tledge pull pi@raspberrypi.local:~/tledge/data/mine data/mine
    """
    from tledge.device.pull import pull as run_pull

    if ":" not in device.replace("[", "").split("]")[-1]:
        raise TledgeError(f"name the device's data folder: {device}:DIR, e.g. "
                          f"{device}:~/tledge/data/mine")
    run_pull(_target(device), Path(local), echo=click.echo)


@click.command(short_help="Send verified .tflite files and this tledge to a device over SSH.")
@click.argument("sources", nargs=-1, metavar="[RUN_OR_FILES]...", type=click.Path())
@click.argument("device", metavar="[USER@]HOST[:DIR]")
@click.option("--python", default="python3", show_default=True,
              help="The device's Python that builds the venv (3.10 or newer).")
@click.option("--system-site-packages/--isolated", "system_site", default=True,
              show_default=True, help="Let the device's venv see its system packages "
              "(Picamera2 comes from apt on Raspberry Pi OS).")
@click.option("--service", metavar="MODEL", help="Install a systemd user unit running "
              "tledge camera --serve on this deployed file (e.g. model_int8.tflite) at boot.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="With --service: the page's port on the device's 127.0.0.1.")
@click.option("--source", default="0", show_default=True,
              help="With --service: the camera (0, /dev/videoN, picamera).")
@click.option("--remove", is_flag=True, help="Stop and remove the camera unit.")
def deploy(sources, device, python, system_site, service, port, source, remove):
    """Copy a run's verified .tflite files (or those named) to a device, install this same
    tledge there in a venv built beside the old one and swapped in, and print its tledge
    doctor. SSH as your terminal does it (~/.ssh/config, keys, jump hosts), keys only.

    \b
    tledge deploy models/flowers pi@raspberrypi.local
    tledge deploy models/flowers pi@raspberrypi.local --service model_int8.tflite
    tledge deploy pi@raspberrypi.local --remove
    """
    from tledge.device.deploy import DeployOptions, deploy as run_deploy

    if not sources and not remove and Path(device).exists():
        raise TledgeError(f"no device given: {device} is here, on this machine; name the device "
                          f"after it: tledge deploy {device} pi@raspberrypi.local")
    if not sources and not remove:
        raise TledgeError("nothing to deploy: give a run folder or .tflite files before the "
                          "device, e.g. tledge deploy models/flowers pi@raspberrypi.local")
    options = DeployOptions(target=_target(device), sources=sources, python=python,
                            system_site=system_site, service=service, port=port,
                            source=source, remove=remove)
    pushed = run_deploy(options, echo=click.echo)
    if pushed.doctor:
        click.echo(f"tledge doctor on {options.target.host}:\n{pushed.doctor.rstrip()}")
        if not pushed.doctor_ok:
            raise TledgeError(f"tledge doctor failed on {options.target.host}: see above")
