"""``tledge deploy``: verified .tflite files and this very tledge onto a device, over SSH.

The device's side is :mod:`tledge.device.agent`; its folder's layout is described there. What a
deploy does, in order, each step leaving the device as it was when it fails:

1. Checks here what is sent: a run's (or an export folder's) files that passed export's accuracy
   gate, with ``labels.txt`` and ``model_card.json``, or the .tflite files named.
2. Asks the device for its Python, architecture, free space, live build and models (``facts``):
   no Python 3.10+, or an architecture LiteRT has no wheel for, ends it here in one line.
3. Builds a wheel of this checkout (only when the device's live build differs), and sends it with
   the files the device lacks in one tar stream (``receive``).
4. ``install``: a new venv beside the live one (``--system-site-packages``: Raspberry Pi OS
   ships Picamera2 as an apt package), ``pip install -c locks/pi.txt WHEEL[pi]`` (the exact
   versions tested), its ``tledge doctor`` must
   pass, then the ``venv`` symlink is swapped in one rename and the models renamed into place.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from tledge import __version__
from tledge.device.agent import CONSTRAINTS, VENV_MB, sha256
from tledge.device.ssh import Device, Target, answer_fields
from tledge.core import rundir
from tledge.core.errors import TledgeError

CARD, LABELS = rundir.CARD, rundir.LABELS
# The exact versions tledge[pi] was tested with (``make lock``), Python 3.11 aarch64 included:
# the device's pip installs with them, so a release since cannot break a deploy.
PI_LOCK = Path(__file__).resolve().parents[1] / "locks" / "pi.txt"


@dataclass(frozen=True)
class DeployOptions:
    """What ``tledge deploy`` does.

    Attributes:
      target: the device and its folder.
      sources: run folders, export folders or .tflite files (may be empty with ``remove``).
      python: the device's Python that builds the venv.
      system_site: let the venv see the device's system packages (Picamera2 on a Pi).
      service: install the camera's systemd user unit for this model (a file name).
      port: the unit's --serve port.
      source: the unit's --source.
      remove: remove the unit instead.
    """

    target: Target
    sources: Sequence[str] = ()
    python: str = "python3"
    system_site: bool = True
    service: Optional[str] = None
    port: int = 8080
    source: str = "0"
    remove: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise TledgeError(f"--port {self.port} is not a TCP port: give 1 to 65535")
        if any(ord(c) < 32 or ord(c) == 127 for c in self.source):
            raise TledgeError(f"--source {ascii(self.source)} has a control character (a "
                              "newline?): give the camera index, device or URL alone")


@dataclass
class Pushed:
    """What the device holds after :func:`push`."""

    dir: str
    installed: bool = False
    sent: list[str] = field(default_factory=list)
    doctor: str = ""
    doctor_ok: bool = True
    restarted: bool = False
    facts: dict = field(default_factory=dict)

    def model(self, name: str) -> str:
        """The device's path of a deployed model."""
        return f"{self.dir}/models/{name}"


def collect(sources: Sequence[str]) -> list[Path]:
    """The files a deploy sends for these run folders, export folders and .tflite files.

    Raises:
      TledgeError: a path that is none of those, a file export's gate rejected, a run not
        exported, or two files of one name.
    """
    from tledge.runtime import check_tflite_file

    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            export = path / rundir.EXPORT
            files += _exported(export if export.is_dir() else path)
        elif path.name.endswith(".REJECTED.tflite"):
            raise TledgeError(f"{path} failed export's accuracy gate: deploy sends verified "
                              "files only (re-export, or see tledge export --debug)")
        else:
            files.append(check_tflite_file(path))
            files += [path.with_name(n) for n in (LABELS, CARD) if path.with_name(n).is_file()]
    seen: dict[str, Path] = {}
    for f in files:
        if f.name in seen and seen[f.name].resolve() != f.resolve():
            raise TledgeError(f"two files named {f.name} ({seen[f.name]} and {f}): the device "
                              "keeps one folder of models; deploy them one at a time or rename "
                              "one")
        seen[f.name] = f
    return list(seen.values())


def _exported(folder: Path) -> list[Path]:
    import json

    card = folder / CARD
    if not card.is_file():
        raise TledgeError(f"{folder} holds no exported model ({CARD} missing): run tledge "
                          f"export on the run first, then deploy the run or its export folder")
    try:
        files = json.loads(card.read_text())["files"]
    except (ValueError, KeyError, OSError) as e:
        raise TledgeError(f"{card} is unreadable ({e}): export the run again") from e
    passed = [folder / name for name, f in files.items()
              if f.get("passed_gate") and (folder / name).is_file()]
    if not passed:
        raise TledgeError(f"no file in {folder} passed export's accuracy gate: nothing verified "
                          "to deploy")
    return passed + [p for p in (folder / LABELS, card) if p.is_file()]


def source_checkout() -> Optional[Path]:
    """This tledge's source tree when it runs from one (pyproject.toml beside the package)."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "tledge"' in pyproject.read_text():
        return root
    return None


def _wheel_files(root: Path) -> list[Path]:
    """What goes into the wheel: the package (no caches), its metadata's files."""
    files = [p for p in (root / "tledge").rglob("*") if p.is_file()
             and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(files + [root / "pyproject.toml", root / "README.md"])


def build_id(root: Optional[Path]) -> str:
    """Names a build: the version and a hash of the files that go into its wheel, so a device
    whose venv holds this very code is not reinstalled; ``VERSION-pypi`` for a released one."""
    if root is None:
        return f"{__version__}-pypi"
    digest = hashlib.sha256()
    for path in _wheel_files(root):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{__version__}-{digest.hexdigest()[:12]}"


def build_wheel(root: Path, out: Path) -> Path:
    """A wheel of the checkout, built from a copy of it (the checkout gets no build/ folder).

    Raises:
      TledgeError: the build failed (pip's last line said).
    """
    with tempfile.TemporaryDirectory(prefix="tledge-wheel-") as tmp:
        for path in _wheel_files(root):
            target = Path(tmp) / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                               "--disable-pip-version-check", "-w", str(out), tmp],
                              capture_output=True, text=True)
    wheels = sorted(out.glob("tledge-*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TledgeError(f"building tledge's wheel from {root} failed: {tail[:200]}")
    return wheels[-1]


def check_device(device: Device) -> dict:
    """The device's facts, after checking it can run tledge.

    Raises:
      TledgeError: unreachable, login refused, no python3, Python older than 3.10, or an
        architecture without LiteRT wheels.
    """
    host = device.target.host
    facts = answer_fields(device.agent("facts", device.target.dir), host, "facts",
                          python=str, python_ok=bool, arch=str, arch_ok=bool, dir=str,
                          free_mb=(int, float), build=(str, None), models=dict, systemd=bool)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in facts["models"].items()):
        raise TledgeError(f"on {host}: the agent's answer to facts lists models that are not "
                          "names with hashes: run tledge deploy again")
    python = device.python
    if not facts["python_ok"]:
        raise TledgeError(f"{host}'s {python} is Python {facts['python']}; tledge needs 3.10 or "
                          "newer (Raspberry Pi OS Bookworm has 3.11): upgrade the OS, or give "
                          "another interpreter with --python")
    if not facts["arch_ok"]:
        raise TledgeError(f"{host} is {facts['arch']}, and LiteRT publishes wheels for aarch64 "
                          "and x86_64 only: on a Raspberry Pi, install the 64-bit Raspberry Pi "
                          "OS")
    return facts


def _tar(files: Sequence[tuple[Path, str]]) -> Callable:
    """Writes a tar of (local file, name in the archive) to a binary stream, streaming."""
    def write(stream) -> None:
        with tarfile.open(fileobj=stream, mode="w|") as archive:
            for path, name in files:
                archive.add(str(path), arcname=name, recursive=False)
    return write


def push(device: Device, files: Sequence[Path], echo: Callable[[str], None] = print,
         system_site: bool = True, facts: Optional[dict] = None) -> Pushed:
    """Make the device hold these files and a venv of this tledge: send only what it lacks.

    Raises:
      TledgeError: see :func:`check_device`; no space; the upload or the install failed (the
        device keeps its old venv and models).
    """
    facts = facts or check_device(device)
    have = facts["models"]
    missing = [f for f in files if have.get(f.name) != sha256(f)]
    checkout = source_checkout()
    build = build_id(checkout)
    venv_needed = facts["build"] != build
    pushed = Pushed(dir=facts["dir"], facts=facts, sent=[f.name for f in missing])
    if not missing and not venv_needed:
        return pushed
    with tempfile.TemporaryDirectory(prefix="tledge-deploy-") as tmp:
        entries = [(f, f"models/{f.name}") for f in missing]
        if venv_needed and checkout is not None:
            echo(f"building a wheel of {checkout} (tledge {__version__})")
            wheel = build_wheel(checkout, Path(tmp))
            entries.append((wheel, wheel.name))
            spec = f"wheel:{wheel.name}[pi]"
        else:
            spec = f"tledge[pi]=={__version__}"
        if venv_needed and PI_LOCK.is_file():
            entries.append((PI_LOCK, CONSTRAINTS))
        size = sum(p.stat().st_size for p, _ in entries)
        need = size + (VENV_MB << 20 if venv_needed else 0)
        echo(f"sending {len(entries)} file(s), {size / 1e6:.1f} MB, to {device.target}")
        # at least 100 kB/s: a slow Wi-Fi link sends a model of 10 MB in under two minutes
        stage = answer_fields(device.agent("receive", device.target.dir, str(need),
                                           data=_tar(entries), timeout=300 + size / 100e3),
                              device.target.host, "receive", stage=str)["stage"]
        if venv_needed:
            echo(f"installing tledge {build} and its [pi] dependencies on {device.target.host} "
                 "(pip; minutes the first time)")
        done = answer_fields(device.agent("install", device.target.dir, stage, build, spec,
                                          "1" if system_site else "0", echo=echo),
                             device.target.host, "install", installed=bool, doctor=str,
                             doctor_ok=bool, restarted=bool)
    pushed.installed, pushed.doctor, pushed.doctor_ok, pushed.restarted = (
        done["installed"], done["doctor"], done["doctor_ok"], done["restarted"])
    return pushed


def deploy(options: DeployOptions, echo: Callable[[str], None] = print) -> Pushed:
    """Everything ``tledge deploy`` does; see the module's docstring.

    Returns:
      What the device holds, with its doctor's report.

    Raises:
      TledgeError: a bad source, an unusable device, a failed step (the device as it was).
    """
    device = Device(options.target, options.python)
    if options.remove:
        gone = answer_fields(device.agent("unservice"), options.target.host, "unservice",
                             unit=str, removed=bool)
        echo(f"removed {gone['unit']}" if gone["removed"] else
             f"no tledge unit on {options.target.host} ({gone['unit']}): nothing to remove")
        if not options.sources:
            return Pushed(dir=options.target.dir)
    files = collect(options.sources)
    if options.service and options.service not in {f.name for f in files}:
        raise TledgeError(f"--service {options.service}: not among the files deployed "
                          f"({', '.join(f.name for f in files) or 'none'})")
    facts = check_device(device)
    if options.service and not facts["systemd"]:
        raise TledgeError(f"no systemd here on {options.target.host} (systemctl --user does "
                          "not answer), and --service needs it: nothing was sent; deploy "
                          "without --service and start the camera yourself")
    pushed = push(device, files, echo, options.system_site, facts)
    echo(f"{options.target.host}: {pushed.dir}/models holds "
         f"{', '.join(f.name for f in files) or 'nothing new'}"
         f" ({len(pushed.sent)} sent, {len(files) - len(pushed.sent)} already there)")
    echo(f"venv {pushed.dir}/venv: tledge {build_id(source_checkout())} "
         f"({'installed now' if pushed.installed else 'already there'})")
    if pushed.restarted:
        echo("the camera unit restarted on the new venv and models")
    if not pushed.doctor:  # nothing was installed: ask the live venv's doctor
        done = answer_fields(device.agent("doctor", options.target.dir), options.target.host,
                             "doctor", doctor=str, doctor_ok=bool)
        pushed.doctor, pushed.doctor_ok = done["doctor"], done["doctor_ok"]
    if options.service:
        unit = answer_fields(device.agent("service", options.target.dir, options.service,
                                          str(options.port), options.source),
                             options.target.host, "service", unit=str, port=int, at_boot=bool)
        echo(f"camera service {unit['unit']}: running, page on the device's "
             f"127.0.0.1:{unit['port']}; "
             + ("starts at boot" if unit["at_boot"] else "starts at login (sudo loginctl "
                "enable-linger USER to start it at boot)"))
    return pushed
