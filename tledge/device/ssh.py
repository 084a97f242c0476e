"""The device over SSH, through the user's own OpenSSH client.

Why OpenSSH's ``ssh`` and not a Python library (Paramiko, AsyncSSH): the user's setup is already
right for it. ``~/.ssh/config`` host aliases, ``ProxyJump`` through a bastion, keys in an agent or
on a hardware token, ``known_hosts`` all work as they do in a terminal, where a library reads a
subset of the config and keeps its own host-key store. What tledge needs of SSH (run a command,
feed its stdin, read its output, forward one port) is what the client does best; its exit code
255 and its messages say what went wrong, and :func:`ssh_failure` turns them into one line.

``TLEDGE_SSH_COMMAND`` replaces ``ssh`` as ``GIT_SSH_COMMAND`` does for git (``ssh -F
my_config`` or ``ssh -p 2222 -i key``). ``BatchMode`` is always on: a password prompt would hang
a command whose output tledge reads; keys only (``ssh-copy-id HOST`` once).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tledge.errors import TledgeError

SSH_COMMAND_ENV = "TLEDGE_SSH_COMMAND"
DEFAULT_DIR = "~/tledge"
AGENT = Path(__file__).with_name("agent.py")
# [user@]host[:dir]; an IPv6 address in brackets: [fe80::1]:dir
_TARGET = re.compile(r"^(?P<host>(?:[^@\s:/]+@)?(?:\[[^\]\s]+\]|[^@\s:/\[\]]+))"
                     r"(?::(?P<dir>.*))?$")
# What a host may be: a user of letters, digits and . _ -; a name or address of the same (an
# alias of ~/.ssh/config too), or an IPv6 address in brackets with an optional %zone.
_HOST = re.compile(r"^(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?"
                   r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._-]+)?\])$")
# The device folder is named in shell commands, in the venv's scripts (pip writes a /bin/sh
# trampoline with the path in double quotes when it is long: $(...) there ran on the device) and
# in a systemd unit: letters, digits and . _ + - / only, ~/ at its start for the home.
_SAFE_DIR = re.compile(r"^(?:~/)?[A-Za-z0-9._+/-]+$")
NAME_MAX = 255  # bytes in one file name (Linux)


@dataclass(frozen=True)
class Target:
    """A device: ``[user@]host`` as ssh takes it (an alias of ``~/.ssh/config`` too), and the
    folder tledge keeps there."""

    host: str
    dir: str = DEFAULT_DIR

    @classmethod
    def parse(cls, text: str) -> "Target":
        """``user@host``, ``host:DIR``, ``user@host:DIR``.

        Raises:
          TledgeError: not of that form.
        """
        match = _TARGET.match(text.strip())
        if not match or match["host"].startswith("-") or not _HOST.match(match["host"]):
            raise TledgeError(f"{text!r} is not a device: give user@host[:DIR], e.g. "
                              "pi@raspberrypi.local or an alias of your ~/.ssh/config")
        if match["dir"] is None or match["dir"] == "":
            return cls(match["host"], DEFAULT_DIR)
        return cls(match["host"], check_device_dir(match["dir"]))

    @property
    def ssh_host(self) -> str:
        """The host as ssh's command line takes it: an IPv6 address without its brackets."""
        user, at, host = self.host.rpartition("@")
        return user + at + (host[1:-1] if host.startswith("[") else host)

    def __str__(self) -> str:
        return f"{self.host}:{self.dir}"


def check_device_dir(text: str) -> str:
    """The device folder of ``HOST:DIR``, checked (see ``_SAFE_DIR``); trailing slashes dropped.

    Raises:
      TledgeError: characters a shell or systemd would read, the device's root or home itself,
        a ``..`` part, or a name too long for the device's file system.
    """
    folder = text.rstrip("/") if text.strip("/") else text
    shown = ascii(text)[1:-1]
    if folder in ("/", "~", "~/", ".", "") or folder.strip("/.~") == "":
        raise TledgeError(f"device folder {shown!r}: tledge keeps a venv and models in a folder "
                          "of its own, not the device's root or home: give one, e.g. "
                          "pi@host:~/tledge")
    if not _SAFE_DIR.match(folder):
        raise TledgeError(f"device folder {shown!r}: use letters, digits and . _ + - / only "
                          "(~/ at the start for the home): it is named in the device's shell "
                          "commands, scripts and systemd unit")
    parts = folder.split("/")
    if ".." in parts:
        raise TledgeError(f"device folder {shown!r}: give it without '..' parts")
    if any(len(part.encode()) > NAME_MAX for part in parts):
        raise TledgeError(f"device folder {shown[:60]}...: a name in it is over {NAME_MAX} bytes, "
                          "the longest a file system takes: give a shorter one")
    return folder


def ssh_base() -> list[str]:
    """The ssh command line before the host: TLEDGE_SSH_COMMAND or ``ssh``, in batch mode."""
    base = shlex.split(os.environ.get(SSH_COMMAND_ENV) or "ssh")
    return base + ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
                   "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


_UNREACHABLE = ("Could not resolve hostname", "Connection refused", "Connection timed out",
                "No route to host", "Network is unreachable", "Operation timed out",
                "Connection closed by", "Connection reset")


def ssh_failure(host: str, returncode: int, stderr: str) -> TledgeError:
    """One line for a command over SSH that failed: the host unreachable, the login refused,
    the host key unknown, a device without python3, a command killed midway, or the agent's
    own ``Error:`` line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    text = "\n".join(lines)
    agent = [line[len("Error:"):].strip() for line in lines if line.startswith("Error:")]
    if agent:
        return TledgeError(f"on {host}: {agent[-1]}")
    if returncode == 255:
        for needle in _UNREACHABLE:
            if needle in text:
                why = next(line for line in lines if needle in line)
                return TledgeError(f"cannot reach {host} ({why.removeprefix('ssh: ')}): is it "
                                   "on, on this network, and running sshd? Try: ssh " + host)
        if "Permission denied" in text or "Too many authentication failures" in text:
            return TledgeError(f"{host} refused the login (keys only, no passwords: tledge runs "
                               f"ssh in batch mode): copy your key with ssh-copy-id {host}, then "
                               f"check that ssh {host} true works")
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION" in text:
            return TledgeError(f"{host}'s host key is unknown or has changed: connect once with "
                               f"ssh {host} to check and accept it")
    if returncode == 127 and "python3" in text:
        return TledgeError(f"{host} has no python3: install it there (sudo apt install python3 "
                           "python3-venv)")
    if returncode in (137, 143, -9, -15) or (returncode > 128 and "Killed" in text):
        return TledgeError(f"the command on {host} was killed midway (exit {returncode}): what "
                           "it had not finished was left out; run it again")
    tail = lines[-1] if lines else "no output"
    return TledgeError(f"the command on {host} failed (exit {returncode}): {tail[:300]}")


def agent_source() -> str:
    """The device agent's source (tledge/device/agent.py), sent with ``python3 -c``."""
    return AGENT.read_text()


class Device:
    """Commands on one device through ssh. Each method raises TledgeError in one line."""

    def __init__(self, target: Target, python: str = "python3"):
        self.target = target
        self.python = python

    def command(self, remote: str, forward: Optional[tuple[int, int]] = None) -> list[str]:
        """The local argv running the shell command ``remote`` on the device; ``forward`` =
        (local port, device port) forwards the laptop's loopback to the device's."""
        argv = ssh_base()
        if forward:
            argv += ["-o", "ExitOnForwardFailure=yes",
                     "-L", f"127.0.0.1:{forward[0]}:127.0.0.1:{forward[1]}"]
        return argv + ["--", self.target.ssh_host, remote]

    def agent_command(self, *args: str) -> str:
        """The device's shell command running the agent with ``args``."""
        return " ".join(shlex.quote(a) for a in (self.python, "-c", agent_source(), *args))

    def run(self, remote: str, data: Optional[bytes | Callable] = None,
            echo: Optional[Callable[[str], None]] = None, timeout: Optional[float] = None) -> str:
        """Run ``remote`` and return its stdout. ``data``: bytes, or a function writing to the
        given binary file, fed to its stdin. ``echo``: shown each line of its stderr as it
        comes (progress). The command's stdin stays open until it ends: an agent watching it
        ends when this process does.

        Raises:
          TledgeError: ssh or the command failed (see :func:`ssh_failure`).
        """
        try:
            proc = subprocess.Popen(self.command(remote), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as e:
            raise TledgeError(f"no ssh client here ({ssh_base()[0]} not found): install "
                              "OpenSSH (apt install openssh-client)") from e
        err_lines: list[str] = []
        reader = threading.Thread(target=read_lines, args=(proc.stderr, err_lines, echo),
                                  daemon=True)
        out_chunks: list[bytes] = []
        out_reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()),
                                      daemon=True)
        reader.start()
        out_reader.start()
        try:
            if data is not None:
                try:
                    data(proc.stdin) if callable(data) else proc.stdin.write(data)
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # the command ended early: its stderr says why
            out_reader.join(timeout)
            code = proc.wait(timeout)
        except BaseException:  # Ctrl-C, SIGTERM, a timeout: ssh ends, and the agent with it
            proc.kill()
            proc.wait()
            raise
        finally:
            close_quietly(proc.stdin)
        reader.join(5)
        if code != 0:
            raise ssh_failure(self.target.host, code, "\n".join(err_lines))
        return b"".join(out_chunks).decode(errors="replace")

    def agent(self, *args: str, data=None, echo=None) -> dict:
        """Run an agent command and return its JSON answer.

        Raises:
          TledgeError: ssh or the agent failed.
        """
        out = self.run(self.agent_command(*args), data=data, echo=echo)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            raise TledgeError(f"on {self.target.host}: the agent gave no answer to "
                              f"{args[0]} (output: {out.strip()[-200:] or 'none'})")
        return json.loads(lines[-1])


def close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


def read_lines(stream, into: list[str], echo: Optional[Callable[[str], None]]) -> None:
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        into.append(line)
        if echo and line and not line.startswith("Error:"):
            echo(line)


def quote_all(argv: Sequence[str]) -> str:
    """A command line for the device's shell; ``~/`` at a word's start stays expandable."""
    out = []
    for arg in argv:
        if arg.startswith("~/"):
            out.append("~/" + shlex.quote(arg[2:]))
        else:
            out.append(shlex.quote(arg))
    return " ".join(out)
