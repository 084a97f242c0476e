"""``tledge bench --on HOST`` and ``tledge camera --on HOST``: the device runs what tledge runs
here, with the files deployed to it (what it lacks is sent first), and the laptop gets the
results: the benchmark's report written here, the camera's live page forwarded to loopback."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Sequence
from urllib.parse import quote

from tledge.device.deploy import Pushed, push
from tledge.device.ssh import (Device, Target, close_quietly, quote_all, read_lines,
                               ssh_failure)
from tledge.errors import TledgeError


def _tflite_only(models: Sequence[str], command: str) -> list[Path]:
    from tledge.runtime import check_tflite_file

    paths = []
    for model in models:
        if Path(model).is_dir():
            raise TledgeError(f"{command} --on runs .tflite files on the device, and {model} is a "
                              "folder (a run's float Keras model needs TensorFlow): give its "
                              "export/model_*.tflite files")
        paths.append(check_tflite_file(model))
    names = [p.name for p in paths]
    for name in set(names):
        if names.count(name) > 1:
            raise TledgeError(f"two models named {name}: the device keeps one folder of models; "
                              "copy one under another name to compare them there")
    return paths


def bench_on(target: Target, models: Sequence[str], options, threads_given: bool,
             compare_local: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Benchmark .tflite files on the device and return its report, rows named as here.

    Args:
      target: the device.
      models: local .tflite files (sent when the device lacks them).
      options: a :class:`tledge.bench.BenchOptions`; its thread counts are the device's own
        (1 and all its cores) unless ``threads_given``.
      threads_given: the user chose --threads.
      compare_local: also measure them here; each row then names its machine in ``on``.
      echo: progress.

    Returns:
      The device's report (its machine, warnings, rows), with this machine's rows added and
      this machine in ``compared_with`` when ``compare_local``.

    Raises:
      TledgeError: a run folder or a bad file; the device unreachable or unusable; the
        benchmark failed there.
    """
    paths = _tflite_only(models, "bench")
    device = Device(target)
    pushed = push(device, paths, echo)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    remote_json = f"{pushed.dir}/bench/bench-{stamp}.json"
    argv = [f"{pushed.dir}/venv/bin/tledge", "bench", *[pushed.model(p.name) for p in paths],
            "--runs", str(options.runs), "--warmup", str(options.warmup),
            "--json", remote_json]
    if threads_given:
        argv += ["--threads", ",".join(map(str, options.threads))]
    for flag, value in (("--data", options.data), ("--limit", options.limit),
                        ("--backend", options.backend)):
        if value is not None:
            argv += [flag, str(value)]
    echo(f"benchmarking {len(paths)} model(s) on {target.host}")
    device.run(f"mkdir -p {quote_all([pushed.dir + '/bench'])} && {quote_all(argv)}", echo=echo)
    report = json.loads(device.run(quote_all(["cat", remote_json])))
    local_names = {pushed.model(p.name): p for p in paths}
    for row in report["results"]:
        path = local_names.get(row["model"], Path(row["model"]))
        row.update(model=str(path), name=f"{path.parent.name}/{path.name}",
                   on=report["machine"]["machine_id"])
    report["device"] = {"host": target.host, "dir": pushed.dir, "json": remote_json}
    if compare_local:
        from tledge import bench

        here = bench.bench([str(p) for p in paths], options if threads_given else
                           replace(options, threads=tuple(sorted({r["threads"] for r in
                                                                  report["results"]}))),
                           echo=echo)
        for row in here["results"]:
            row["on"] = here["machine"]["machine_id"]
        report["results"] += here["results"]
        report["compared_with"] = here["machine"]
        report["warnings"] += [f"here: {w}" for w in here["warnings"]]
    return report


def camera_argv(pushed: Pushed, options, model: Path, compare: Optional[Path]) -> list[str]:
    """The device's ``tledge camera`` command line for these options (headless, serving)."""
    argv = [f"{pushed.dir}/venv/bin/tledge", "camera", "--model", pushed.model(model.name),
            "--source", options.source, "--headless", "--serve", options.serve,
            "--top-k", str(options.top_k), "--serve-fps", str(options.serve_fps)]
    if compare is not None:
        argv += ["--compare", pushed.model(compare.name)]
    for flag, value in (("--max-frames", options.max_frames), ("--duration", options.duration),
                        ("--threads", options.threads), ("--backend", options.backend),
                        ("--serve-token", options.serve_token)):
        if value is not None:
            argv += [flag, str(value)]
    if options.capture_size:
        argv += ["--capture-size", "{}x{}".format(*options.capture_size)]
    if options.loop:
        argv.append("--loop")
    if options.realtime is not None:
        argv.append("--realtime" if options.realtime else "--flat-out")
    return argv


def camera_on(target: Target, options, local_port: Optional[int] = None,
              echo: Callable[[str], None] = print, ready_timeout: float = 300.0) -> int:
    """Run the camera on the device with its live page forwarded to this machine's loopback.

    Returns when the device's camera ends (--max-frames, --duration, its source ended);
    Ctrl-C here stops it there (the agent ends it when its ssh goes).

    Args:
      target: the device.
      options: a :class:`tledge.camera.CameraOptions` with ``serve`` set; its ``source`` is
        the device's (a camera index, ``picamera``, a file there).
      local_port: the port here (default: the device's).
      echo: the device's status lines and the local URL.
      ready_timeout: seconds to wait for the page (model loading on a slow board).

    Returns:
      The device camera's exit code (0).

    Raises:
      TledgeError: bad options, the device unusable, the local port taken, the camera failed.
    """
    from tledge.camera.serve import parse_serve

    if not options.serve:
        raise TledgeError("camera --on needs --serve PORT: the live page is how you watch it")
    if options.output or options.record:
        raise TledgeError("--output and --record would be written on the device: with --on, "
                          "watch the page, or run tledge camera there to record")
    _, port = parse_serve(options.serve)
    local_port = local_port or port
    model = _tflite_only([options.model], "camera")[0]
    compare = _tflite_only([options.compare], "camera")[0] if options.compare else None
    device = Device(target)
    pushed = push(device, [model] + ([compare] if compare else []), echo)
    remote = device.agent_command("supervise", *camera_argv(pushed, options, model, compare))
    token = f"?token={quote(options.serve_token, safe='')}" if options.serve_token else ""
    url = f"http://127.0.0.1:{local_port}/"
    proc = subprocess.Popen(device.command(remote, forward=(local_port, port)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stdout, lines, echo), daemon=True)
    reader.start()
    try:
        if _wait_for_page(proc, url + "stats.json" + token, ready_timeout):
            echo(f"live view of {target.host}'s camera: {url}{token}  (Ctrl-C stops it)")
        code = proc.wait()
    except BaseException:  # Ctrl-C: closing stdin tells the agent to stop the camera
        _close_and_wait(proc)
        raise
    reader.join(5)
    if code != 0:
        text = "\n".join(lines)
        if "Address already in use" in text or "cannot listen to port" in text:
            raise TledgeError(f"port {local_port} is taken on this machine: pass --local-port "
                              "with a free one")
        raise ssh_failure(target.host, code, text)
    return code


def _wait_for_page(proc: subprocess.Popen, url: str, timeout: float) -> bool:
    """True once the page answers through the forward; False when the command ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TledgeError(f"the camera's page did not answer within {timeout:.0f} s at {url}")


def _close_and_wait(proc: subprocess.Popen) -> None:
    close_quietly(proc.stdin)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
