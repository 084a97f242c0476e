"""Fixtures. Shared names and helpers are in helpers.py; no test imports this file.

The fast tier (``-m "not slow"``) must not import TensorFlow in the test process: a test or a
test module that does fails here, named, so the tier stays a minute and runs where only the
Pi's runtime is installed."""

import os
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# pytest-xdist already runs a worker per core: TensorFlow in each (and in the commands a test
# starts) computes on one thread, instead of every worker's thread pool spinning for every core
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1) > 1:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
# Backend probe results go to a cache of the test session's own (tledge.runtime.probe).
os.environ["TLEDGE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tledge-test-cache-")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import MODELS, TENSORFLOW, colour_splits, tiny_config  # noqa: E402


# ------------------------------------------------------------ no TensorFlow in the fast tier

def _fast_tier(config) -> bool:
    return "not slow" in (config.getoption("markexpr") or "")


def _tensorflow_loaded() -> list[str]:
    return [name for name in TENSORFLOW if sys.modules.get(name) is not None]


_imported_at_collection: list[str] = []


def pytest_collectreport(report):
    if _tensorflow_loaded() and not _imported_at_collection:
        _imported_at_collection.append(report.nodeid or "conftest.py")


def pytest_collection_finish(session):
    if _fast_tier(session.config) and _imported_at_collection:
        raise pytest.UsageError(
            f"{_imported_at_collection[0]} imports TensorFlow when collected: the fast tier "
            "must not; import it inside the slow tests that need it")


@pytest.fixture(autouse=True)
def _no_tensorflow_in_the_fast_tier(request):
    before = _tensorflow_loaded()
    yield
    if (_fast_tier(request.config) and not before and _tensorflow_loaded()
            and request.node.get_closest_marker("slow") is None):
        pytest.fail(f"imported {', '.join(_tensorflow_loaded())}: a fast test must not; "
                    "mark it slow or use the committed models in tests/models", pytrace=False)


# ------------------------------------------------------------------ the suite's CPU time
# Wall time depends on the machine class and on what else it runs; the CPU seconds the tests
# took (every test process and the processes they started and waited for) say what the suite
# costs: on N idle cores it cannot take less than CPU / N.

_cpu = {"workers": 0.0, "nodes": 0, "wall0": 0.0}


def _cpu_seconds(children: bool = True) -> float:
    """This process's CPU seconds, and those of the children it waited for (which include
    theirs): a worker's tests and the commands they ran."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    total = used.ru_utime + used.ru_stime
    if children:
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += waited.ru_utime + waited.ru_stime
    return total


def pytest_sessionstart(session):
    import time

    _cpu["wall0"] = time.monotonic()


def pytest_sessionfinish(session):
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: its figure goes to the controller
        workeroutput["cpu_s"] = _cpu_seconds()


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent without xdist
def pytest_testnodedown(node, error):
    _cpu["workers"] += float(getattr(node, "workeroutput", {}).get("cpu_s", 0.0))
    _cpu["nodes"] += 1


def pytest_terminal_summary(terminalreporter):
    import time

    if hasattr(terminalreporter.config, "workeroutput"):
        return
    # with xdist the workers' own figures (the controller's children would count them twice)
    cpu = _cpu["workers"] + _cpu_seconds(children=not _cpu["nodes"])
    wall = time.monotonic() - _cpu["wall0"]
    terminalreporter.write_line(
        f"suite CPU time {cpu:.0f} s (test processes and their children) in {wall:.0f} s wall"
        f" on {os.cpu_count()} cores: at least {cpu / (os.cpu_count() or 1) / 60:.1f} min on"
        f" this many idle cores of this CPU class")


# ------------------------------------------------------------------------------ data, models

@pytest.fixture(scope="session")
def tiny_splits():
    from tledge import data
    return data.load(tiny_config().data, seed=1)


@pytest.fixture(scope="session")
def colour_tflite(tmp_path_factory):
    """The committed int8 (from QAT) and fp32 colour classifiers (tests/models/make_models.py),
    copied so a test may alter them, with the colour splits they were verified on."""
    folder = tmp_path_factory.mktemp("colour_tflite")
    files = {}
    for fmt in ("int8", "fp32"):
        files[fmt] = folder / f"model_{fmt}.tflite"
        shutil.copyfile(MODELS / f"colour_{fmt}.tflite", files[fmt])
    return {**files, "splits": colour_splits()}


@pytest.fixture(scope="session")
def not_classifiers():
    """Committed .tflite files that are not image classifiers (vector in, image out)."""
    return {name: MODELS / f"{name}.tflite" for name in ("vector_in", "image_out")}


@pytest.fixture(scope="session")
def colour_run(tmp_path_factory):
    """A run folder with a float model and a QAT model that both classify colours well
    (TensorFlow: slow tests only)."""
    from helpers import train_colour_run

    run = tmp_path_factory.mktemp("colour_run")
    splits, model = train_colour_run(run)
    val = splits.val
    accuracy = np.mean(model.predict(val.x.astype(np.float32), verbose=0).argmax(1) == val.y)
    assert accuracy >= 0.9, "the fixture model must have learned the colours"
    return run, splits, model


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs: a disk that fills up. Skips where mounting needs a root this run lacks."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs",
                                            str(mount)], capture_output=True).returncode:
        pytest.skip("needs root to mount a 3 MB tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
