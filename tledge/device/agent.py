"""What ``tledge deploy``, ``bench --on`` and ``camera --on`` run on the device.

The laptop sends this file's source over SSH as ``python3 -c SOURCE COMMAND ARGS...``: nothing of
tledge needs to be on the device first, and it is the same code whatever version is there. So it
uses the standard library only and Python 3.6's syntax, to run on any device's python3, if only
to say that it is too old. It answers with one JSON line on stdout; a problem is one line
``Error: ...`` on stderr and exit code 2. Never imported on the device, and never by tledge
itself but to read its source (``tledge.device.ssh.agent_source``).

The device's folder (``~/tledge`` unless the target names another)::

    DIR/venv -> venvs/BUILD     the live venv: a symlink, swapped in one rename
    DIR/venvs/BUILD/            one venv per build of tledge (its scripts name this path)
    DIR/models/                 the deployed .tflite files, labels.txt and model_card.json
    DIR/bench/                  what ``bench --on`` measured there
    DIR/.incoming-XXXX/         an upload, until the install that uses it (or an hour) ends

Commands:
  facts DIR                         Python, architecture, free space, the live build, models
  receive DIR NBYTES                a tar on stdin into a new DIR/.incoming-*: prints its path
  install DIR STAGE BUILD SPEC SSP  a venv for BUILD (when not live; pip pinned by the upload's
                                    constraints.txt when it has one), doctor, swap, models
  doctor DIR                        the live venv's tledge doctor
  service DIR MODEL PORT SOURCE     a systemd user unit running the camera's live page at boot
  unservice                         that unit stopped, disabled and removed
  supervise CMD...                  run CMD; end it when stdin closes (the laptop went away)
"""

import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

MIN_PYTHON = (3, 10)  # tledge's requires-python
# The machines LiteRT (ai-edge-litert) publishes Linux wheels for.
WHEEL_ARCHS = ("aarch64", "x86_64")
VENV_MB = 450  # a [pi] venv: numpy, OpenCV, LiteRT, matplotlib, pillow, with pip's room to unpack
UNIT = "tledge-camera.service"


class Failure(Exception):
    """A problem on the device, said in one line."""


CONSTRAINTS = "constraints.txt"  # the upload's pins for pip (the laptop's tledge/locks/pi.txt)


def _dir(path):
    return os.path.abspath(os.path.expanduser(path))


def _free_mb(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free // (1024 * 1024)


def sha256(path):
    """A file's SHA-256, hex (the laptop's side compares its files with it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _live_build(root):
    link = os.path.join(root, "venv")
    if not os.path.islink(link):
        return None
    target = os.readlink(link)
    venv = os.path.join(root, target)
    return os.path.basename(target) if os.path.exists(os.path.join(venv, ".complete")) else None


def _clean_incoming(root):
    """Uploads that a killed deploy left behind: any older than an hour (an upload and its
    install take minutes; a stage is removed by the install that uses it)."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(".incoming-") and time.time() - os.path.getmtime(path) > 3600:
            shutil.rmtree(path, ignore_errors=True)


def facts(root):
    root = _dir(root)
    models = {}
    folder = os.path.join(root, "models")
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if os.path.isfile(os.path.join(folder, name)):
                models[name] = sha256(os.path.join(folder, name))
    return {"python": platform.python_version(),
            "python_ok": sys.version_info[:2] >= MIN_PYTHON,
            "arch": platform.machine(), "arch_ok": platform.machine() in WHEEL_ARCHS,
            "dir": root, "free_mb": _free_mb(root), "build": _live_build(root),
            "models": models, "systemd": _systemd_user(), "user": os.environ.get("USER", "")}


def _systemd_user():
    """Whether a systemd user manager answers (not in a chroot or a container without one)."""
    if shutil.which("systemctl") is None:
        return False
    proc = subprocess.run(["systemctl", "--user", "is-system-running"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, universal_newlines=True)
    return proc.stdout.strip() in ("running", "degraded", "starting", "initializing")


def _extract(archive, stage):
    """Plain files and folders inside the stage only (no links, devices or paths outside)."""
    for member in archive:  # a stream: one pass
        target = os.path.realpath(os.path.join(stage, member.name))
        if not (member.isfile() or member.isdir()) or not target.startswith(stage + os.sep):
            raise Failure("the upload holds {!r}, which is not a plain file inside the upload: "
                          "refused".format(member.name))
        if hasattr(tarfile, "data_filter"):  # Python 3.12+ (and recent 3.8-3.11 releases)
            archive.extract(member, stage, filter="data")
        else:
            archive.extract(member, stage)


def receive(root, nbytes):
    root = _dir(root)
    _clean_incoming(root)
    need = int(nbytes) // (1024 * 1024) + 20
    if _free_mb(root) < need:
        raise Failure("no space on the device: {} has {} MB free, the upload needs {} MB (free "
                      "some, e.g. sudo apt clean)".format(root, _free_mb(root), need))
    os.makedirs(root, exist_ok=True)
    stage = os.path.realpath(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
            _extract(archive, stage)
    except (tarfile.TarError, OSError, EOFError) as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise Failure("the upload broke off ({}): nothing was changed".format(e)) from e
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return {"stage": stage}


class _Laptop:
    """Whether the laptop is still there: its ssh keeps this command's stdin open until the
    command ends, so end-of-file means it went away (Ctrl-C, a dropped link, a kill). The step
    running then is stopped, and nothing after it is done."""

    def __init__(self):
        self.gone = threading.Event()
        self.step = None

    def watch(self):
        def read():
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            self.gone.set()
            if self.step is not None and self.step.poll() is None:
                self.step.terminate()
        threading.Thread(target=read, daemon=True).start()

    def check(self):
        if self.gone.is_set():
            raise Failure("the laptop went away midway: stopped, the live venv and models "
                          "are as they were")


LAPTOP = _Laptop()


def _run(cmd, what, echo=True):
    """Run a step; its output goes to stderr line by line (the laptop shows it)."""
    LAPTOP.check()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True)
    LAPTOP.step = proc
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if echo:
            sys.stderr.write("  " + line)
            sys.stderr.flush()
    proc.wait()
    LAPTOP.check()
    if proc.returncode != 0:
        tail = [line for line in lines if line.strip()][-1:] or ["no output"]
        raise Failure("{} failed on the device (exit {}): {}".format(what, proc.returncode,
                                                                     tail[0][:300]))
    return "\n".join(lines)


def _build_venv(root, build, spec, system_site, constraints=None):
    venvs = os.path.join(root, "venvs")
    venv = os.path.join(venvs, build)
    if os.path.isdir(venv):  # an earlier try of this build that did not finish
        shutil.rmtree(venv)
    free = _free_mb(root)
    if free < VENV_MB:
        raise Failure("no space on the device: {} has {} MB free, a new venv needs about {} MB "
                      "(free some, e.g. sudo apt clean)".format(root, free, VENV_MB))
    os.makedirs(venvs, exist_ok=True)
    try:
        flags = ["--system-site-packages"] if system_site == "1" else []
        _run([sys.executable, "-m", "venv"] + flags + [venv], "creating the venv")
        python = os.path.join(venv, "bin", "python")
        # the exact versions tledge was tested with (its locks/pi.txt), where the laptop sent them
        pins = ["-c", constraints] if constraints and os.path.isfile(constraints) else []
        _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar",
              "off"] + pins + [spec], "pip install " + os.path.basename(spec))
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return venv


def _swap(root, build):
    """Point DIR/venv at venvs/BUILD in one rename, then remove the other builds."""
    tmp = os.path.join(root, ".venv-link-{}".format(os.getpid()))
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.join("venvs", build), tmp)
    os.replace(tmp, os.path.join(root, "venv"))
    for name in os.listdir(os.path.join(root, "venvs")):
        if name != build:
            shutil.rmtree(os.path.join(root, "venvs", name), ignore_errors=True)


def _publish_models(root, stage):
    """Each file of the upload's models/ renamed into DIR/models: each one whole, old or new."""
    src = os.path.join(stage, "models")
    if not os.path.isdir(src):
        return []
    dst = os.path.join(root, "models")
    os.makedirs(dst, exist_ok=True)
    names = sorted(os.listdir(src))
    for name in names:
        os.replace(os.path.join(src, name), os.path.join(dst, name))
    return names


def _lock_folder(root):
    """Take DIR/.deploy.lock for as long as this process lives (flock: released when it ends,
    however it ends). Two deploys building venvs in one folder at once broke each other's pip.
    The holder's pid and start time are written in it, for the other's message."""
    import fcntl

    fd = os.open(os.path.join(root, ".deploy.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip()
        os.close(fd)
        raise Failure("another tledge deploy is installing into {} ({}): wait for it to end, "
                      "then deploy again".format(root, holder or "its pid is not known")) from None
    os.ftruncate(fd, 0)
    os.write(fd, "pid {}, since {}".format(os.getpid(), time.strftime("%H:%M:%S")).encode())
    return fd  # left open on purpose: the lock lasts as long as the process


def install(root, stage, build, spec, system_site):
    """A venv for BUILD unless it is live already; its doctor must pass before it is swapped in;
    then the models. A failure at any step leaves the live venv and models as they were."""
    LAPTOP.watch()
    root, stage = _dir(root), os.path.realpath(_dir(stage))
    if os.path.dirname(stage) != os.path.realpath(root) or ".incoming-" not in stage:
        raise Failure("{} is not an upload of {}".format(stage, root))
    try:
        _lock_folder(root)  # held until this process ends: one install at a time
        installed = False
        if _live_build(root) != build:
            if spec.startswith("wheel:"):
                spec = os.path.join(stage, spec[len("wheel:"):])
            venv = _build_venv(root, build, spec, system_site,
                               os.path.join(stage, CONSTRAINTS))
            try:
                code, report = _doctor(venv)
                if code != 0:
                    raise Failure("the new venv's tledge doctor failed, so the old one stays: "
                                  + (_verdict(report) or "no output"))
                LAPTOP.check()
            except BaseException:
                shutil.rmtree(venv, ignore_errors=True)
                raise
            open(os.path.join(venv, ".complete"), "w").close()
            _swap(root, build)
            installed = True
        models = _publish_models(root, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    code, report = _doctor(os.path.join(root, "venv"))
    # a camera unit running the old venv or model: restarted on the new ones
    restarted = (installed or bool(models)) and os.path.exists(_unit_path()) and \
        shutil.which("systemctl") is not None and subprocess.call(
            ["systemctl", "--user", "try-restart", UNIT], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL) == 0
    return {"installed": installed, "build": build, "models": models,
            "doctor": report, "doctor_ok": code == 0, "restarted": restarted}


def _doctor(venv):
    if not os.path.exists(os.path.join(venv, "bin", "tledge")):
        raise Failure("no tledge venv at {}: run tledge deploy first".format(venv))
    proc = subprocess.run([os.path.join(venv, "bin", "tledge"), "doctor", "--no-tensorflow"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True)
    return proc.returncode, proc.stdout


def doctor(root):
    code, report = _doctor(os.path.join(_dir(root), "venv"))
    return {"doctor": report, "doctor_ok": code == 0}


def _verdict(report):
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or [""])[-1][:300]


def _unit_path():
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(config, "systemd", "user", UNIT)


def _systemctl(*args):
    proc = subprocess.run(["systemctl", "--user"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        raise Failure("systemctl --user {} failed: {}".format(
            " ".join(args), (proc.stdout.strip().splitlines() or ["no output"])[-1]))
    return proc.stdout


def _unit_word(value):
    """One word of a unit's ExecStart=: in double quotes with systemd's escapes, and % and $
    doubled, so that a space does not split it, a % is no specifier and a $ no variable. A
    control character (a newline would start a line of its own) is refused."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Failure("{!r} has a control character: it cannot go into a systemd unit".format(
            value))
    return '"{}"'.format(value.replace("\\", "\\\\").replace('"', '\\"')
                         .replace("%", "%%").replace("$", "$$"))


def _port(port):
    if not str(port).isdigit() or not 1 <= int(port) <= 65535:
        raise Failure("port {!r} is not a TCP port (1-65535)".format(port))
    return int(port)


def unit_text(root, model, port, source):
    tledge = os.path.join(root, "venv", "bin", "tledge")
    argv = [tledge, "camera", "--model", os.path.join(root, "models", model), "--source",
            source, "--headless", "--serve", str(_port(port))]
    return ("[Unit]\nDescription=tledge live classifier (camera, page on 127.0.0.1:{port})\n"
            "After=network.target\n\n[Service]\n"
            "ExecStart={command}\nRestart=on-failure\nRestartSec=5\n\n"
            "[Install]\nWantedBy=default.target\n").format(
                port=_port(port), command=" ".join(_unit_word(a) for a in argv))


def service(root, model, port, source):
    """Install, enable and start the camera's unit; at boot too when lingering is allowed."""
    root = _dir(root)
    if os.path.basename(model) != model or model in (".", "..") or \
            not os.path.isfile(os.path.join(root, "models", model)):
        raise Failure("{} is not deployed in {}/models".format(model, root))
    if shutil.which("systemctl") is None:
        raise Failure("no systemd here (systemctl not found): start the camera yourself")
    text = unit_text(root, model, port, source)  # refuses what cannot be written into it
    path = _unit_path()
    existed = os.path.exists(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tledge-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    try:
        _systemctl("daemon-reload")
        _systemctl("enable", UNIT)
        _systemctl("restart", UNIT)
    except Failure:
        if not existed:  # leave nothing half-done: no unit that systemd never took
            os.remove(path)
            subprocess.call(["systemctl", "--user", "daemon-reload"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        raise
    linger = subprocess.call(["loginctl", "enable-linger"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) == 0 if shutil.which("loginctl") else False
    return {"unit": path, "port": int(port), "at_boot": linger}


def unservice():
    path = _unit_path()
    if not os.path.exists(path):
        return {"unit": path, "removed": False}
    if shutil.which("systemctl"):
        subprocess.call(["systemctl", "--user", "disable", "--now", UNIT],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.remove(path)
    if shutil.which("systemctl"):
        subprocess.call(["systemctl", "--user", "daemon-reload"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    return {"unit": path, "removed": True}


def supervise(cmd):
    """Run CMD with this process's stdout and stderr; when stdin reaches its end (the laptop's
    ssh ended: Ctrl-C, a dropped link) or a SIGTERM/SIGHUP comes, CMD gets SIGTERM, then SIGKILL
    if it has not ended 10 s later. Exits with CMD's code."""
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)

    def stop(*_):
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()

    def watch_stdin():
        while os.read(0, 4096):
            pass
        stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    while child.poll() is None:
        time.sleep(0.2)
    sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


COMMANDS = {"facts": facts, "receive": receive, "install": install, "doctor": doctor,
            "service": service, "unservice": unservice}


def main(argv):
    if not argv:
        raise Failure("no command given: one of " + ", ".join(sorted(COMMANDS) + ["supervise"]))
    if argv[0] == "supervise":
        supervise(argv[1:])
    if argv[0] not in COMMANDS:
        raise Failure("unknown command {!r}".format(argv[0]))
    print(json.dumps(COMMANDS[argv[0]](*argv[1:])))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Failure as e:
        sys.stderr.write("Error: {}\n".format(e))
        sys.exit(2)
    except OSError as e:
        sys.stderr.write("Error: {}: {}\n".format(e.strerror or type(e).__name__,
                                                  e.filename or ""))
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
