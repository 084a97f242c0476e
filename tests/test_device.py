"""The device loop over SSH (tledge deploy, bench --on, camera --on) against a stand-in ssh
(tests/fakes/ssh) whose "device" is this machine: the real agent, a real venv built with pip,
real swaps and failures. The real OpenSSH client and server, on an emulated Raspberry Pi OS,
are make pi-check's (tests/pi/pi_check.py)."""

import io
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import MODELS, as_from_a_terminal
from tledge.device import agent, deploy, ssh
from tledge.device.ssh import Device, Target
from tledge.core.errors import TledgeError

FAKE_SSH = Path(__file__).parent / "fakes" / "ssh"
INT8, FP32 = MODELS / "colour_int8.tflite", MODELS / "colour_fp32.tflite"


# ----------------------------------------------------------------- targets and ssh's errors

@pytest.mark.parametrize("text, host, folder", [
    ("pi@raspberrypi.local", "pi@raspberrypi.local", "~/tledge"),
    ("raspberrypi", "raspberrypi", "~/tledge"),
    ("pi@10.0.0.7:/opt/models/", "pi@10.0.0.7", "/opt/models"),
    ("lab-pi:~/edge", "lab-pi", "~/edge"),
    ("pi@[fe80::1]:models", "pi@[fe80::1]", "models"),
])
def test_targets_parse(text, host, folder):
    target = Target.parse(text)
    assert (target.host, target.dir) == (host, folder)


@pytest.mark.parametrize("text", ["", "pi@", "@host", "-oProxyCommand=x", "a b", "pi@host@x"])
def test_bad_targets_are_one_line(text):
    with pytest.raises(TledgeError, match="is not a device: give user@host"):
        Target.parse(text)


@pytest.mark.parametrize("code, stderr, expected", [
    (255, "ssh: Could not resolve hostname pi4: Name or service not known", "cannot reach pi4"),
    (255, "ssh: connect to host pi4 port 22: Connection timed out", "cannot reach pi4"),
    (255, "pi@pi4: Permission denied (publickey,password).", "refused the login.*ssh-copy-id"),
    (255, "Host key verification failed.", "host key is unknown or has changed"),
    (127, "bash: line 1: python3: command not found", "has no python3"),
    (137, "", "killed midway"),
    (2, "Error: no space on the device: /home/pi/tledge has 3 MB free", "on pi4: no space"),
    (1, "something else\nthe last line", r"failed \(exit 1\): the last line"),
])
def test_ssh_failures_become_one_line(code, stderr, expected):
    error = ssh.ssh_failure("pi4", code, stderr)
    assert "\n" not in str(error)
    assert __import__("re").search(expected, str(error)), str(error)


def test_the_users_ssh_command_is_used_in_batch_mode(monkeypatch):
    monkeypatch.setenv("TLEDGE_SSH_COMMAND", "ssh -F '/my dir/config' -p 2222")
    argv = Device(Target.parse("pi@pi4")).command("true", forward=(9000, 8080))
    assert argv[:4] == ["ssh", "-F", "/my dir/config", "-p"]
    assert "BatchMode=yes" in argv and "127.0.0.1:9000:127.0.0.1:8080" in argv
    assert argv[-3:] == ["--", "pi@pi4", "true"]


# ----------------------------------------------------------------- what is sent


def _export_folder(tmp_path, passed=("model_int8.tflite", "model_fp32.tflite")):
    folder = tmp_path / "run" / "export"
    folder.mkdir(parents=True)
    for name, src in (("model_int8.tflite", INT8), ("model_fp32.tflite", FP32)):
        (folder / name).write_bytes(src.read_bytes())
    (folder / "labels.txt").write_text("red\ngreen\n")
    (folder / "model_card.json").write_text(json.dumps({"files": {
        name: {"passed_gate": name in passed} for name in ("model_int8.tflite",
                                                            "model_fp32.tflite")}}))
    return folder


def test_a_run_sends_its_verified_files_only(tmp_path):
    folder = _export_folder(tmp_path, passed=("model_int8.tflite",))
    names = sorted(p.name for p in deploy.collect([str(folder.parent)]))
    assert names == ["labels.txt", "model_card.json", "model_int8.tflite"]


@pytest.mark.parametrize("make, expected", [
    (lambda t: t / "nothing.tflite", "does not exist"),
    (lambda t: _touch(t / "model_int8.REJECTED.tflite"), "failed export's accuracy gate"),
    (lambda t: _mkdir(t / "run"), "holds no exported model"),
    (lambda t: _export_folder(t, passed=()).parent, "no file .* passed"),
])
def test_what_cannot_be_sent_is_one_line(tmp_path, make, expected):
    with pytest.raises(TledgeError, match=expected):
        deploy.collect([str(make(tmp_path))])


def _touch(path):
    path.write_bytes(b"x")
    return path


def _mkdir(path):
    path.mkdir()
    return path


def test_two_files_of_one_name_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / INT8.name).write_bytes(INT8.read_bytes())
    with pytest.raises(TledgeError, match="two files named colour_int8.tflite"):
        deploy.collect([str(INT8), str(tmp_path / "a" / INT8.name)])


def test_the_build_id_follows_the_code(tmp_path):
    root = deploy.source_checkout()
    assert root is not None and deploy.build_id(root) == deploy.build_id(root)
    copy = tmp_path / "src"
    for path in deploy._wheel_files(root):
        target = copy / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    assert deploy.build_id(copy) == deploy.build_id(root)
    (copy / "tledge" / "device" / "agent.py").write_text("# changed\n", "utf-8")
    assert deploy.build_id(copy) != deploy.build_id(root)


@pytest.mark.parametrize("facts, expected", [
    ({"python": "3.7.3", "python_ok": False, "arch": "aarch64", "arch_ok": True},
     "Python 3.7.3; tledge needs 3.10"),
    ({"python": "3.11.2", "python_ok": True, "arch": "armv7l", "arch_ok": False},
     "armv7l, and LiteRT publishes wheels for aarch64 and x86_64 only"),
])
def test_a_device_that_cannot_run_tledge_is_refused_before_anything_is_sent(monkeypatch, facts,
                                                                             expected):
    sent = []
    facts = {**facts, "dir": "/home/pi/tledge", "free_mb": 9000, "build": None, "models": {},
             "systemd": False}
    monkeypatch.setattr(Device, "agent", lambda self, *a, **k: sent.append(a[0]) or facts)
    with pytest.raises(TledgeError, match=expected):
        deploy.push(Device(Target.parse("pi@pi4")), [INT8], echo=lambda s: None)
    assert sent == ["facts"]


# ----------------------------------------------------------------- the agent, on its own

def _agent(*args, stdin=b"", env=None):
    return subprocess.run([sys.executable, "-c", ssh.agent_source(), *args], input=stdin,
                          capture_output=True, env=env)


def test_the_agent_runs_on_python_3_6_syntax():
    import ast

    from tledge.device.pull import PULL_AGENT
    for source in (ssh.agent_source(), PULL_AGENT.read_text()):
        assert ast.parse(source, feature_version=(3, 6)) is not None


def test_an_upload_that_breaks_off_leaves_nothing(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        archive.add(str(INT8), arcname="models/model_int8.tflite")
    cut = buf.getvalue()[: len(buf.getvalue()) // 3]
    result = _agent("receive", str(tmp_path / "dev"), "1000", stdin=cut)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("Error: the upload broke off")
    assert [p.name for p in (tmp_path / "dev").iterdir()] == []


def test_an_upload_with_a_path_outside_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        archive.add(str(INT8), arcname="../escaped.tflite")
    result = _agent("receive", str(tmp_path / "dev"), "1000", stdin=buf.getvalue())
    assert result.returncode == 2 and b"refused" in result.stderr
    assert not (tmp_path / "escaped.tflite").exists()


def test_no_space_is_said_before_the_upload(tmp_path):
    result = _agent("receive", str(tmp_path / "dev"), str(10 ** 15))
    assert result.returncode == 2
    assert b"Error: no space on the device" in result.stderr
    assert not list((tmp_path / "dev").glob(".incoming-*"))


def test_two_installs_into_one_device_folder_never_run_at_once(tmp_path):
    """Two deploys at once broke each other's venv (ensurepip errors): the second is refused
    in one line naming the first, and its upload is removed; the first's lock ends with it."""
    import fcntl

    root = tmp_path / "dev"
    stage = root / ".incoming-abc"
    stage.mkdir(parents=True)
    with open(root / ".deploy.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 4242, since 10:00:00")
        held.flush()
        result = _agent("install", str(root), str(stage), "b1", "wheel:x.whl[pi]", "1")
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        f"Error: another tledge deploy is installing into {root} (pid 4242, since 10:00:00): "
        "wait for it to end, then deploy again")
    assert not stage.exists() and not (root / "venvs").exists()


def test_the_unit_runs_the_deployed_camera(tmp_path):
    text = agent.unit_text("/home/pi/tledge", "model_int8.tflite", 8080, "picamera")
    assert ('ExecStart="/home/pi/tledge/venv/bin/tledge" "camera" "--model" '
            '"/home/pi/tledge/models/model_int8.tflite" "--source" "picamera" "--headless" '
            '"--serve" "8080"\n' in text)
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text


@pytest.mark.parametrize("source", ["rtsp://cam/a b?x=%41&y=$HOME", 'say "hi" \\ back'])
def test_the_unit_keeps_each_word_whole_for_systemd(source):
    """A space split ExecStart=, % was read as a specifier and $ as a variable: each word is
    quoted for systemd, and reading it back as systemd does gives the word itself."""
    text = agent.unit_text("/home/pi/my models", "m.tflite", 8080, source)
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    words = _systemd_words(line[len("ExecStart="):])
    assert words[0] == "/home/pi/my models/venv/bin/tledge"
    assert words[words.index("--source") + 1] == source
    assert text.count("\n") == 11  # no line of its own added


def _systemd_words(text):
    """ExecStart='s words as systemd reads them (quotes, \\ escapes, %%, $$)."""
    import shlex
    words = shlex.split(text.replace("%%", "\0p").replace("$$", "\0d"), posix=True)
    return [w.replace("\0p", "%").replace("\0d", "$") for w in words]


@pytest.mark.parametrize("source", ["0\nExecStartPre=/bin/touch /tmp/x", "a\rb", "x\x1b[2J"])
def test_a_source_with_a_control_character_is_refused_on_both_sides(source):
    with pytest.raises(agent.Failure, match="control character"):
        agent.unit_text("/home/pi/tledge", "m.tflite", 8080, source)
    with pytest.raises(TledgeError, match="control character"):
        deploy.DeployOptions(target=Target.parse("pi@pi4"), source=source)


@pytest.mark.parametrize("text, fragment", [
    ("pi@dev:~/m/$(touch INJECTED1)`touch INJECTED2`", "letters, digits"),
    ("pi@dev:~/a b", "letters, digits"),
    ("pi@dev:~/50%", "letters, digits"),
    ("pi@dev:/", "not the device's root or home"),
    ("pi@dev:~", "not the device's root or home"),
    ("pi@dev:~/../../etc", "'..'"),
    ("pi@dev:~/" + "x" * 300, "over 255 bytes"),
    ("pi@de;v:x", "is not a device"),
    ("p$i@dev", "is not a device"),
])
def test_device_folders_and_hosts_a_shell_would_read_are_refused(text, fragment):
    with pytest.raises(TledgeError, match=__import__("re").escape(fragment)):
        Target.parse(text)


def test_an_ipv6_target_reaches_ssh_without_brackets():
    target = Target.parse("pi@[::1]:models")
    assert target.host == "pi@[::1]" and target.dir == "models"
    assert Device(target).command("true")[-2] == "pi@::1"


def test_a_service_without_systemd_leaves_no_unit(tmp_path):
    root = tmp_path / "dev"
    (root / "models").mkdir(parents=True)
    (root / "models" / "m.tflite").write_bytes(INT8.read_bytes())
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "cfg"), PATH="/nonexistent")
    result = _agent("service", str(root), "m.tflite", "8080", "0", env=env)
    assert result.returncode == 2 and b"no systemd here" in result.stderr
    assert not (tmp_path / "cfg").exists()


def test_supervise_ends_its_command_when_stdin_closes():
    proc = subprocess.Popen([sys.executable, "-c", ssh.agent_source(), "supervise",
                             sys.executable, "-c", "import time; print('up', flush=True); "
                             "time.sleep(60)"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    proc.stdin.close()
    assert proc.wait(20) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 10


# ----------------------------------------------------------------- the whole loop, fake ssh

def _device_site(tmp_path_factory) -> str:
    """The device's "system site packages": this environment's, without tledge itself (the
    deploy must install its own)."""
    site = tmp_path_factory.mktemp("device-site")
    purelib = Path(sysconfig.get_paths()["purelib"])
    for entry in purelib.iterdir():
        if "tledge" in entry.name.lower() or entry.name.startswith(("pip", "_distutils",
                                                                   "distutils-")):
            continue
        (site / entry.name).symlink_to(entry)
    return str(site)


@pytest.fixture(scope="module")
def fake_device(tmp_path_factory):
    """A "device" reached through the fake ssh, its home a temporary folder, its pip offline
    with tledge's dependencies already installed (as a Pi's system packages would be)."""
    home = tmp_path_factory.mktemp("pi-home")
    # a systemctl whose user manager does not answer (as in a container): never this machine's
    bin_dir = tmp_path_factory.mktemp("device-bin")
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho offline\nexit 1\n")
    (bin_dir / "systemctl").chmod(0o755)
    env = {"TLEDGE_SSH_COMMAND": str(FAKE_SSH), "FAKE_SSH_HOME": str(home),
           "FAKE_SSH_PYTHONPATH": _device_site(tmp_path_factory),
           "FAKE_SSH_ENV": json.dumps({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "",
                                       "PIP_CONFIG_FILE": os.devnull,
                                       "XDG_CONFIG_HOME": str(home / ".config"),
                                       "PATH": f"{bin_dir}:{os.environ['PATH']}"})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield home
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _tledge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tledge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def _calls(home):
    path = home / ".ssh-calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_deploy_installs_swaps_and_then_sends_only_what_changed(fake_device, tmp_path):
    folder = _export_folder(tmp_path)
    first = _tledge("deploy", str(folder.parent), "pi@fake-pi")
    assert first.returncode == 0, first.stderr
    root = fake_device / "tledge"
    build = deploy.build_id(deploy.source_checkout())
    assert os.readlink(root / "venv") == f"venvs/{build}"
    assert sorted(p.name for p in (root / "models").iterdir()) == [
        "labels.txt", "model_card.json", "model_fp32.tflite", "model_int8.tflite"]
    assert "installed now" in first.stdout and "tledge doctor on pi@fake-pi" in first.stdout
    assert "backend" in first.stdout and "Traceback" not in first.stderr
    assert not list(root.glob(".incoming-*"))

    (folder / "model_fp32.tflite").write_bytes(FP32.read_bytes() + b"changed")
    n = len(_calls(fake_device))
    again = _tledge("deploy", str(folder.parent), "pi@fake-pi")
    assert again.returncode == 0, again.stderr
    assert "(1 sent, 3 already there)" in again.stdout
    assert "already there" in again.stdout and "building a wheel" not in again.stdout
    # facts, receive, install (its doctor included): one ssh each
    assert [c["command"] for c in _calls(fake_device)[n:]] == ["python3"] * 3
    assert (root / "models" / "model_fp32.tflite").read_bytes().endswith(b"changed")


def test_a_deploy_folder_with_shell_text_runs_nothing_there(fake_device):
    """The campaign's case: the folder's $(...) and backticks ran on the device (through the
    venv scripts' /bin/sh trampoline). Refused before ssh is run at all."""
    n = len(_calls(fake_device))
    result = _tledge("deploy", str(INT8), "pi@fake-pi:~/m/$(touch INJECTED1)`touch INJECTED2`")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        "Error: device folder '~/m/$(touch INJECTED1)`touch INJECTED2`': use letters, digits "
        "and . _ + - / only (~/ at the start for the home): it is named in the device's shell "
        "commands, scripts and systemd unit"]
    assert len(_calls(fake_device)) == n and not list(fake_device.rglob("INJECTED*"))


def test_a_failed_install_leaves_the_device_as_it_was(fake_device, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from tledge.cli import main
    assert _tledge("deploy", str(INT8), "pi@fake-pi").returncode == 0
    root = fake_device / "tledge"
    live, models = os.readlink(root / "venv"), sorted(os.listdir(root / "models"))
    # a new build whose dependencies the offline device cannot get
    monkeypatch.setattr(deploy, "build_id", lambda root: "0.1.0-unresolvable")
    monkeypatch.setenv("FAKE_SSH_PYTHONPATH", "")
    changed = tmp_path / "colour_int8.tflite"
    changed.write_bytes(INT8.read_bytes() + b"changed")
    result = CliRunner().invoke(main, ["deploy", str(changed), "pi@fake-pi"])
    assert result.exit_code == 1
    assert "Error: on pi@fake-pi: pip install tledge" in result.output
    assert os.readlink(root / "venv") == live
    assert sorted(os.listdir(root / "models")) == models
    assert (root / "models" / "colour_int8.tflite").read_bytes() == INT8.read_bytes()
    assert sorted(os.listdir(root / "venvs")) == [live.split("/")[-1]]
    assert not list(root.glob(".incoming-*"))


@pytest.mark.parametrize("host, expected", [
    ("pi@nowhere.invalid", "cannot reach pi@nowhere.invalid (Could not resolve hostname"),
    ("refused.invalid", "cannot reach refused.invalid (connect to host refused.invalid port "
                        "22: Connection refused)"),
    ("denied@pi", "denied@pi refused the login"),
    ("newkey.invalid", "newkey.invalid's host key is unknown or has changed"),
])
def test_unreachable_and_refusing_devices_are_one_line(fake_device, host, expected):
    result = _tledge("deploy", str(INT8), host)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {expected}"), result.stderr


def test_bench_on_writes_the_devices_report_here(fake_device, tmp_path):
    out = tmp_path / "pi.json"
    result = _tledge("bench", str(INT8), str(FP32), "--on", "pi@fake-pi", "--runs", "3",
                     "--warmup", "0", "--threads", "1", "--compare-local", "--json", str(out),
                     "--markdown", str(tmp_path / "pi.md"), "--chart", str(tmp_path / "pi.png"))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["results"]] == ["models/colour_int8.tflite",
                                                      "models/colour_fp32.tflite"] * 2
    assert {r["on"] for r in report["results"]} == {report["machine"]["machine_id"]}
    assert report["device"]["host"] == "pi@fake-pi"
    assert report["device"]["json"].startswith(str(fake_device / "tledge" / "bench"))
    assert report["compared_with"]["machine_id"] == report["machine"]["machine_id"]
    assert (tmp_path / "pi.png").stat().st_size > 0
    assert "beside it, rows measured on" in (tmp_path / "pi.md").read_text()
    assert result.stdout.splitlines()[0].startswith("on ") or "on  " in result.stdout


def test_bench_on_refuses_a_run_folder_and_compare_local_alone(fake_device, tmp_path):
    result = _tledge("bench", str(tmp_path), "--on", "pi@fake-pi")
    assert result.returncode == 1 and "needs TensorFlow): give its export" in result.stderr
    result = _tledge("bench", str(INT8), "--compare-local")
    assert result.returncode == 1 and "needs --on" in result.stderr


def _on_device(tmp_path, *args, says: str):
    """``tledge ARGS`` on the fake device over a folder of three frames (--source FRAMES),
    serving on one free port there forwarded to another here; (process, local URL, device
    port) once a line containing ``says`` names the URL."""
    import numpy as np
    from PIL import Image
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(np.full((48, 64, 3), 60 * i, np.uint8)).save(frames / f"{i}.png")
    ports = [_free_port(), _free_port()]
    proc = subprocess.Popen([sys.executable, "-m", "tledge.cli", *args, "--source", str(frames),
                             "--loop", "--serve", str(ports[0]), "--local-port", str(ports[1])],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=as_from_a_terminal)
    url, seen, deadline = None, [], time.monotonic() + 120
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        seen.append(line)
        if says in line:
            import re
            url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
    assert url == f"http://127.0.0.1:{ports[1]}/", "".join(seen)
    return proc, url, ports[0], frames


def test_camera_on_forwards_the_page_and_ctrl_c_stops_the_devices_camera(fake_device, tmp_path):
    proc, url, port, frames = _on_device(tmp_path, "camera", "--on", "pi@fake-pi", "--model",
                                         str(INT8), "--realtime",
                                         says="live view of pi@fake-pi's camera")
    stats = _first_frame_stats(url)
    assert "colour_int8" in stats["models"][0]["name"] and stats["frame"] >= 0
    assert str(frames) in stats["source"]
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "Traceback" not in rest
    left = subprocess.run(["pgrep", "-f", "--", f"--serve {port}"], capture_output=True)
    assert left.returncode == 1, left.stdout  # the device's camera ended with it


def test_collect_on_takes_pictures_there_and_pull_brings_them(fake_device, tmp_path):
    proc, url, _, _ = _on_device(tmp_path, "collect", "data/mine", "--on", "pi@fake-pi",
                                 "--labels", "mug,keys", says="collecting on pi@fake-pi into ")
    request = urllib.request.Request(url + "capture", data=b"label=mug&count=2", method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        saved = json.loads(answer.read())["saved"]
    assert len(saved) == 2 and all(p.startswith("mug/") for p in saved)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in rest, rest
    there = fake_device / "tledge" / "data" / "mine"
    assert all((there / p).is_file() for p in saved)
    pulled = _tledge("pull", "pi@fake-pi:~/tledge/data/mine", str(tmp_path / "mine"))
    assert pulled.returncode == 0, pulled.stderr
    for p in saved:
        assert (tmp_path / "mine" / p).read_bytes() == (there / p).read_bytes()
    assert (tmp_path / "mine" / "shots.fake-pi.jsonl").is_file()
    again = _tledge("pull", "pi@fake-pi:~/tledge/data/mine", str(tmp_path / "mine"))
    assert "0 new" in again.stdout and "pulled 0 file(s)" in again.stdout, again.stdout


def _first_frame_stats(url: str, timeout: float = 60) -> dict:
    """The page's figures once a frame is through (before it: only a status)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(url + "stats.json", timeout=10) as answer:
            stats = json.loads(answer.read())
        if "models" in stats or time.monotonic() > deadline:
            return stats
        time.sleep(0.3)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_deploy_interrupted_during_the_install_changes_nothing_there(fake_device, tmp_path,
                                                                       monkeypatch):
    home = tmp_path / "blank-pi"
    home.mkdir()
    monkeypatch.setenv("FAKE_SSH_HOME", str(home))
    proc = subprocess.Popen([sys.executable, "-m", "tledge.cli", "deploy", str(INT8),
                             "pi@fake-pi"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=as_from_a_terminal)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "installing tledge" in line:
            break
    time.sleep(1.0)  # pip is building the venv now
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(seen) + rest
    root = home / "tledge"
    deadline = time.monotonic() + 30  # the agent notices that the laptop went, and cleans up
    while time.monotonic() < deadline and (list((root / "venvs").glob("*"))
                                           if (root / "venvs").exists() else []):
        time.sleep(0.5)
    assert not (root / "venv").exists() and not list(root.glob("venvs/*"))
    assert not (root / "models").exists()


def test_service_without_systemd_is_refused_before_anything_is_sent(fake_device, tmp_path,
                                                                    monkeypatch):
    home = tmp_path / "no-systemd-pi"
    home.mkdir()
    monkeypatch.setenv("FAKE_SSH_HOME", str(home))
    result = _tledge("deploy", str(INT8), "pi@fake-pi", "--service", INT8.name)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no systemd here on pi@fake-pi") and \
        "nothing was sent" in result.stderr
    assert [c["command"] for c in _calls(home)] == ["python3"]  # facts only
    assert not (home / "tledge").exists() and not (home / ".config").exists()


def test_tune_times_every_candidate_on_the_device_in_one_session(fake_device, tmp_path):
    """Issue 40: tune --on sends the candidates' int8 files in one upload and times them in
    one bench there, at the threads asked; a device gone mid-tune keeps what was found."""
    import shutil

    from test_tune import Fakes
    from tledge.tune.search import TuneOptions, tune

    space = tmp_path / "space.yaml"
    space.write_text("candidates:\n  - backbone: mobilenet_v2\n    alpha: 0.35\n"
                     "    image_size: [96, 128]\n")
    out = tmp_path / "tune"
    for name in ("mobilenet_v2-a0.35-96px", "mobilenet_v2-a0.35-128px"):  # built already:
        (out / "candidates").mkdir(parents=True, exist_ok=True)  # no TensorFlow here
        shutil.copyfile(INT8, out / "candidates" / f"{name}.tflite")
    options = TuneOptions(data="shapes", max_latency_ms=1000.0, out=out, on="pi@fake-pi",
                          space=space, runs=3, warmup=0)
    reports = fake_device / "tledge" / "bench"
    before = set(reports.glob("bench-*.json")) if reports.is_dir() else set()
    state = tune(options, echo=lambda s: None, train_one=Fakes().train)
    new = set(reports.glob("bench-*.json")) - before
    assert len(new) == 1  # one bench session there, every candidate in it, at 1 thread
    rows = json.loads(new.pop().read_text())["results"]
    assert len(rows) == 2 and {r["threads"] for r in rows} == {1}
    assert all(c["latency_ms"] > 0 and c["machine"] for c in state["candidates"].values())
    assert state["best"] in state["candidates"]
    # the device goes away: one line, the tune's figures kept, and the way on
    (out / "tune.json").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLEDGE_SSH_COMMAND", str(tmp_path / "no-ssh-here"))
        with pytest.raises(TledgeError, match="run the same command again"):
            tune(options, echo=lambda s: None, train_one=Fakes().train)
    assert json.loads((out / "tune.json").read_text())["status"].startswith("stopped")
