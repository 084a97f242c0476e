"""``tledge bench --on HOST`` and ``tledge camera --on HOST``: the device runs what tledge runs
here, with the files deployed to it (what it lacks is sent first), and the laptop gets the
results: the benchmark's report written here, the camera's live page forwarded to loopback."""

from __future__ import annotations

import json
import math
import re
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
from tledge.device.ssh import (Device, Target, no_constant, close_quietly, printable,
                               quote_all, read_lines, ssh_failure)
from tledge.core.errors import TledgeError


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
      options: a :class:`tledge.measure.bench.BenchOptions`; its thread counts are the device's own
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
    jobs = len(paths) * (len(options.threads) if threads_given else 2)
    device.run(f"mkdir -p {quote_all([pushed.dir + '/bench'])} && {quote_all(argv)}", echo=echo,
               timeout=600.0 + 600.0 * jobs, what="the benchmark")
    report = check_report(device.run(quote_all(["cat", remote_json]), timeout=120.0,
                                     what="the benchmark's report"), target.host)
    local_names = {pushed.model(p.name): p for p in paths}
    for row in report["results"]:
        path = local_names.get(row["model"], Path(row["model"]))
        row.update(model=str(path), name=f"{path.parent.name}/{path.name}",
                   on=report["machine"]["machine_id"])
    report["device"] = {"host": target.host, "dir": pushed.dir, "json": remote_json}
    if compare_local:
        from tledge.measure import bench

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


STATS = ("p50", "p90", "p99", "mean", "std")
MAX_ROWS = 1000


def check_report(text: str, host: str) -> dict:
    """A bench report as a device answered it, checked and rebuilt from what tledge reads: strict
    JSON; every latency finite, not negative, p50 <= p90 <= p99; sizes and counts whole
    numbers; texts printable and bounded; the figures derived from them computed here.

    Raises:
      TledgeError: one line naming what is wrong (a device's answer is untrusted input).
    """
    def bad(what: str) -> TledgeError:
        return TledgeError(f"on {host}: the benchmark's report {what}: not used (a device "
                           "running another tledge, or a damaged file); run tledge deploy "
                           "again")

    try:
        report = json.loads(text, parse_constant=no_constant)
    except ValueError:
        raise bad("is not strict JSON (or is cut off)") from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list) or \
            not isinstance(report.get("machine"), dict):
        raise bad("has no results or machine")
    if len(report["results"]) > MAX_ROWS:
        raise bad(f"has over {MAX_ROWS} rows")
    machine = {k: _text(v, 200) for k, v in report["machine"].items()
               if isinstance(k, str) and isinstance(v, (str, int, float)) and len(k) < 40}
    # the id names files (bench-ID.md) and the table's column: file-name-safe
    name = re.sub(r"[^a-z0-9-]+", "-", str(machine.get("machine_id", "")).lower()).strip("-")
    machine["machine_id"] = name[:60] or "device"
    for key in ("cpu", "arch", "os", "python", "cores"):
        machine.setdefault(key, "?")
    options = report.get("options") if isinstance(report.get("options"), dict) else {}
    rows = [_row(row, bad) for row in report["results"]]
    warnings = report.get("warnings") if isinstance(report.get("warnings"), list) else []
    return {"machine": machine, "results": rows,
            "warnings": [_text(w, 300) for w in warnings[:20]],
            "options": {k: options.get(k) if _count(options.get(k)) else "?"
                        for k in ("runs", "warmup")},
            "threads": sorted({r["threads"] for r in rows if r["threads"] is not None}),
            "time": _text(report.get("time", "?"), 40)}


def _row(row, bad) -> dict:
    if not isinstance(row, dict):
        raise bad("has a row that is not an object")
    out = {}
    for kind in ("invoke", "classify"):
        stats = row.get(kind)
        if not isinstance(stats, dict) or not all(_number(stats.get(s)) for s in STATS):
            raise bad(f"has a {kind} latency that is missing, not a number, infinite or "
                      "negative")
        if not stats["p50"] <= stats["p90"] <= stats["p99"] or stats["p50"] <= 0:
            raise bad(f"has {kind} percentiles out of order (p50 {stats['p50']:g}, p90 "
                      f"{stats['p90']:g}, p99 {stats['p99']:g})")
        out[kind] = {s: float(stats[s]) for s in STATS}
    for key in ("load_ms", "first_ms", "peak_rss_mb"):
        if not _number(row.get(key)):
            raise bad(f"has a {key} that is not a finite number of 0 or more")
        out[key] = float(row[key])
    memory = row.get("memory_mb")
    if not isinstance(memory, (int, float)) or isinstance(memory, bool) or \
            not math.isfinite(memory):
        raise bad("has a memory_mb that is not a finite number")
    out["memory_mb"] = float(memory)
    if not _count(row.get("size_bytes")) or not (row.get("threads") is None or
                                                 _count(row.get("threads"))):
        raise bad("has a size or a thread count that is not a whole number")
    accuracy = row.get("accuracy")
    if accuracy is not None and not (_number(accuracy) and accuracy <= 1):
        raise bad("has an accuracy outside 0..1")
    delegation = row.get("delegation")
    if isinstance(delegation, dict) and _count(delegation.get("partitions")) and isinstance(
            delegation.get("undelegated"), dict):
        out["delegation"] = {"partitions": delegation["partitions"], "undelegated": {
            _text(op, 40): n for op, n in list(delegation["undelegated"].items())[:50]
            if _count(n)}}
    else:
        out["delegation"] = None
    out.update(model=_text(row.get("model", "?"), 300), format=_text(row.get("format", "?"), 20),
               device=_text(row.get("device", "cpu"), 10), backend=_text(row.get("backend", "?"),
                                                                         60),
               input_dtype=_text(row.get("input_dtype", "?"), 20),
               min_runtime=_text(row["min_runtime"], 20) if row.get("min_runtime") else None,
               size_bytes=row["size_bytes"], threads=row["threads"], accuracy=accuracy,
               throughput_ips=1000.0 / out["classify"]["mean"] if out["classify"]["mean"] > 0
               else 0.0,
               classify_overhead_pct=100.0 * (out["classify"]["p50"] / out["invoke"]["p50"] - 1))
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and value >= 0


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value, limit: int) -> str:
    return printable(str(value), newlines=False)[:limit]


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
    if options.save_uncertain:  # the device's data folder: relative is under its tledge folder
        from tledge.device.ssh import check_device_dir
        folder = check_device_dir(options.save_uncertain)
        argv += ["--save-uncertain", folder if folder.startswith(("/", "~/"))
                 else f"{pushed.dir}/{folder}", "--uncertain-below",
                 str(options.uncertain_below), "--save-max-per-minute",
                 str(options.save_max_per_minute)]
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
    return serve_on(device, camera_argv(pushed, options, model, compare), port, local_port,
                    options.serve_token, f"live view of {target.host}'s camera", echo,
                    ready_timeout)


def collect_on(target: Target, options, local_port: Optional[int] = None,
               echo: Callable[[str], None] = print, ready_timeout: float = 300.0) -> int:
    """``tledge collect`` on the device (deployed as ``camera --on`` is), its page forwarded
    here; the pictures stay there until ``tledge pull``.

    Args:
      target: the device.
      options: a :class:`tledge.camera.collect_page.CollectOptions`; ``data`` is the device's
        folder (relative: under the device's tledge folder), ``source`` the device's camera.
      local_port: the port here (default: the device's).
      echo: the device's lines and the local URL.
      ready_timeout: seconds to wait for the page.

    Returns:
      The device's exit code (0).
    """
    from tledge.camera.serve import parse_serve
    from tledge.device.ssh import check_device_dir

    if not options.serve:
        raise TledgeError("collect --on needs --serve PORT: the page is how you take pictures")
    data = check_device_dir(options.data)
    device = Device(target)
    pushed = push(device, [], echo)
    if not data.startswith(("/", "~/")):
        data = f"{pushed.dir}/{data}"
    argv = [f"{pushed.dir}/venv/bin/tledge", "collect", data, "--source", options.source,
            "--serve", options.serve, "--headless", "--burst-fps", str(options.burst_fps)]
    for flag, value in (("--serve-token", options.serve_token),
                        ("--labels", ",".join(options.labels) or None),
                        ("--duration", options.duration)):
        if value is not None:
            argv += [flag, str(value)]
    if options.loop:
        argv.append("--loop")
    _, port = parse_serve(options.serve)
    code = serve_on(device, argv, port, local_port or port, options.serve_token,
                    f"collecting on {target.host} into {data}", echo, ready_timeout)
    echo(f"next: tledge pull {target.host}:{data} {Path(options.data).name}")
    return code


def serve_on(device: Device, argv: list, port: int, local_port: Optional[int],
             token: Optional[str], what: str, echo: Callable[[str], None],
             ready_timeout: float) -> int:
    """Run ``argv`` (a tledge command serving a page on the device's ``port``) under the
    agent's supervision, the page forwarded to this machine's ``local_port``; returns its exit
    code when it ends. Ctrl-C here ends it there."""
    local_port = local_port or port
    remote = device.agent_command("supervise", *argv)
    query = f"?token={quote(token, safe='')}" if token else ""
    url = f"http://127.0.0.1:{local_port}/"
    proc = subprocess.Popen(device.command(remote, forward=(local_port, port)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=read_lines, args=(proc.stdout, lines, echo), daemon=True)
    reader.start()
    try:
        if _wait_for_page(proc, url + "healthz", ready_timeout):
            echo(f"{what}: {url}{query}  (Ctrl-C stops it)")
        code = proc.wait()
    except BaseException:  # Ctrl-C: closing stdin tells the agent to stop the command
        _close_and_wait(proc)
        raise
    reader.join(5)
    if code != 0:
        text = "\n".join(lines)
        if "Address already in use" in text or "cannot listen to port" in text:
            raise TledgeError(f"port {local_port} is taken on this machine: pass --local-port "
                              "with a free one")
        raise ssh_failure(device.target.host, code, text)
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
