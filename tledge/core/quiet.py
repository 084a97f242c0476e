"""Import TensorFlow without its noise.

TensorFlow 2.16+ logs through absl, and everything logged before ``absl::InitializeLog()``
goes to stderr whatever TF_CPP_MIN_LOG_LEVEL says: "oneDNN custom operations are on",
"Could not find cuda drivers", "failed call to cuInit: ... (303)" on a machine without a GPU,
CPU-instruction notices; later, tf.data logs "NodeDef mentions attribute use_unbounded_threadpool"
at ERROR level (a harmless version skew between tf_keras and TensorFlow). They look like errors
to a user and say nothing about their run.

``import_tensorflow`` routes file descriptor 2 (native code's stderr, and Python's) through a
pipe for the rest of the process: a thread passes every byte on to the real stderr at once,
except whole lines that match the known noise. Progress bars (carriage returns, no newline)
pass through live.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Optional

NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
    "cuda_platform.cc",
    "cudart_stub.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "Unable to register cu",
    "computation placer already registered",
    "TF-TRT Warning",
    "Attempting to register factory for plugin",
    "NodeDef mentions attribute use_unbounded_threadpool",
    "fully_quantize: 0, inference_type:",  # the TFLite converter's debug print
    "Created TensorFlow Lite XNNPACK delegate for CPU",  # LiteRT's native INFO, once a process
)
# How noise lines begin (absl's prefixes, the converter's print, LiteRT's INFO): a partial
# line that begins like one of these, or could still grow into one, is held until its newline
# to be judged whole (native code's writes can reach the pipe in pieces); anything else, such
# as a progress bar's carriage-return line, is passed on at once.
_LINE_STARTS = ("I0000", "W0000", "E0000", "WARNING: All log messages", "fully_quantize:",
                "INFO: Created TensorFlow Lite")
_filter = None
_verbose = False  # tledge -v: native code's lines reach the terminal unfiltered


def set_verbose(verbose: bool) -> None:
    """Show native libraries' log lines as they are (``tledge -v``), or filter them (the
    default). Per process and per command: the CLI sets it on each invocation."""
    global _verbose
    _verbose = bool(verbose)


def raw() -> bool:
    """Whether stderr passes unfiltered: -v, or ``TLEDGE_RAW_STDERR=1``."""
    return _verbose or os.environ.get("TLEDGE_RAW_STDERR") == "1"


def is_noise(line: str) -> bool:
    return any(pattern in line for pattern in NOISE)


def _may_be_noise(partial: bytes) -> bool:
    """Whether a line's first bytes begin, or may yet begin, a noise line (_LINE_STARTS)."""
    head = partial.lstrip().decode("utf-8", errors="replace")
    return any(head.startswith(start) or start.startswith(head) for start in _LINE_STARTS)


class _LiveFilter:
    """fd 2 -> pipe -> this thread -> the original stderr, minus noise lines."""

    def __init__(self):
        import atexit
        import threading

        sys.stderr.flush()
        self.out = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.read_fd = read_fd
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _write(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.out, data):]

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not is_noise(line.decode("utf-8", errors="replace")):
                    self._write(line + b"\n")
            if pending and not _may_be_noise(pending):
                self._write(pending)  # a progress bar's partial line: show it now
                pending = b""
        if pending and not is_noise(pending.decode("utf-8", errors="replace")):
            self._write(pending)

    def close(self) -> None:
        """Put the real stderr back (EOF for the pump) and let it finish writing."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.out, 2)
        self.thread.join(timeout=2)


@contextlib.contextmanager
def native_stderr_filtered():
    """Hold what native code writes to file descriptor 2 inside the block, then pass it on minus
    the known noise lines (``NOISE``): for a TFLite backend's interpreter creation, which logs
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." with no switch to turn it off
    (LiteRT has no Python logging control). The held text goes to a temporary file, not a pipe,
    so nothing can block; it reaches the terminal when the block ends, error or not.
    ``TLEDGE_RAW_STDERR=1`` or -v turns this off."""
    if raw():
        yield
        return
    try:
        sys.stderr.flush()
        held = tempfile.TemporaryFile()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2: nothing to filter
        yield
        return
    try:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            held.seek(0)
            text = held.read()
            kept = b"".join(line for line in text.splitlines(keepends=True)
                            if not is_noise(line.decode("utf-8", errors="replace")))
            while kept:
                kept = kept[os.write(2, kept):]
    finally:
        os.close(saved)
        held.close()


def original_stderr() -> int:
    """The file descriptor of the terminal's stderr, past the noise filter: for a child
    process whose words must reach the user even while this process cannot pump them."""
    return _filter.out if _filter else 2


def quiet_tensorflow_logs(env: Optional[dict] = None) -> dict:
    """Keep TensorFlow's C++ start-up chatter (CPU features, oneDNN) out of the progress
    lines, unless the user set TF_CPP_MIN_LOG_LEVEL: in ``env`` (a child process's
    environment), else in this process's. Returns the environment it set."""
    env = os.environ if env is None else env
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def import_tensorflow():
    """``import tensorflow`` (and its GPU discovery) with its noise filtered from stderr for
    the rest of the process; once."""
    global _filter
    quiet_tensorflow_logs()
    if "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    if _filter is None and not raw():
        try:
            _filter = _LiveFilter()
        except OSError:  # no fd 2, or no pipes: show the noise rather than fail
            _filter = False
    import tensorflow as tf
    tf.config.list_physical_devices("GPU")
    return tf
