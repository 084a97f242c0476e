"""tledge: transfer-learn an image classifier, quantize it, and run it on the edge.

The packages, in the order of the pipeline (each imports only from those before it;
tests/test_layering.py holds them to it):

    core      errors, atomic files, the run configuration, the run folder, quiet native logs
    runtime   the TF-free classify path a Pi runs (LiteRT / tflite-runtime, preprocessing)
    data      folders, built-in sets, the image cache, the tf.data pipeline
    models    the transfer classifiers (MobileNetV2/V3, EfficientNet-Lite, ResNet50, ...)
    training  the frozen-then-fine-tune recipe, feature caches, QAT, the curves
    quantize  the converter per format, bias correction, graph rewrites, the int8 report
    export    verified TFLite files with metadata, the accuracy gate
    measure   evaluate (accuracy, mistakes) and bench (latency, size, memory)
    camera    the live classifier, its browser page, collect
    device    deploy and the device loop over SSH
    cli       the ``tledge`` command
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Where the modules of the flat layout (tledge <= 0.1 before the stage packages) now live:
# ``import tledge.train`` and ``from tledge.config import TrainConfig`` keep working, and give
# the very module object of the new path (no second copy, nothing imported until asked for).
MOVED = {
    **{m: f"tledge.core.{m}" for m in ("quiet", "errors", "fieldcheck", "config", "fileio",
                                        "rundir")},
    **{m: f"tledge.training.{m}" for m in ("train", "fitting", "features", "qat", "history",
                                            "distribution", "runmodel")},
    **{m: f"tledge.quantize.{m}" for m in ("conversion", "biascorrect", "graph_rewrite",
                                            "quantdebug")},
    **{m: f"tledge.measure.{m}" for m in ("bench", "benchreport", "evaluate")},
    "cli_device": "tledge.cli.device",
    "doctor": "tledge.cli.doctor",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import finder: an old path is the new module under its old name."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("tledge.")
        if fullname.startswith("tledge.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name.removeprefix("tledge.")])

    def exec_module(self, module):
        pass  # the new module ran when it was imported


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
