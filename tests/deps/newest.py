"""``make test-newest``: the fast tier on the newest versions pyproject.toml's ranges allow.

``make install`` installs the exact versions of ``tledge/locks/``, so a release elsewhere cannot
turn a fresh clone red. The ranges in pyproject.toml are what people who ``pip install tledge``
into their own environment get, and they are tested here:

1. ``VENV`` gets ``pip install --upgrade --upgrade-strategy eager -e .[train,pi,dev]`` with no
   constraints: the newest release of every package that the ranges allow.
2. Every package newer than its pin is listed (``name pinned -> newest``).
3. The fast tier runs there. When it fails, each newer package in turn is put back to its pin
   (``pip install --no-deps``) and the failed tests run again: the package whose pin makes them
   pass is named, with its version, as the one that broke them. Exit 1.

    make test-newest            # or: python3 tests/deps/newest.py --venv .venv-newest
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Run inside VENV: the pins of LOCK that apply to that Python and platform, and what is
# installed, as {"pinned": {name: version}, "installed": {name: version}} (names normalised).
_VERSIONS = r"""
import json, re, sys
from importlib import metadata
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
pinned = {}
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate():
        pinned[norm(req.name)] = str(req.specifier).lstrip("=")
installed = {norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
print(json.dumps({"pinned": pinned, "installed": installed}))
"""

FAST_TIER = ["-m", "pytest", "-q", "-m", "not slow and not pi"]


def say(text: str) -> None:
    print(f"[test-newest] {text}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, **kwargs)


def install_newest(venv: Path) -> None:
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)], check=True)
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    say("installing the newest versions pyproject.toml allows (no locks)")
    run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "--upgrade-strategy",
         "eager", "-e", ".[train,pi,dev]"], check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore:Editable installation"})


def newer_than_pins(python: Path, lock: Path) -> list[tuple[str, str, str]]:
    """(name, pinned, installed) for every package installed at another version than its pin."""
    out = run([str(python), "-c", _VERSIONS, str(lock)], check=True, capture_output=True,
              text=True).stdout
    versions = json.loads(out)
    return sorted((name, pin, versions["installed"][name])
                  for name, pin in versions["pinned"].items()
                  if name in versions["installed"] and versions["installed"][name] != pin)


def fast_tier(python: Path, workers: str, only_failed: bool = False) -> int:
    # pytest's cache (which tests failed) inside the venv: --lf reruns just those
    cache = ["-o", f"cache_dir={python.parent.parent / '.pytest_cache'}"]
    args = ["--lf", "--lfnf=none"] if only_failed else ["-n", workers, "--dist", "worksteal"]
    return run([str(python), *FAST_TIER, *cache, *args]).returncode


def blame(python: Path, newer: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The packages whose pinned version alone makes the failed tests pass again."""
    culprits = []
    for name, pin, new in newer:
        say(f"trying {name} at its pin {pin} (newest {new}) on the failed tests")
        run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", f"{name}=={pin}"],
            check=True)
        try:
            if fast_tier(python, "1", only_failed=True) == 0:
                culprits.append((name, pin, new))
        finally:
            run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", f"{name}=={new}"],
                check=True)
    return culprits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-newest")
    parser.add_argument("--lock", type=Path, default=ROOT / "tledge" / "locks" / "train.txt")
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--no-install", action="store_true",
                        help="use VENV as it is (to test the blame step)")
    args = parser.parse_args(argv)
    venv, lock = args.venv.resolve(), args.lock.resolve()
    t0 = time.monotonic()
    if not args.no_install:
        install_newest(venv)
    python = venv / "bin" / "python"
    newer = newer_than_pins(python, lock)
    if newer:
        say("newer than tledge/locks: " + ", ".join(f"{n} {p} -> {v}" for n, p, v in newer))
    else:
        say("the newest versions the ranges allow are the pinned ones")
    code = fast_tier(python, args.workers)
    if code == 0:
        say(f"the fast tier passes on the newest versions the ranges allow "
            f"({time.monotonic() - t0:.0f} s)")
        return 0
    if not newer:
        say("the fast tier fails on the pinned versions too: not a release's doing")
        return 1
    culprits = blame(python, newer)
    if culprits:
        for name, pin, new in culprits:
            say(f"BROKEN by {name} {new}: the failed tests pass with {name} {pin} (the pin); "
                f"fix tledge for {new}, or cap the range in pyproject.toml below it")
    else:
        say("no single package's pin makes the failed tests pass; newer together: "
            + ", ".join(f"{n} {v}" for n, _, v in newer))
    return 1


if __name__ == "__main__":
    sys.exit(main())
