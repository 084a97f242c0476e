"""Probe a TFLite backend in a child process before this process first uses it.

A backend is native code, and native code can die where Python cannot catch it: LiteRT 2.2 and
newer segfault while reading an unexpected /proc/cpuinfo (seen under qemu, which shows an arm64
guest the x86 host's), and tflite-runtime 2.14 fails under numpy 2. A crash inside
``Interpreter(...)`` would take the user's command down with a bare "Segmentation fault", so each
backend first loads and runs a tiny int8 classifier (``probe.tflite``, beside this file) in a
child process. A backend whose child dies is skipped with a one-line warning and the next one is
used; ``tledge doctor`` shows every probe's result.

Results are cached per backend version, install location, Python and machine (the CPU's model
lines from /proc/cpuinfo, not its clock figures), in ``$TLEDGE_CACHE_DIR`` or
``~/.cache/tledge/backend_probe.json``, so the probe costs one child process once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROBE_MODEL = Path(__file__).with_name("probe.tflite")
CACHE_FILE = "backend_probe.json"
TIMEOUT_S = 300  # Python + numpy + a backend start in a few seconds; under qemu, far slower

# The child imports nothing of tledge: only the backend, numpy and the model; for the probe
# model it also checks the output has its two classes.
_CHILD = r"""
import importlib, sys, numpy as np
spec, model = sys.argv[1], sys.argv[2]
module, _, path = spec.partition(":")
Interpreter = importlib.import_module(module)
for attr in (path or "Interpreter").split("."):
    Interpreter = getattr(Interpreter, attr)
interpreter = Interpreter(model_path=model, num_threads=1)
interpreter.allocate_tensors()
for inp in interpreter.get_input_details():
    interpreter.set_tensor(inp["index"], np.full(inp["shape"], 128, inp["dtype"]))
interpreter.invoke()
for out in interpreter.get_output_details():
    shape = interpreter.get_tensor(out["index"]).shape
    assert len(sys.argv) < 4 or shape[-1] == int(sys.argv[3]), shape
print("ok")
"""


@dataclass(frozen=True)
class ProbeResult:
    """What loading and running the probe model in a child process showed.

    Attributes:
      ok: the backend loaded and ran the model.
      detail: "ok", or why not in a few words ("crashed with SIGSEGV", the error's last line).
      cached: the result came from the cache, not a new child process.
    """

    ok: bool
    detail: str
    cached: bool = False


def top_module(spec: str) -> str:
    """"ai_edge_litert.interpreter:Interpreter" -> "ai_edge_litert".

    Args:
      spec: "module.path:attribute".

    Returns:
      The top-level package's name.
    """
    return spec.partition(":")[0].split(".")[0]


def cache_path() -> Path:
    """Where probe results are cached.

    Returns:
      The JSON file in tledge's cache folder.
    """
    from tledge.core import fileio

    return fileio.cache_root() / CACHE_FILE


def machine_id() -> str:
    """This machine as a backend sees it: name, architecture and the CPU's identity lines.

    Returns:
      Its name, architecture and CPU identity lines, as one string (part of the cache key).
    """
    keep = ("model name", "flags", "features", "cpu implementer", "cpu part", "hardware", "model")
    lines = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in keep:
                    lines.add(line.strip())
    except OSError:
        pass
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]
    return f"{platform.node()}/{platform.machine()}/{digest}"


def probe_key(module: str, version: str) -> str:
    """The cache key of a backend's probe.

    Args:
      module: the backend's interpreter module.
      version: its package version.

    Returns:
      A key naming the backend, version, install location, Python and machine.
    """
    top = top_module(module)
    try:
        spec = importlib.util.find_spec(top)  # locates the package without importing it
        origin = spec.origin if spec else None
    except (ImportError, ValueError):
        origin = None
    return "|".join([module, version, str(origin), sys.executable, platform.python_version(),
                     machine_id()])


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, result: ProbeResult) -> None:
    from tledge.core import fileio

    data = _read_cache()
    data[key] = {"ok": result.ok, "detail": result.detail}
    try:
        fileio.write_json(cache_path(), data)
    except OSError:
        pass  # a read-only home: probe again next time rather than fail


def run_child(module: str, timeout: float = TIMEOUT_S) -> ProbeResult:
    """Load and run the probe model in a fresh Python with the Interpreter that ``module``
    names ("package.module", or "package:attr.path" for a class not called Interpreter at the
    module's top level).

    Args:
      module: the backend's interpreter module.
      timeout: seconds before the child counts as hung.

    Returns:
      The ProbeResult (ok, or how the child failed: a signal, a timeout, its last line).
    """
    return _run_script(_CHILD, [module, str(PROBE_MODEL), "2"], timeout)


def probe(module: str, version: str, refresh: bool = False) -> ProbeResult:
    """The cached probe result for a backend, probing it first if this machine has none.

    Args:
      module: the backend's interpreter module.
      version: its package version.
      refresh: run the child again instead of reading the cache.

    Returns:
      The ProbeResult, cached per ``probe_key``.
    """
    if os.environ.get("TLEDGE_NO_PROBE") == "1":
        return ProbeResult(True, "not probed (TLEDGE_NO_PROBE=1)")
    key = probe_key(module, version)
    if not refresh:
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and "ok" in hit:
            return ProbeResult(bool(hit["ok"]), str(hit.get("detail", "")), cached=True)
    result = run_child(module)
    if not result.detail.startswith("did not finish"):  # a slow machine may do better next time
        _write_cache(key, result)
    return result


def last_line(result: Optional[ProbeResult]) -> str:
    """What a probe found, for tledge doctor.

    Args:
      result: a ProbeResult, or None.

    Returns:
      "ok", "ok (cached)" or what went wrong, for tledge doctor.
    """
    if result is None:
        return "not probed"
    return result.detail + (" (cached)" if result.cached else "")


# A model file is untrusted input to native code: a corrupt quantization scale makes some
# interpreters free memory twice (SIGABRT) while preparing the graph. Each file is first loaded
# and run once in a child process, as the backends are; the result is cached by the file's
# content, so a model costs one child process (0.2 s here) the first time it is used.
MODEL_CACHE_FILE = "model_checks.json"
MODEL_CACHE_ENTRIES = 500


def _run_script(script: str, args: list, timeout: float) -> ProbeResult:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"did not finish in {timeout:.0f} s")
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return ProbeResult(True, "ok")
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        return ProbeResult(False, f"crashed with {name}")
    lines = [line for line in proc.stderr.strip().splitlines()
             if line.strip() and not line.startswith("INFO:")]
    return ProbeResult(False, (lines[-1][:160] if lines else f"exit code {proc.returncode}"))


def check_model(module: str, version: str, path: Path) -> ProbeResult:
    """Whether the backend ``module`` loads and runs the model file ``path`` without crashing,
    tried in a child process once per file content and backend (cached).

    Args:
      module: the backend's interpreter module.
      version: its package version.
      path: the .tflite file.

    Returns:
      The ProbeResult of loading and running that file in a child process, cached by content.
    """
    from tledge.core import fileio

    if os.environ.get("TLEDGE_NO_PROBE") == "1":
        return ProbeResult(True, "not checked (TLEDGE_NO_PROBE=1)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    key = digest.hexdigest() + "|" + probe_key(module, version)
    store = fileio.cache_root() / MODEL_CACHE_FILE
    try:
        cache = json.loads(store.read_text(encoding="utf-8"))
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    hit = cache.get(key)
    if isinstance(hit, dict) and "ok" in hit:
        return ProbeResult(bool(hit["ok"]), str(hit.get("detail", "")), cached=True)
    result = _run_script(_CHILD, [module, str(path)], TIMEOUT_S)
    # "RuntimeError: Input tensor 2 lacks data" -> the message; the class name adds nothing
    result = ProbeResult(result.ok, re.sub(r"^[\w.]+(Error|Exception): ", "", result.detail))
    if not result.detail.startswith("did not finish"):
        cache.pop(key, None)
        cache[key] = {"ok": result.ok, "detail": result.detail}
        while len(cache) > MODEL_CACHE_ENTRIES:  # the oldest first (dicts keep their order)
            cache.pop(next(iter(cache)))
        try:
            fileio.write_json(store, cache)
        except OSError:
            pass  # a read-only home: check again next time
    return result
