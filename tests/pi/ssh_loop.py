"""The device loop from the laptop, proven on the emulated Raspberry Pi OS over real SSH.

Part of ``make pi-check`` (tests/pi/pi_check.py). OpenSSH's server runs inside the emulated
arm64 root (a user ``pi``, a key made for this check, a loopback port, a Raspberry Pi 4's
/proc/cpuinfo); this machine's own OpenSSH client reaches it through an ssh config file given
to tledge by ``TLEDGE_SSH_COMMAND``. From here it runs, as a user would: ``tledge deploy`` onto
a blank device folder, ``bench --on --compare-local``, ``tune --on`` (two tiny candidates timed
there in one session, trained here; latencies under emulation are never reported as a Pi's),
``camera --on --serve`` (the page fetched
through the forwarded port, then Ctrl-C, then no camera left on the device), ``collect --on``
(three shots through the forwarded page, Ctrl-C) and ``pull`` twice, a second deploy
that sends nothing, and the bad cases: a refused key, a closed port, ``--service`` where there
is no systemd (a chroot has none: the unit's success path needs a real board).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "pi-emu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_user(root: Path, key_pub: Path) -> None:
    """A user pi (as on Raspberry Pi OS) whose only key is this check's; a blank ~/tledge."""
    if subprocess.run(["chroot", str(root), "id", "pi"], capture_output=True).returncode != 0:
        subprocess.run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", "pi"],
                       check=True, capture_output=True)
    ssh_dir = root / "home/pi/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(key_pub, ssh_dir / "authorized_keys")
    subprocess.run(["chroot", str(root), "chown", "-R", "pi:pi", "/home/pi/.ssh"], check=True)
    ssh_dir.chmod(0o700)
    old = root / "home/pi/tledge"
    if old.exists():  # no mounts live under a home: a plain delete cannot reach the host
        shutil.rmtree(old)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)


def _start_sshd(root: Path, cpuinfo: Path, port: int, log_path: Path) -> subprocess.Popen:
    setup = (f"mount -t proc proc {root}/proc && mount --bind {cpuinfo} {root}/proc/cpuinfo && "
             f"mount -t tmpfs tmpfs {root}/dev/shm && mount -t sysfs -o ro sysfs {root}/sys && "
             f"exec chroot {root} /usr/sbin/sshd -D -e -p {port} -o ListenAddress=127.0.0.1 "
             "-o PasswordAuthentication=no -o KbdInteractiveAuthentication=no")
    proc = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation",
                             "private", "bash", "-c", setup], stdout=open(log_path, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if "Server listening" in log_path.read_text():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"sshd did not start in the emulated Pi: {log_path.read_text()[-500:]}")


def _ssh_config(tmp: Path, port: int, key: Path) -> Path:
    config = tmp / "ssh_config"
    config.write_text(f"Host {HOST} refused-key\n  HostName 127.0.0.1\n  Port {port}\n"
                      f"  User pi\n  IdentitiesOnly yes\n  UserKnownHostsFile {tmp}/known_hosts\n"
                      "  StrictHostKeyChecking accept-new\n"
                      f"Host {HOST}\n  IdentityFile {key}\n"
                      f"Host refused-key\n  IdentityFile {tmp}/other_key\n"
                      f"Host closed-port\n  HostName 127.0.0.1\n  Port {_free_port()}\n")
    return config


def _tledge(env: dict, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tledge.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def _start_on(env: dict, says: str, *args: str):
    """``tledge ARGS --serve P --local-port Q`` (a command run on the device with its page
    forwarded here); (process, local URL, device port P, output so far) once a line containing
    ``says`` names the URL, the URL None (the process killed) when none did in 600 s."""
    import re

    device_port, local_port = _free_port(), _free_port()
    # The check is a user's Ctrl-C at a terminal. Started as a background job of a
    # non-interactive shell (or under nohup), this process has SIGINT ignored, the command would
    # inherit that through exec and never see the Ctrl-C: a handler here is reset to the
    # default in the child instead.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen([sys.executable, "-m", "tledge.cli", *args, "--serve",
                             str(device_port), "--local-port", str(local_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url, seen, deadline = None, [], time.time() + 600
    while url is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        found = re.search(r"http://127\.0\.0\.1:\d+/", line) if says in line else None
        url = found.group(0) if found else None
    if url != f"http://127.0.0.1:{local_port}/":
        proc.kill()
        url = None
    return proc, url, device_port, "".join(seen)


def _camera_on(env: dict, model: str, clip: str, log) -> list[str]:
    """camera --on with the page forwarded; fetch it; Ctrl-C; the device's camera must end."""
    proc, url, device_port, seen = _start_on(env, "live view of", "camera", "--on", HOST,
                                             "--model", model, "--source", clip, "--loop")
    problems = []
    if url is None:
        return [f"no live view line with the local port: {seen[-2000:]}"]
    with urllib.request.urlopen(url, timeout=30) as page:
        if b"tledge camera" not in page.read():
            problems.append("the forwarded page is not the camera's")
    deadline = time.time() + 300
    while True:  # the figures, once a frame is through (before it: only a status)
        with urllib.request.urlopen(url + "stats.json", timeout=30) as stats:
            figures = json.loads(stats.read())
        if "models" in figures or time.time() > deadline:
            break
        time.sleep(1)
    if "models" not in figures:
        return [f"no frame on the forwarded page in 300 s: {figures}"]
    log(f"       page through {url}: frame {figures['frame']}, "
        f"{figures['models'][0]['name']}")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    if proc.returncode != 130 or "Traceback" in rest:
        problems.append(f"Ctrl-C: exit {proc.returncode}, expected 130: {rest[-1500:]}")
    left = subprocess.run(["ssh", "-F", env["TLEDGE_SSH_COMMAND"].split()[-1], HOST,
                           f"pgrep -f -- '--serve {device_port}'"], capture_output=True,
                          text=True)
    if left.returncode != 1:
        problems.append(f"the device's camera still runs after Ctrl-C: {left.stdout}")
    return problems


def _collect_on(env: dict, clip: str, tmp: Path, log) -> list[str]:
    """collect --on with the page forwarded; three shots through it; Ctrl-C; then pull them
    back, and again (nothing new)."""
    proc, url, _, seen = _start_on(env, "collecting on", "collect", "data/mine", "--on", HOST,
                                   "--source", clip, "--loop", "--labels", "mug,keys")
    if url is None:
        return [f"no collect page line with the local port: {seen[-2000:]}"]
    request = urllib.request.Request(url + "capture", data=b"label=mug&count=3", method="POST")
    with urllib.request.urlopen(request, timeout=300) as answer:
        saved = json.loads(answer.read())["saved"]
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    problems = [] if len(saved) == 3 else [f"3 shots asked, {saved} saved"]
    if proc.returncode != 130 or "Traceback" in rest:
        problems.append(f"Ctrl-C: exit {proc.returncode}, expected 130: {rest[-1500:]}")
    pulled = [_tledge(env, "pull", f"{HOST}:~/tledge/data/mine", str(tmp / "mine"))
              for _ in range(2)]
    if any(p.returncode != 0 for p in pulled):
        return problems + [f"pull: {pulled[0].stderr[-1500:]}{pulled[1].stderr[-1500:]}"]
    here = sorted(str(p.relative_to(tmp / "mine")) for p in (tmp / "mine").rglob("*.jpg"))
    if here != sorted(saved):
        problems.append(f"pulled {here}, the page saved {saved}")
    if "0 new" not in pulled[1].stdout:
        problems.append(f"the second pull was not empty: {pulled[1].stdout[-500:]}")
    log(f"       {len(saved)} shots through the forwarded page, pulled back: "
        f"{pulled[0].stdout.strip().splitlines()[-1][:120]}")
    return problems


def check(root: Path, cpuinfo: Path, work_host: Path, guest_work: str, log) -> list[str]:
    """Run the loop; returns the failures."""
    failures: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="tledge-ssh-"))
    sshd = None
    try:
        for name in ("key", "other_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(tmp / name)], check=True)
        _prepare_user(root, tmp / "key.pub")
        port = _free_port()
        sshd = _start_sshd(root, cpuinfo, port, tmp / "sshd.log")
        log(f"sshd of the emulated Pi on 127.0.0.1:{port}; user pi, a key made for the check")
        env = dict(os.environ, TLEDGE_SSH_COMMAND=f"ssh -F {_ssh_config(tmp, port, tmp / 'key')}",
                   TF_CPP_MIN_LOG_LEVEL="2")
        export, model = work_host / "export", str(work_host / "export/model_int8.tflite")
        space = tmp / "space.yaml"  # two tiny candidates: a tune end to end, not a search
        space.write_text("candidates:\n  - backbone: mobilenet_v2\n    alpha: 0.35\n"
                         "    image_size: [32, 48]\n")
        steps = [
            ("tledge deploy (blank device: venv, wheel, doctor)", ["deploy", str(export), HOST],
             0, ["installed now", "backend litert", "(aarch64)"]),
            ("tledge deploy again (nothing to send)", ["deploy", str(export), HOST], 0,
             ["(0 sent, ", "already there"]),
            ("tledge bench --on --compare-local",
             ["bench", model, "--on", HOST, "--compare-local", "--runs", "3", "--warmup", "1",
              "--threads", "1", "--json", str(tmp / "pi.json"), "--chart", str(tmp / "pi.png")],
             0, ["wrote", "model_int8"]),
            ("tledge tune --on (two candidates timed there, trained here)",
             ["tune", "--data", "shapes", "--limit", "8", "--max-latency-ms", "100000", "--on",
              HOST, "--space", str(space), "--weights", "none", "--runs", "3",
              "--time-budget", "30m", "--out", str(tmp / "tune")],
             0, ["2 of 2 candidate(s) within", "best: mobilenet_v2-a0.35-",
                 "next: tledge train --config"]),
            ("a key the device refuses", ["deploy", model, "refused-key"], 1,
             ["refused the login"]),
            ("a port nobody listens on", ["deploy", model, "closed-port"], 1,
             ["cannot reach closed-port", "Connection refused"]),
            ("--service without systemd", ["deploy", str(export), HOST, "--service",
                                           "model_int8.tflite"], 1, ["no systemd here"]),
        ]
        for what, args, rc, expects in steps:
            result = _tledge(env, *args)
            out = result.stdout + result.stderr
            problems = [f"exit {result.returncode}, expected {rc}"] if result.returncode != rc \
                else []
            problems += ["a traceback"] if "Traceback" in out else []
            problems += [f"no {e!r} in the output" for e in expects if e not in out]
            log(f"{'ok  ' if not problems else 'FAIL'} {what}: exit {result.returncode}")
            if problems:
                failures.append(f"{what}: {', '.join(problems)}\n{out[-3000:]}")
            else:
                for line in [line for line in out.strip().splitlines() if line.strip()][-2:]:
                    log(f"       {line[:150]}")
        report = json.loads((tmp / "pi.json").read_text()) if (tmp / "pi.json").exists() else {}
        machines = {r.get("on") for r in report.get("results", [])}
        if report and (report["machine"]["arch"] != "aarch64" or len(machines) != 2):
            failures.append(f"bench --on: the device's rows are not aarch64 beside this "
                            f"machine's: {report['machine']}, {machines}")
        elif report:
            log(f"       device rows on {report['machine']['machine_id']}, local rows beside "
                "them (times under emulation: never a Pi's)")
        if (root / "home/pi/.config/systemd/user/tledge-camera.service").exists():
            failures.append("--service without systemd left a unit behind")
        camera = _camera_on(env, model, f"{guest_work}/clip.mp4", log)
        log(f"{'ok  ' if not camera else 'FAIL'} tledge camera --on --serve, page forwarded, "
            "Ctrl-C")
        failures += [f"camera --on: {p}" for p in camera]
        collect = _collect_on(env, f"{guest_work}/clip.mp4", tmp, log)
        log(f"{'ok  ' if not collect else 'FAIL'} tledge collect --on, shots through the "
            "forwarded page, Ctrl-C, tledge pull twice")
        failures += [f"collect --on / pull: {p}" for p in collect]
    finally:
        if sshd is not None:
            os.killpg(sshd.pid, signal.SIGTERM)
            sshd.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    return failures
