"""Prove tledge's Raspberry Pi path on an emulated Raspberry Pi OS Bookworm (arm64, Python 3.11).

    make pi-check                    # or: .venv/bin/python tests/pi/pi_check.py

1. Builds (once, cached outside the checkout) a Debian 12 arm64 root: the Python, glibc and pip
   of Raspberry Pi OS 64-bit (tests/pi/build_root.sh), run through qemu-user-static.
2. Installs this checkout's ``.[pi]`` into a venv inside it: LiteRT, OpenCV, numpy, matplotlib,
   no TensorFlow, exactly what a Pi's ``pip install "tledge[pi]"`` gets.
3. Runs the README's Pi commands there (doctor, predict, evaluate, bench --chart, a headless
   camera run on a generated video, and a command that needs TensorFlow) on models and data made
   here, and checks every exit code and that no traceback appears.
4. Starts OpenSSH's server inside it and runs the device loop from this machine over real SSH:
   deploy, bench --on, camera --on --serve, and the bad cases (tests/pi/ssh_loop.py).

Every mount lives in a private mount namespace (``unshare --mount``): /proc for the chroot, and
a Raspberry Pi 4's /proc/cpuinfo over the chroot's /proc/cpuinfo only (qemu shows the guest the
x86 host's, which LiteRT >= 2.2 crashes on). They vanish when the check ends, however it ends;
the host's /proc and /dev are never bound into the root, so no recursive delete can reach them.

It proves installs and behaviour, never speed: times under emulation mean nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ssh_loop  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ROOT = Path(os.environ.get("TLEDGE_PI_ROOT")
                    or Path.home() / ".cache" / "tledge" / "pi-root-bookworm-arm64")
CPUINFO = HERE / "rpi4_cpuinfo.txt"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
GUEST_SRC, GUEST_VENV, GUEST_WORK = "/opt/tledge-src", "/opt/tledge-venv", "/opt/tledge-check"


def unavailable() -> str | None:
    """Why arm64 emulation cannot run here (one line), or None when it can."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (chroot, mount namespaces, binfmt_misc)"
    for tool in ("unshare", "chroot", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} not found (apt-get install qemu-user-static binfmt-support mmdebstrap)"
    if not (Path("/usr/bin/qemu-aarch64-static").exists()
            or shutil.which("qemu-aarch64-static")):
        return "qemu-user-static not installed (apt-get install qemu-user-static binfmt-support)"
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
                       capture_output=True)
    if not (BINFMT / "register").exists():
        return "binfmt_misc cannot be mounted here (a container without that privilege)"
    if not (BINFMT / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists() or "enabled" not in entry.read_text():
        return "no enabled qemu-aarch64 binfmt_misc entry (update-binfmts --enable qemu-aarch64)"
    return None


def build_root(root: Path) -> Path:
    out = subprocess.run(["bash", str(HERE / "build_root.sh"), str(root)], check=True,
                         stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def in_guest(root: Path, command: str, timeout: float = 1800,
             pi_cpuinfo: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command in the emulated Pi (private mounts; output captured).
    ``pi_cpuinfo=False`` leaves qemu's view of /proc/cpuinfo (the x86 host's) in place."""
    cpuinfo = f"mount --bind {CPUINFO} {root}/proc/cpuinfo && " if pi_cpuinfo else ""
    setup = (f"mount -t proc proc {root}/proc && {cpuinfo}"
             f"mount -t tmpfs tmpfs {root}/dev/shm && "
             f"mount -t sysfs -o ro sysfs {root}/sys && "
             f"exec chroot {root} /usr/bin/env -i HOME=/root LANG=C.UTF-8 "
             f"PATH={GUEST_VENV}/bin:/usr/local/bin:/usr/bin:/bin "
             f"PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 "
             f"/bin/bash -c {shlex.quote(command)}")
    return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                           "bash", "-c", setup], capture_output=True, text=True, timeout=timeout)


def copy_pip_settings(root: Path) -> None:
    """This machine's pip settings, so pip inside the root reaches the same package index."""
    for src in ("/etc/pip.conf", str(Path.home() / ".config/pip/pip.conf")):
        if Path(src).is_file():
            dst = root / src.lstrip("/").replace(str(Path.home()).lstrip("/"), "root")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    cert = os.environ.get("PIP_CERT")
    if cert and Path(cert).is_file():
        dst = root / cert.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, dst)
        # pip inside finds it through its own config
        conf = root / "etc/pip.conf"
        text = conf.read_text() if conf.exists() else ""
        if "cert" not in text:
            conf.write_text(text + ("" if "[global]" in text else "[global]\n")
                            + f"cert = {cert}\n")


def copy_source(root: Path) -> None:
    """This checkout as git sees it (tracked and untracked-but-not-ignored files)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, stdout=subprocess.PIPE).stdout.split(b"\0")
    dst = root / GUEST_SRC.lstrip("/")
    if dst.exists():
        shutil.rmtree(dst)
    for name in filter(None, files):
        src = REPO / name.decode()
        if src.is_file():
            target = dst / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def make_assets(work: Path, log) -> None:
    """A tiny trained model exported as int8 and fp32, a class folder and a video, made here."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    tledge = [sys.executable, "-m", "tledge.cli"]
    run = work / "run"
    log("training and exporting a tiny model on this machine")
    subprocess.run(tledge + ["train", "--data", "shapes", "--alpha", "0.35", "--image-size", "48",
                             "--weights", "none", "--epochs-frozen", "1", "--epochs-finetune",
                             "0", "--epochs-qat", "0", "--limit", "30", "--no-augment",
                             "--out", str(run), "--overwrite"],
                   check=True, env=env, capture_output=True)
    subprocess.run(tledge + ["export", str(run), "--int8", "--fp32", "--max-drop", "100",
                             "--out", str(work / "export"), "--overwrite"],
                   check=True, env=env, capture_output=True)
    from tledge.data.shapes import write_folder

    write_folder(work / "images", per_class=3, size=96, seed=5)
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(work / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 15.0,
                             (320, 240))
    for i in range(20):
        frame = np.full((240, 320, 3), (40 + 9 * i, 90, 200 - 8 * i), np.uint8)
        cv2.circle(frame, (60 + 10 * i, 120), 40, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    shutil.rmtree(run)  # the Pi gets .tflite files, not the run


# (what, command, expected exit code, text the output must contain, Pi 4 cpuinfo shown)
def guest_commands(w: str) -> list[tuple[str, str, int, str, bool]]:
    m8, m32 = f"{w}/export/model_int8.tflite", f"{w}/export/model_fp32.tflite"
    commands = [
        ("no TensorFlow in a [pi] install",
         "python -c 'import tensorflow' 2>&1 | tail -1", 0, "No module named 'tensorflow'"),
        ("tledge doctor", "tledge doctor", 0, "backend litert"),
        ("tledge predict (int8)", f"tledge predict {m8} {w}/images/circle/*.png --top-k 2", 0,
         "circle"),
        ("tledge evaluate (int8, confusion matrix PNG)",
         f"tledge evaluate {m8} --data {w}/images --out {w}/eval --overwrite "
         f"&& test -s {w}/eval/confusion_matrix.png", 0, "accuracy"),
        ("tledge bench --chart",
         f"tledge bench {m8} {m32} --threads 1,2 --runs 3 --warmup 1 --json {w}/b.json "
         f"--markdown {w}/b.md --chart {w}/b.png && test -s {w}/b.png", 0, "model_int8"),
        ("tledge camera --headless on a video",
         f"tledge camera --model {m8} --compare {m32} --source {w}/clip.mp4 --headless "
         f"--output {w}/frames.jsonl --overwrite && test -s {w}/frames.jsonl", 0, "20 frames"),
        ("tledge camera --source picamera (the Picamera2 stand-in of the tests)",
         f"PYTHONPATH={GUEST_SRC}/tests/fakes tledge camera --model {m8} --source picamera "
         "--headless --max-frames 5", 0, "5 frames"),
        ("a command that needs TensorFlow", f"tledge train --data shapes --out {w}/r", 1,
         'pip install "tledge[train]"'),
        # qemu shows the x86 host's /proc/cpuinfo and LiteRT >= 2.2 segfaults parsing it: the
        # probe must turn that into one line (no other backend is installed to fall back on).
        ("a backend that crashes (x86 cpuinfo under qemu)",
         f"tledge predict {m8} {w}/images/circle/*.png", 1, "crashed with SIGSEGV"),
        ("tledge doctor shows the crashed probe", "tledge doctor", 1, "crashed with SIGSEGV"),
    ]
    return [(*c, True) for c in commands[:-2]] + [(*c, False) for c in commands[-2:]]


def check(root: Path = DEFAULT_ROOT, log=print) -> list[str]:
    """Run the whole check; returns the failures (empty when the Pi path works)."""
    t0 = time.time()
    root = build_root(root)
    log(f"arm64 root: {root}")
    copy_pip_settings(root)
    copy_source(root)
    work_host = root / GUEST_WORK.lstrip("/")
    if work_host.exists():
        shutil.rmtree(work_host)
    work_host.mkdir(parents=True)
    make_assets(work_host, log)
    log("installing .[pi] with tledge/locks/pi.txt into a venv inside the emulated Pi "
        "(minutes under qemu)")
    install = in_guest(root, f"test -x {GUEST_VENV}/bin/python || python3 -m venv {GUEST_VENV}; "
                             f"{GUEST_VENV}/bin/python -m pip install --quiet "
                             f"-c {GUEST_SRC}/tledge/locks/pi.txt '{GUEST_SRC}[pi]' && "
                             "python --version && uname -m && "
                             "pip list 2>/dev/null | grep -i -E 'litert|numpy|opencv|matplotlib'")
    if install.returncode != 0:
        return [f"pip install .[pi] failed in the emulated Pi:\n{install.stdout}{install.stderr}"]
    log(install.stdout.strip())
    failures = []
    for what, command, rc, expect, pi_cpuinfo in guest_commands(GUEST_WORK):
        # A fresh probe cache per check run (the probe is part of what is proven), one per
        # cpuinfo: a probe's result is cached per machine, and the two are different machines.
        cache = f"{GUEST_WORK}/cache-{'pi' if pi_cpuinfo else 'host'}"
        result = in_guest(root, f"export TLEDGE_CACHE_DIR={cache}; cd {GUEST_WORK}; {command}",
                          pi_cpuinfo=pi_cpuinfo)
        out = result.stdout + result.stderr
        problems = []
        if result.returncode != rc:
            problems.append(f"exit code {result.returncode}, expected {rc}")
        if "Traceback" in out:
            problems.append("a traceback")
        if expect not in out:
            problems.append(f"no {expect!r} in the output")
        log(f"{'ok  ' if not problems else 'FAIL'} {what}: exit {result.returncode}")
        if problems:
            failures.append(f"{what} ({command}): {', '.join(problems)}\n{out[-3000:]}")
        else:
            tail = [line for line in out.strip().splitlines() if line.strip()][-3:]
            for line in tail:
                log(f"       {line[:150]}")
    if shutil.which("ssh") is None:
        failures.append("no ssh client on this machine for the device loop (apt-get install "
                        "openssh-client)")
    else:
        log("the device loop over SSH: deploy, bench --on, camera --on, from this machine")
        failures += ssh_loop.check(root, CPUINFO, work_host, GUEST_WORK, log)
    log(f"pi-check took {time.time() - t0:.0f} s (under emulation: not a timing)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="where the arm64 root is cached (built on first use)")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"pi-check skipped: {reason}")
        return 0 if os.environ.get("TLEDGE_PI_CHECK") != "require" else 1
    with tempfile.TemporaryDirectory():
        failures = check(args.root)
    for failure in failures:
        print(f"\nFAILED: {failure}", file=sys.stderr)
    print("pi-check: " + ("all Pi commands work on arm64" if not failures
                          else f"{len(failures)} failed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
