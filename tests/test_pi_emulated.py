"""The README's Raspberry Pi commands, run on an emulated Raspberry Pi OS Bookworm (arm64,
Python 3.11) with this checkout's ``.[pi]`` installed: tests/pi/pi_check.py. Minutes, root only;
skipped with the reason where qemu-user-static and binfmt_misc cannot be used."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pi"))
import pi_check  # noqa: E402

pytestmark = [pytest.mark.pi, pytest.mark.slow]


def test_pi_commands_on_emulated_arm64():
    reason = pi_check.unavailable()
    if reason:
        pytest.skip(f"no arm64 emulation here: {reason}")
    failures = pi_check.check(log=print)
    assert not failures, "\n\n".join(failures)
