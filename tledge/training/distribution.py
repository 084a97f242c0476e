"""Where training runs: the distribution strategy (one device, mirrored over GPUs or CPUs, a
multi-worker cluster from TF_CONFIG), this process's role in a cluster, the wait for the
cluster with its watchdog, the backup folder a restarted cluster resumes from, and the
mixed-precision policy. The recipe itself (``tledge.training.train``) does not depend on which."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tledge.core import fileio
from tledge.core.config import RunConfig
from tledge.core.errors import TledgeError, first_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRole:
    """This process's place in a multi-worker cluster (from TF_CONFIG).

    Attributes:
      workers: processes in the cluster (chief included).
      index: this one's data shard, 0..workers-1 (the chief is 0).
      chief: whether this one writes the run folder.
      addresses: every worker's "host:port", in index order (chief first).
    """

    workers: int
    index: int
    chief: bool
    addresses: tuple = ()


TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


def worker_role(strategy_name: str) -> Optional[WorkerRole]:
    """None unless ``--strategy multi-worker``; then this process's role, from TF_CONFIG (the
    variable Kubernetes' training operators, Vertex AI and SageMaker set), checked."""
    import os

    if strategy_name != "multi-worker":
        return None
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise TledgeError("--strategy multi-worker needs TF_CONFIG, the cluster's addresses and "
                          f"this worker's place in it, e.g. {TF_CONFIG_EXAMPLE}")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TledgeError(f"TF_CONFIG is not a cluster description ({type(e).__name__}: "
                          f"{str(e)[:80]}): set it like {TF_CONFIG_EXAMPLE}") from e
    _check_addresses(cluster, chiefs + workers)
    members = {"chief": chiefs, "worker": workers}
    if kind not in members or not 0 <= index < len(members[kind]) or len(chiefs) > 1:
        raise TledgeError(f"TF_CONFIG's task {kind!r} {index} is not in its cluster "
                          f"({len(chiefs)} chief, {len(workers)} worker addresses): give each "
                          "process its own type and index")
    position = index if kind == "chief" else len(chiefs) + index
    return WorkerRole(workers=len(chiefs) + len(workers), index=position, chief=position == 0,
                      addresses=tuple(chiefs + workers))


def _check_addresses(cluster: dict, addresses: list) -> None:
    """Each cluster list a list of "host:port" strings, ports numbers, no address twice (TF
    waits for ever on a second listener at one address, and tracebacks on a bad port)."""
    for kind in ("chief", "worker"):
        if kind in cluster and not isinstance(cluster[kind], list):
            raise TledgeError(f"TF_CONFIG's cluster {kind!r} must be a list of \"host:port\" "
                              f"addresses, got {type(cluster[kind]).__name__}: set it like "
                              f"{TF_CONFIG_EXAMPLE}")
    for address in addresses:
        host, _, port = str(address).rpartition(":") if isinstance(address, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise TledgeError(f"TF_CONFIG's cluster address {str(address)[:60]!r} is not "
                              "host:port with a port from 1 to 65535: set it like "
                              f"{TF_CONFIG_EXAMPLE}")
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        raise TledgeError(f"TF_CONFIG lists {twice[0]} more than once: every worker needs an "
                          "address of its own (another port on the same host will do)")


def resolve_strategy(name: str, timeout: float = 300.0, echo: Callable[[str], None] = print,
                     lock: Optional[Path] = None):
    """auto: MirroredStrategy over the GPUs when more than one is visible; mirrored: always
    (over the logical CPUs where there is no GPU); multi-worker: MultiWorkerMirroredStrategy
    over the cluster in TF_CONFIG (each worker's GPUs, or its CPU), waiting at most ``timeout``
    seconds for the other workers; none: the default strategy."""
    import tensorflow as tf

    if name == "multi-worker":
        role = worker_role(name)  # a clear error for a missing or bad TF_CONFIG
        return _wait_for_cluster(role, timeout, echo, lock)

    gpus = tf.config.list_logical_devices("GPU")
    if name == "none" or (name == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()
    if gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=cpus)


# The watchdog of a cluster wait: a separate process, because the waiting one is inside
# TensorFlow's C++ code with the GIL held, where no Python thread or signal handler runs.
_WATCHDOG = r"""
import os, select, signal, sys, time
parent, timeout, lock = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends by it
def release():
    try:
        if '"pid": %d,' % parent in open(lock).read():
            os.unlink(lock)
            os.rmdir(os.path.dirname(lock))  # only if empty
    except OSError:
        pass
deadline = time.monotonic() + timeout
while True:
    if select.select([sys.stdin], [], [], 0.2)[0]:
        if sys.stdin.buffer.read(4) != b"done":
            release()  # the pipe closed unsaid: the parent was ended (Ctrl-C, SIGHUP) waiting
        sys.exit(0)
    if time.monotonic() > deadline:
        print("Error: " + sys.argv[4], file=sys.stderr, flush=True)
        release()
        os.kill(parent, signal.SIGKILL)
        sys.exit(1)
"""


def _wait_for_cluster(role: WorkerRole, timeout: float, echo: Callable[[str], None],
                      lock: Optional[Path]):
    """MultiWorkerMirroredStrategy, created while every other worker is waited for, at most
    ``timeout`` seconds. TensorFlow waits for ever by default, in C++ with the GIL held
    (connecting to the workers, then a first all-reduce as a barrier), where Python's signal
    handlers never run: Ctrl-C and SIGTERM went unanswered. Meanwhile SIGINT, SIGTERM and SIGHUP
    take their default action (the process ends at once), and a watchdog process releases the
    run folder (``lock``) when this one ends, or after ``timeout`` says so in one line and ends
    it."""
    import signal
    import subprocess
    import sys

    import tensorflow as tf

    strategy_cls = tf.distribute.MultiWorkerMirroredStrategy
    echo(f"strategy: waiting up to {timeout:g} s for the cluster's {role.workers} workers "
         "(TF_CONFIG; --cluster-timeout); Ctrl-C stops the wait")
    message = (f"the other workers of the cluster did not all start within {timeout:g} s: "
               "start the same command on every host in TF_CONFIG (each with its own index), "
               "or wait longer with --cluster-timeout")
    from tledge.core.quiet import original_stderr

    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                 str(timeout),
                                 str(lock) if lock else "", message], stdin=subprocess.PIPE,
                                stderr=original_stderr())
    handlers = {}
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, signal.SIG_DFL)
    try:
        _wait_for_peers(role)
        return strategy_cls()
    except tf.errors.OpError as e:
        text = first_line(e)
        if "Could not start gRPC server" in text:
            raise TledgeError("could not listen on this worker's address in TF_CONFIG (its "
                              "port is in use, or the address is not this host's): free the "
                              "port or give this worker another") from e
        raise TledgeError(f"the cluster could not be set up ({text[:160]}): check TF_CONFIG "
                          "and that every worker runs the same command") from e
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            watchdog.stdin.write(b"done")
            watchdog.stdin.close()
        watchdog.wait()


def _wait_for_peers(role: WorkerRole, every: float = 0.5) -> None:
    """Return once every other worker's address accepts a TCP connection, this worker's own
    port held open meanwhile for theirs (then closed, for TensorFlow's server to take).

    TensorFlow's own wait blocks in C++ and installs its preemption handler for SIGTERM, so a
    worker waiting there for a peer that never comes ignored ``kill`` and ``systemctl stop``
    until --cluster-timeout. This wait is Python's, checking every ``every`` seconds: SIGTERM
    (at its default action meanwhile) ends it at once, and the watchdog ends it at the timeout.

    Raises:
      TledgeError: this worker's port is taken.
    """
    import socket
    import time

    if not role.addresses:
        return
    port = int(role.addresses[role.index].rpartition(":")[2])
    listener = socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if listener.family == socket.AF_INET6:
            listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("", port))
        listener.listen(16)
    except OSError as e:
        listener.close()
        raise TledgeError(f"could not listen on this worker's address in TF_CONFIG (port {port}: "
                          f"{e.strerror}): free the port or give this worker another") from e
    pending = [a for i, a in enumerate(role.addresses) if i != role.index]
    try:
        while pending:
            waiting = []
            for address in pending:
                host, _, peer_port = address.rpartition(":")
                try:
                    socket.create_connection((host.strip("[]"), int(peer_port)), every).close()
                except OSError:
                    waiting.append(address)
            pending = waiting
            if pending:
                time.sleep(every)
    finally:
        listener.close()


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """mixed_float16 for the duration of the run, on GPU only; the global policy is restored."""
    import tensorflow as tf
    import tf_keras as keras

    if not mixed:
        yield False
        return
    if not tf.config.list_logical_devices("GPU"):
        log.warning("--mixed-precision ignored: no GPU is visible (float16 on a CPU is slower)")
        yield False
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield True
    finally:
        keras.mixed_precision.set_global_policy(previous)


def backup_dir(config: RunConfig, out: Path) -> Path:
    """Where a multi-worker run keeps its BackupAndRestore state: ``train.backup_dir``, else a
    folder in tledge's cache named after the run folder (one host's workers share it)."""
    import hashlib

    if config.train.backup_dir:
        return Path(config.train.backup_dir)
    name = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return fileio.cache_root() / "backup" / name
