"""The TFLite interpreters tledge can run on (LiteRT, tflite_runtime, TensorFlow's), each
imported only after it passed its probe in a child process (``tledge.runtime.probe``), and the
choice of the first that works. Imports no backend until one is asked for."""

from __future__ import annotations

import importlib
import os
import logging
from dataclasses import dataclass
from typing import Any, Optional

from tledge.core.config import BACKENDS
from tledge.core.errors import TledgeError, first_line
from tledge.runtime.probe import top_module

# "module:attribute path" of each backend's Interpreter class. TensorFlow's is reached through
# the public API (tf.lite.Interpreter): importing "tensorflow.lite" gives TensorFlow's internal
# package of that name, which has no Interpreter.
_MODULES = {
    "litert": "ai_edge_litert.interpreter:Interpreter",
    "tflite_runtime": "tflite_runtime.interpreter:Interpreter",
    "tensorflow": "tensorflow:lite.Interpreter",
}


@dataclass(frozen=True)
class Backend:
    """An interpreter implementation that imported.

    Attributes:
      name: litert, tflite_runtime or tensorflow.
      version: the package's version.
      interpreter_cls: its Interpreter class.
    """

    name: str
    version: str
    interpreter_cls: Any


# The distributions that install each backend's module, first match wins.
_DISTS = {"litert": ("ai-edge-litert", "ai-edge-litert-nightly"),
          "tflite_runtime": ("tflite-runtime",),
          "tensorflow": ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-aarch64")}
_loaded: dict = {}   # name -> Backend that imported and passed its probe
_warned: set = set()


class BackendUnusable(Exception):
    """A backend that is installed but cannot load a model here (its probe failed)."""


def interpreter_spec(name: str) -> str:
    """Where a backend's Interpreter class lives.

    Args:
      name: litert, tflite_runtime or tensorflow.

    Returns:
      "module:attribute path", as ``load_interpreter_class`` and the probes take it.
    """
    return _MODULES[name]


def installed_version(name: str) -> Optional[str]:
    """The backend's package version, None when its module is not installed. Imports nothing.

    Args:
      name: litert, tflite_runtime or tensorflow.

    Returns:
      The version of the first distribution that installs it, or None.
    """
    import importlib.util
    from importlib.metadata import PackageNotFoundError, version

    try:
        if importlib.util.find_spec(top_module(_MODULES[name])) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in _DISTS[name]:
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"  # a source build or a nightly under another name


def load_interpreter_class(spec: str):
    """The class that "module:attr.path" names (imports the module); a bare "module" means
    its Interpreter.

    Args:
      spec: "module:attr.path", or a bare module.

    Returns:
      The Interpreter class.
    """
    module_name, _, attr_path = spec.partition(":")
    obj = importlib.import_module(module_name)
    for attr in (attr_path or "Interpreter").split("."):
        obj = getattr(obj, attr)
    return obj


def _import_backend(name: str) -> Backend:
    """Import a backend into this process (after its probe passed)."""
    try:
        cls = load_interpreter_class(_MODULES[name])
    except AttributeError as cause:  # a TensorFlow without tf.lite.Interpreter
        raise BackendUnusable(f"{installed_version(name)} has no Interpreter class") from cause
    return Backend(name, installed_version(name) or "unknown", cls)


def probe_backend(name: str, refresh: bool = False):
    """The probe result for an installed backend (see tledge.runtime.probe), None if absent.

    Args:
      name: litert, tflite_runtime or tensorflow.
      refresh: run the probe again instead of reading the cache.

    Returns:
      The ProbeResult, or None when the backend is not installed.
    """
    import tledge.runtime.probe as probe

    ver = installed_version(name)
    return None if ver is None else probe.probe(_MODULES[name], ver, refresh=refresh)


def _describe_failure(name: str, detail: str) -> str:
    if "AttributeError" in detail and "Interpreter" in detail:
        return "has no Interpreter class"
    if detail.startswith("crashed"):
        return f"{detail} while loading a model in a test process"
    return detail


def _load(name: str) -> Backend:
    """Probe (in a child process, cached), then import. Raises ImportError or BackendUnusable."""
    ver = installed_version(name)
    if ver is None:
        raise ImportError(f"No module named {top_module(_MODULES[name])!r}")
    result = probe_backend(name)
    if result is not None and not result.ok:
        raise BackendUnusable(f"{ver} {_describe_failure(name, result.detail)}")
    return _import_backend(name)


def _why(e: Exception) -> str:
    """Why a backend cannot be used, in a few words."""
    if isinstance(e, BackendUnusable):
        return str(e)
    if isinstance(e, ImportError) and "No module named" in str(e):
        return "not installed"
    first = first_line(e)[:100] if str(e).strip() else ""
    return type(e).__name__ + (f" ({first})" if first else "")


def _reason(name: str, e: Exception) -> str:
    return f"{name} {e}" if isinstance(e, BackendUnusable) else f"{name}: {_why(e)}"


def available_backends(include_tensorflow: bool = True) -> dict[str, str]:
    """{backend: version, or "unavailable (reason)"}. Probes each installed backend (cached);
    asking about the tensorflow backend imports TensorFlow (seconds): ``include_tensorflow=False``
    leaves it out.

    Args:
      include_tensorflow: probe TensorFlow's interpreter too.

    Returns:
      {name: version or "unavailable (reason)"} for each installed backend.
    """
    found = {}
    for name in BACKENDS if include_tensorflow else BACKENDS[:-1]:
        try:
            found[name] = _load(name).version
        except Exception as e:  # ImportError, a failed probe, tflite-runtime's SystemError
            found[name] = f"unavailable ({_why(e)})"
    return found


def get_backend(name: Optional[str] = None) -> Backend:
    """The named backend, or the first of LiteRT, tflite_runtime, tensorflow that imports and
    passes its probe. An installed backend that fails its probe is skipped with a warning.

    Args:
      name: litert, tflite_runtime or tensorflow; None: the first that works.

    Returns:
      The Backend (name, version, Interpreter class).

    Raises:
      TledgeError: an unknown name, or no backend can be loaded (with the install that fixes it).
    """
    if name and name not in BACKENDS:
        raise TledgeError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    errors, skipped = [], []
    for candidate in [name] if name else list(BACKENDS):
        cached = _loaded.get(candidate)
        if isinstance(cached, Backend):
            backend = cached
        else:
            try:
                backend = _load(candidate)
            except Exception as e:  # noqa: BLE001 - every failure is reported, none raised
                reason = _reason(candidate, e)
                errors.append(reason)
                if isinstance(e, BackendUnusable) and candidate != "tensorflow":
                    skipped.append(reason)
                continue
            _loaded[candidate] = backend
        for reason in skipped:
            if reason not in _warned:
                _warned.add(reason)
                logging.getLogger("tledge").warning(
                    "%s; using %s %s instead (tledge doctor shows every backend)", reason,
                    backend.name, backend.version)
        return backend
    if any("crashed" in e for e in errors):
        hint = ("a backend crashed on this machine: tledge doctor shows each backend's probe; "
                "try another LiteRT version (pip install 'ai-edge-litert<2.2') or tflite-runtime "
                "with numpy<2")
    elif name == "tflite_runtime":
        hint = "pip install tflite-runtime (numpy 1.x only)"
    elif name == "tensorflow" and any("Interpreter" in e for e in errors):
        hint = "use --backend litert (pip install ai-edge-litert)"
    elif name == "tensorflow":
        hint = 'pip install "tledge[train]", or use --backend litert'
    else:
        hint = "pip install ai-edge-litert"
    raise TledgeError(f"no TFLite interpreter could be loaded ({'; '.join(errors)}): {hint}")


# Interpreter threads past this many per core are refused: they never make inference faster,
# and a huge count exhausts the machine's thread table (a million: SIGSEGV after the thread
# pool fails to start; under a container's pids limit, a thousand is enough).
THREADS_PER_CORE = 4


def check_threads(threads: Optional[int], cores: Optional[int] = None) -> None:
    """Refuse a thread count below 1 or past :data:`THREADS_PER_CORE` times the cores.

    Raises:
      TledgeError: one line naming the range that makes sense here.
    """
    cores = cores or os.cpu_count() or 1
    if threads is None:
        return
    if threads < 1:
        raise TledgeError(f"--threads must be 1 or more, got {threads}")
    if threads > THREADS_PER_CORE * cores:
        raise TledgeError(f"--threads {threads} is far more than this machine's {cores} cores: "
                          f"give 1 to {cores} (inference is fastest within the cores; at most "
                          f"{THREADS_PER_CORE * cores} are accepted, to measure oversubscription)")
