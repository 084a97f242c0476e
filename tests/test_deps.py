"""The pinned installs (tledge/locks/, ``make lock``) and the check of the ranges
(``make test-newest``, tests/deps/newest.py)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "tledge" / "locks"


def _load_newest():
    spec = importlib.util.spec_from_file_location("newest", ROOT / "tests" / "deps" / "newest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(lock: Path) -> dict[str, list[Requirement]]:
    pins: dict[str, list[Requirement]] = {}
    for line in lock.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            pins.setdefault(req.name.lower().replace("_", "-"), []).append(req)
    return pins


@pytest.mark.parametrize("lock, extras", [("train.txt", ["train", "pi", "dev"]),
                                          ("pi.txt", ["pi"])])
def test_each_lock_pins_every_dependency_exactly_and_within_its_range(lock, extras):
    """A range changed in pyproject.toml without `make lock` fails here, not on a fresh clone."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pins = _pins(LOCKS / lock)
    for req in pins.values():
        for pin in req:
            assert len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "==", pin
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in tledge/locks/{lock}: run make lock"
        for pin in pins[name]:
            version = next(iter(pin.specifier)).version
            assert req.specifier.contains(version, prereleases=True), \
                f"tledge/locks/{lock} pins {name} {version}, outside {req}: run make lock"


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="not the venv make install made (make test-newest runs the newest "
                    "versions on purpose)")
def test_the_pins_of_this_python_are_what_the_training_venv_has():
    """`make install` installed the locks' versions (this process runs in that venv)."""
    newest = _load_newest()
    out = subprocess.run([sys.executable, "-c", newest._VERSIONS, str(LOCKS / "train.txt")],
                         capture_output=True, text=True, check=True).stdout
    versions = json.loads(out)
    # markers are evaluated for this Python: one version per package, the 3.11 one on 3.11
    assert "numpy" in versions["pinned"] and "opencv-python-headless" in versions["pinned"]
    differ = {n: (p, versions["installed"].get(n)) for n, p in versions["pinned"].items()
              if versions["installed"].get(n) not in (None, p)}
    assert not differ, f"installed differs from tledge/locks/train.txt: {differ}"


def test_newest_names_the_package_whose_pin_makes_the_failed_tests_pass(monkeypatch, capsys):
    newest = _load_newest()
    installed = {"numpy": "2.5.0", "opencv-python-headless": "5.1.0.95"}
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        if "install" in cmd:
            name, version = cmd[-1].split("==")
            installed[name] = version
        return subprocess.CompletedProcess(cmd, 0)

    # the failed tests pass only with OpenCV back at 5.0
    monkeypatch.setattr(newest, "run", run)
    monkeypatch.setattr(newest, "fast_tier", lambda python, workers, only_failed=False:
                        0 if installed["opencv-python-headless"] == "5.0.0.93" else 1)
    monkeypatch.setattr(newest, "newer_than_pins", lambda python, lock: [
        ("numpy", "2.4.6", "2.5.0"), ("opencv-python-headless", "5.0.0.93", "5.1.0.95")])
    assert newest.main(["--no-install", "--venv", "/nonexistent"]) == 1
    out = capsys.readouterr().out
    assert "newer than tledge/locks: numpy 2.4.6 -> 2.5.0, opencv-python-headless 5.0.0.93 " \
        "-> 5.1.0.95" in out
    assert "BROKEN by opencv-python-headless 5.1.0.95" in out and "BROKEN by numpy" not in out
    # each package put back to its newest version after its trial
    assert installed == {"numpy": "2.5.0", "opencv-python-headless": "5.1.0.95"}


def test_deploy_sends_the_pi_lock_to_the_devices_pip(monkeypatch):
    from tledge.device import deploy
    from tledge.device.ssh import Device, Target

    sent = {}

    def agent(self, command, *args, data=None, echo=None, timeout=None):
        if command == "facts":
            return {"python": "3.11.2", "python_ok": True, "arch": "aarch64", "arch_ok": True,
                    "models": {}, "build": None, "dir": "/home/pi/tledge", "free_mb": 9000,
                    "systemd": False}
        if command == "receive":
            buf = io.BytesIO()
            data(buf)
            buf.seek(0)
            with tarfile.open(fileobj=buf, mode="r|") as archive:
                for member in archive:
                    sent[member.name] = archive.extractfile(member).read()
            return {"stage": "/home/pi/tledge/.incoming-1"}
        return {"installed": True, "doctor": "", "doctor_ok": True, "restarted": False}

    monkeypatch.setattr(Device, "agent", agent)
    monkeypatch.setattr(deploy, "build_wheel", lambda root, out: _fake_wheel(out))
    deploy.push(Device(Target.parse("pi@pi4")), [], echo=lambda s: None)
    assert sent["constraints.txt"] == (LOCKS / "pi.txt").read_bytes()


def _fake_wheel(out: Path) -> Path:
    wheel = out / "tledge-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    return wheel
