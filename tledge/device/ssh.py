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
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from tledge.core.errors import TledgeError
from tledge.core.fileio import NAME_MAX

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

    def agent_command(self, *args: str, source: Optional[str] = None) -> str:
        """The device's shell command running the agent (or the agent ``source``) with
        ``args``."""
        return " ".join(shlex.quote(a) for a in (self.python, "-c", source or agent_source(),
                                                 *args))

    def run(self, remote: str, data: Optional[bytes | Callable] = None,
            echo: Optional[Callable[[str], None]] = None, timeout: Optional[float] = None,
            what: str = "the command", raw: bool = False) -> str | bytes:
        """Run ``remote`` and return its stdout (``raw``: its bytes). ``data``: bytes, or a
        function writing to the given binary file, fed to its stdin. ``echo``: shown each
        line of its stderr as it comes (progress). The command's stdin stays open until it
        ends: an agent watching it ends when this process does.

        The device is untrusted: its stdout is kept up to :data:`MAX_ANSWER` bytes, each
        stderr line up to :data:`MAX_LINE` (terminal escapes shown as ``?``), and past
        ``timeout`` seconds the command is ended; every 30 s without a word, ``what`` it waits
        for is said on stderr.

        Raises:
          TledgeError: ssh or the command failed (see :func:`ssh_failure`), the answer was too
            large, or no answer came within ``timeout``.
        """
        try:
            proc = subprocess.Popen(self.command(remote), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except FileNotFoundError as e:
            raise TledgeError(f"no ssh client here ({ssh_base()[0]} not found): install "
                              "OpenSSH (apt install openssh-client)") from e
        err_lines: list[str] = []
        heard = [time.monotonic()]

        def progress(line: str) -> None:
            heard[0] = time.monotonic()
            if echo:
                echo(line)

        reader = threading.Thread(target=read_lines, args=(proc.stderr, err_lines, progress),
                                  daemon=True)
        out = _Bounded(proc)
        threads = [reader, threading.Thread(target=out.read, daemon=True)]
        if data is not None:
            threads.append(threading.Thread(target=_feed, args=(proc.stdin, data), daemon=True))
        for thread in threads:
            thread.start()
        try:
            code = self._wait(proc, timeout, what, heard)
            threads[1].join(5)
        except BaseException:  # Ctrl-C, SIGTERM, a timeout: ssh ends, and the agent with it
            proc.kill()
            proc.wait()
            raise
        finally:
            close_quietly(proc.stdin)
        reader.join(5)
        if out.overflow:
            raise TledgeError(f"{self.target.host} answered {what} with over {MAX_ANSWER >> 20} "
                              "MB: that is no answer of tledge's (a report is a few KB); "
                              "nothing of it was used")
        if code != 0:
            raise ssh_failure(self.target.host, code, "\n".join(err_lines))
        answer = b"".join(out.chunks)
        return answer if raw else answer.decode(errors="replace")

    def _wait(self, proc: subprocess.Popen, timeout: Optional[float], what: str,
              heard: list) -> int:
        """The command's exit code; ends it past ``timeout``, saying what it waited for."""
        start = time.monotonic()
        while True:
            left = 1.0 if timeout is None else max(0.05, min(1.0, start + timeout -
                                                            time.monotonic()))
            try:
                return proc.wait(left)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if timeout is not None and now - start > timeout:
                proc.kill()
                proc.wait()
                raise TledgeError(f"{self.target.host} gave no answer within {timeout:.0f} s "
                                  f"to {what}: it may be overloaded, or its disk or network "
                                  f"stalled; look with ssh {self.target.ssh_host}, then try "
                                  "again")
            if now - heard[0] >= WAIT_NOTICE_S:
                heard[0] = now
                limit = f" (gives up at {timeout:.0f} s)" if timeout else ""
                sys.stderr.write(f"still waiting for {self.target.host}: {what}, "
                                 f"{now - start:.0f} s{limit}\n")
                sys.stderr.flush()

    def agent(self, *args: str, data=None, echo=None, timeout: Optional[float] = None,
              source: Optional[str] = None) -> dict:
        """Run an agent command (of the agent ``source``, by default the deploy agent's) and
        return its JSON answer (an object).

        Raises:
          TledgeError: ssh or the agent failed, gave no answer in time, or an answer that is
            not a JSON object.
        """
        limit, what = AGENT_STEPS.get(args[0], (600.0, args[0]))
        out = self.run(self.agent_command(*args, source=source), data=data, echo=echo,
                       timeout=timeout or limit, what=what)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        host = self.target.host
        if not lines:
            raise TledgeError(f"on {host}: the agent gave no answer to {args[0]} (output: "
                              f"{printable(out.strip()[-200:], newlines=False) or 'none'})")
        try:
            answer = json.loads(lines[-1], parse_constant=no_constant)
        except ValueError as e:
            raise TledgeError(f"on {host}: the agent's answer to {args[0]} is not JSON "
                              f"({printable(lines[-1][:60], newlines=False)}...): does "
                              "something on the device print into SSH sessions?") from e
        if not isinstance(answer, dict):
            raise TledgeError(f"on {host}: the agent's answer to {args[0]} is not a JSON "
                              "object: run tledge deploy again")
        return answer


# What each agent command may take at most (seconds), and what it is, for the messages.
AGENT_STEPS = {"facts": (120.0, "its facts (Python, architecture, free space, models)"),
               "receive": (600.0, "the upload"),
               "listing": (600.0, "the data folder's listing (a hash of every picture)"),
               "install": (3600.0, "the venv's install (pip) and its tledge doctor"),
               "doctor": (300.0, "tledge doctor"),
               "service": (300.0, "the camera's systemd unit"),
               "unservice": (120.0, "removing the camera's systemd unit")}
MAX_ANSWER = 16 << 20  # bytes of stdout kept: an agent's answer or a bench report is KBs
MAX_LINE = 4096  # bytes of one stderr line kept (the rest of the line is skipped)
KEEP_LINES = 200  # the last stderr lines kept for the error message
WAIT_NOTICE_S = 30.0
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str, newlines: bool = True) -> str:
    """A device's text made safe for this terminal and for files: control characters
    (terminal escapes, carriage returns, bells) shown as ``?``; newlines kept, or spaces."""
    text = _CONTROL.sub("?", text)
    return text if newlines else text.replace("\n", " ").replace("\t", " ")


def no_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def answer_fields(answer: dict, host: str, command: str, **fields) -> dict:
    """Check an agent's answer has each field at its type (``float``: finite, ``int``: not a
    bool, a tuple: any of them); strings come back printable.

    Raises:
      TledgeError: a field missing or of another type, in one line.
    """
    import math

    for key, kind in fields.items():
        value = answer.get(key)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = any((k is float and isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value)) or
                 (k is int and isinstance(value, int) and not isinstance(value, bool)) or
                 (k is None and value is None) or
                 (k not in (float, int, None) and isinstance(value, k)) for k in kinds)
        if not ok:
            shown = printable(repr(value)[:40], newlines=False)
            raise TledgeError(f"on {host}: the agent's answer to {command} has no valid "
                              f"{key!r} (got {shown}): the device runs another tledge or "
                              "something answers in its place; run tledge deploy again")
        if isinstance(value, str):
            answer[key] = printable(value)
    return answer


class _Bounded:
    """Reads a command's stdout, keeping at most MAX_ANSWER bytes; past that, ends it."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.chunks, self.size, self.overflow = proc, [], 0, False

    def read(self) -> None:
        while True:
            chunk = self.proc.stdout.read1(1 << 16)
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > MAX_ANSWER:
                self.overflow = True
                self.chunks.clear()
                self.proc.kill()
                return
            self.chunks.append(chunk)


def _feed(stdin, data) -> None:
    try:
        data(stdin) if callable(data) else stdin.write(data)
        stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass  # the command ended early (or was ended): its stderr says why


def close_quietly(stream) -> None:
    try:
        stream.close()
    except OSError:
        pass


def read_lines(stream, into: list[str], echo: Optional[Callable[[str], None]]) -> None:
    """A device's lines, each bounded and made printable, the last KEEP_LINES kept."""
    while True:
        raw = stream.readline(MAX_LINE)
        if not raw:
            return
        if not raw.endswith(b"\n"):  # a longer line: the rest of it is skipped
            rest = raw
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(MAX_LINE)
        line = printable(raw.decode(errors="replace").rstrip(), newlines=False)
        into.append(line)
        if len(into) > KEEP_LINES:
            del into[0]
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
