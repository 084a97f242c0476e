"""Verification of an exported file against the float model: the tensor types each format
promises, accuracy and agreement on the validation images, the accuracy gate and what to do
when a file fails it, the per-layer int8 report, --keep-float (chosen or automatic), and the
publishing of verified files under their final names."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio
from tledge.quantize import quantdebug
from tledge.quantize.conversion import QuantizationConfig, convert
from tledge.core.errors import TledgeError
from tledge.core.stats import SIGNIFICANCE, paired_worse_p
from tledge.export.metadata import metadata_bytes, with_metadata
from tledge.runtime import min_runtime_version
from tledge.runtime.delegation import delegation
from tledge.training.fitting import balanced_accuracy


def check_quantized(model_bytes: bytes, fmt: str, keep_float: bool = False) -> dict:
    """Checks that a converted file holds the tensor types its format promises.

    Catches the converter pitfall of a model silently left float (or half-quantized).

    Args:
      model_bytes: the flatbuffer.
      fmt: fp32, fp16, dynamic or int8.
      keep_float: int8 with chosen ops left float (--keep-float): float tensors allowed.

    Returns:
      {"tensor_types": count per dtype, "input_dtype": ..., "output_dtype": ...}.

    Raises:
      TledgeError: the file is not what its format claims.
    """
    from tledge.runtime import get_backend

    interpreter = get_backend().interpreter_cls(model_content=model_bytes)
    counts: dict[str, int] = {}
    for detail in interpreter.get_tensor_details():
        name = np.dtype(detail["dtype"]).name
        counts[name] = counts.get(name, 0) + 1
    in_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"]).name
    out_dtype = np.dtype(interpreter.get_output_details()[0]["dtype"]).name
    problem = None
    if fmt == "int8":
        if in_dtype != "uint8" or out_dtype != "uint8":
            problem = f"input {in_dtype} / output {out_dtype}, expected uint8 / uint8"
        elif counts.get("float32", 0) and not keep_float:  # --keep-float leaves some, by design
            problem = f"{counts['float32']} float32 tensors left in a full-integer model"
        elif not counts.get("int8", 0):
            problem = "no int8 tensors"
    elif fmt == "dynamic" and not counts.get("int8", 0):
        problem = "no int8 weights: the converter left the model float"
    elif fmt == "fp16" and not counts.get("float16", 0):
        problem = "no float16 weights: the converter left the model float32"
    if problem:
        raise TledgeError(f"the {fmt} conversion is not what it claims ({problem}); the model "
                          "has layers the converter could not quantize")
    return {"tensor_types": counts, "input_dtype": in_dtype, "output_dtype": out_dtype}


@dataclass
class FormatResult:
    """One exported file checked against the float model.

    Attributes:
      format: fp32, fp16, dynamic or int8.
      path: where the file landed (a REJECTED name when it failed the gate).
      size_bytes: file size.
      source: the Keras model converted: float, or qat.
      accuracy: on the evaluation images.
      agreement: fraction of images where its top-1 equals the float model's.
      max_prob_diff: largest absolute difference of any class probability vs float.
      mean_prob_diff: mean absolute difference of the probabilities vs float.
      drop_points: the float model's score minus this file's, in percentage points, on the
        gate's figure (``figure``).
      passed: within the accuracy gate.
      quantization: input/output dtypes and quantization parameters, tensor dtype counts.
      images: how many validation images the figures are measured on.
      worse, better: images the float model got right and this file wrong, and the other
        way round (the discordant pairs of McNemar's test).
      p_value: the chance of this file doing at least this much worse than the float model
        if the two were equally good (McNemar's exact test, one-sided; on balanced accuracy
        each image weighs as the figure weighs it: ``tledge.core.stats.paired_worse_p``).
      balanced_accuracy: mean per-class recall on the evaluation images.
      figure: what the gate compares: ``accuracy``, or ``balanced accuracy`` where the run's
        classes are imbalanced (the figure that picked its phases).
      image_points: the most one image moves that figure, in points.
    """

    format: str
    path: str
    size_bytes: int
    source: str
    accuracy: float
    agreement: float
    max_prob_diff: float
    mean_prob_diff: float
    drop_points: float
    passed: bool
    quantization: dict
    images: int = 0
    worse: int = 0
    better: int = 0
    p_value: float = 1.0
    balanced_accuracy: Optional[float] = None
    figure: str = "accuracy"
    image_points: float = 0.0

    @property
    def within_chance(self) -> bool:
        """Its drop is past the gate but could be chance on these few images."""
        return self.drop_points > 0 and self.p_value >= SIGNIFICANCE


# The export gate fails a file only when it loses more than --max-drop points AND that loss is
# beyond chance: McNemar's exact test on the images where the file and the float model
# disagree, one-sided, at SIGNIFICANCE (tledge.core.stats). On 27 validation images one image
# is 3.7 points: a 1-point gate alone failed files on one or two images. Where the run's classes
# are imbalanced the figure is balanced accuracy, as it was for picking the run's phases (an
# int8 file that loses a rare class loses little plain accuracy), and the test weighs each image
# as that figure does (paired_worse_p).


def paired_test_name(result: "FormatResult") -> str:
    """The paired test behind a file's p-value, as a user reads it."""
    return "McNemar" if result.figure == "accuracy" else "McNemar, images weighed by class"


def gate_note(result: "FormatResult", max_drop: float) -> Optional[str]:
    """The line that says a file passed only because its loss could be chance, or None."""
    if not (result.drop_points > max_drop and result.passed):
        return None
    points = result.image_points or 100 / max(1, result.images)
    one = (f"one image being {points:.1f} points" if result.figure == "accuracy"
           else f"one image of the rarest class being {points:.1f} points")
    return (f"model_{result.format}.tflite lost {result.drop_points:.2f} points of "
            f"{result.figure} (> {max_drop:g}) on {result.images} validation images, {one}: "
            f"{result.worse} worse, {result.better} better than the float model, which chance "
            f"gives as often as p = {result.p_value:.2f} ({paired_test_name(result)}): passed; "
            "more validation images (--val-split at training, or --eval-limit) would tell")


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
    """A converted file's scores against the float model's, on the same images.

    Args:
      reference: (N, classes) the float model's probabilities.
      probs: (N, classes) the file's.
      labels: (N,) true classes.

    Returns:
      {"accuracy", "balanced_accuracy" (mean per-class recall), "agreement" (top-1 equal to
      the float model's), "max_prob_diff", "mean_prob_diff"}.
    """
    diff = np.abs(probs - reference)
    return {
        "accuracy": float(np.mean(np.argmax(probs, 1) == labels)),
        "balanced_accuracy": balanced_accuracy(np.asarray(labels), np.argmax(probs, 1),
                                               probs.shape[1]),
        "agreement": float(np.mean(np.argmax(probs, 1) == np.argmax(reference, 1))),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
    }


def gate_advice(result: "FormatResult", debug: "LayerReport") -> str:
    """What to do about a file that failed the accuracy gate, by what made it.

    Args:
      result: the file's FormatResult.
      debug: the export's LayerReport (its worst layers, when computed).

    Returns:
      One sentence of fixes.
    """
    chance = (f"beyond chance on {result.images} images ({result.worse} worse, {result.better} "
              f"better, {paired_test_name(result)} p = {result.p_value:.3f}); ")
    if result.format == "int8":
        worst = f"worst layers: {debug.worst()} (see {debug.csv_name}); " \
            if debug.shown else ""
        return (chance + worst + "try --keep-float auto (or name layers), train QAT longer, or "
                "raise --max-drop")
    if result.format == "dynamic":
        return ("dynamic-range quantization has no calibration or training to adjust: use "
                "--fp16 (half the size, float accuracy) or --int8 (calibrated or QAT)")
    if result.format == "fp16":
        return ("float16 weights rarely cost accuracy: check the float model and the "
                "validation images (--eval-limit), or raise --max-drop")
    return "an fp32 file should match the float model: report this with the run's config.yaml"


class LayerReport:
    """The per-layer int8 report of a run, computed once when first needed."""

    def __init__(self, float_model, calibration, images, out: Path, echo,
                 bias_correction: bool = True):
        self.model, self.calibration, self.images = float_model, calibration, images
        self.bias_correction = bias_correction
        self.out, self.echo = out, echo
        self.errors = None
        self.shown = None  # the rows of the report written (and the gate's advice)
        self.source = None  # what that report analysed, in words
        self.csv_name = str(Path(out) / "quant_debug.csv")

    def compute(self):
        """The debugger's rows for a post-training conversion of the float model: what --keep-float
        picks from; computed once.

        Returns:
          quantdebug.LayerError rows, worst first.
        """
        if self.errors is None:
            self.echo(f"per-layer int8 errors on {len(self.images)} validation images "
                      "(QuantizationDebugger)")
            self.errors = quantdebug.layer_errors(self.model, self.calibration, self.images)
        return self.errors

    def report(self, shipped: Optional[tuple] = None) -> None:
        """Writes quant_debug.csv and .png and prints the worst layers.

        Args:
          shipped: None: analyse the post-training conversion of the float model; (the int8 file's
            bytes, the QAT Keras model it came from): analyse that file against the QAT model
            computing in float.
        """
        if shipped is None:
            self.shown = self.compute()
            self.source = ("a post-training int8 conversion of the float model, each op against "
                           "its float twin (QuantizationDebugger)")
        else:
            from tledge.quantize.graph_rewrite import strip_fake_quant

            int8_file, qat_model = shipped
            twin, _ = strip_fake_quant(convert(qat_model, QuantizationConfig.for_float32()))
            self.echo(f"per-layer int8 errors of model_int8.tflite on {len(self.images)} "
                      "validation images, against the QAT model in float")
            self.shown = quantdebug.file_errors(int8_file, twin, self.images)
            self.source = ("model_int8.tflite (from the QAT model), end to end against the QAT "
                           "model computing in float; rel_rmse is the error each op added")
        csv_path, png_path = quantdebug.write_report(self.shown, self.out, source=self.source)
        self.echo(f"worst int8 layers: {self.worst()}; report in {csv_path} and {png_path} "
                  f"(analysed: {self.source})")

    def worst(self, count: int = 3) -> str:
        """The names of the worst layers of the report (or of the debugger's rows).

        Args:
          count: how many.

        Returns:
          Their names, comma-separated.
        """
        return quantdebug.worst_names(self.shown or self.compute(), count)

    def keep_float(self, names) -> bytes:
        """Post-training int8 with the named layers' ops left float.

        Args:
          names: layer names as the report prints them.

        Returns:
          The int8 flatbuffer's bytes.
        """
        tensors = quantdebug.resolve(names, self.compute())
        self.echo(f"int8 with {', '.join(names)} kept float ({len(tensors)} op(s))")
        return quantdebug.convert_keep_float(self.model, self.calibration, tensors,
                                             self.bias_correction)


def keep_float_auto(debug: LayerReport, verifier: "Verifier", tmp, result, echo,
                    limit: int = 8):
    """Keeps the worst layers float, one more at a time, until the int8 file passes the gate.

    What that cost in size and latency goes into the result's quantization record.

    Args:
      debug: the export's LayerReport.
      verifier: the export's Verifier.
      tmp, result: the all-int8 file that failed, and its FormatResult.
      echo: prints a line.
      limit: layers kept float at most.

    Returns:
      (the last staged file, its FormatResult), passing or not.
    """
    plain_size, plain_ms = result.size_bytes, _latency_ms(tmp)
    kept: list[str] = []
    while not result.passed and len(kept) < limit:
        nxt = quantdebug.first_new(debug.compute(), kept)
        if nxt is None:
            break
        kept.append(nxt.layer)
        tmp, result = verifier.verify("int8", debug.keep_float(kept), "float", tuple(kept))
        echo(f"keep-float {', '.join(kept)}: accuracy drop {result.drop_points:+.2f} points"
             + (" (passes the gate)" if result.passed else ""))
    if kept:
        ms = _latency_ms(tmp)
        result.quantization["keep_float_cost"] = {
            "layers": kept, "size_bytes": result.size_bytes - plain_size,
            "latency_ms_1_thread": round(ms - plain_ms, 3), "latency_ms_all_int8": round(
                plain_ms, 3)}
        echo(f"keep-float auto: {len(kept)} layer(s) float, {result.size_bytes - plain_size:+,}"
             f" bytes, {ms - plain_ms:+.2f} ms per image at 1 thread ({plain_ms:.2f} ms all "
             "int8)")
    return tmp, result


def _latency_ms(path: Path, runs: int = 30) -> float:
    """Median invoke() time at one thread: what keeping layers float costs."""
    from tledge.runtime.timing import time_ms
    from tledge.runtime import Classifier

    clf = Classifier(path, threads=1)
    x = np.zeros((1, clf.height, clf.width, 3), clf.input_dtype)
    return float(np.median(time_ms(lambda: clf.invoke(x), runs)))


class Verifier:
    """Checks, labels, stages under a temporary name and verifies each file of one export.

    Args:
      reference: the float Keras model's probabilities on ``images``.
      images: the validation images (``tledge.data.ImageSet``), with their labels.
      labels: class labels, embedded in each file's metadata.
      description: the model's description in its metadata (the format is appended).
      out: the export folder, where the temporary files are staged.
      staged: an ExitStack that removes every staged file on failure or interruption.
      max_drop: the accuracy gate, in points below the float model.
      echo: prints a line for the user.
      balanced: the run's classes are imbalanced: the gate compares balanced accuracy.
    """

    def __init__(self, reference: np.ndarray, images, labels: list, description: str,
                 out: Path, staged: contextlib.ExitStack, max_drop: float,
                 echo: Callable[[str], None], balanced: bool = False):
        self.reference, self.images, self.labels = reference, images, labels
        self.description, self.out, self.staged = description, out, staged
        self.max_drop, self.echo, self.balanced = max_drop, echo, balanced
        self.float_acc = float(np.mean(np.argmax(reference, 1) == images.y))
        self.float_balanced = balanced_accuracy(np.asarray(images.y), np.argmax(reference, 1),
                                                len(labels))
        self.figure = "balanced accuracy" if balanced else "accuracy"
        self.float_score = self.float_balanced if balanced else self.float_acc
        seen = np.bincount(np.asarray(images.y), minlength=len(labels))
        self.image_points = 100.0 / (np.count_nonzero(seen) * seen[seen > 0].min()) \
            if balanced and seen.any() else 100.0 / max(1, len(images.y))
        self.count = 0

    def float_line(self) -> str:
        """What the files are verified against: the float model's scores, and what one image
        is worth where the validation split is small."""
        n = len(self.images.y)
        return (f"float Keras model: accuracy {self.float_acc:.4f}, balanced accuracy "
                f"{self.float_balanced:.4f} on {n} validation images"
                + (" (the classes are imbalanced: the gate compares balanced accuracy, as "
                   "training picked its phases by it)" if self.balanced else "")
                + (f" (few: one image is {self.image_points:.1f} points"
                   + (" in the rarest class" if self.balanced else "") + "; the gate fails a "
                   "file only when its loss is also beyond chance)" if n < 200 else ""))

    def verify(self, fmt: str, raw: bytes, source: str, keep=()) -> tuple:
        """Checks, labels, stages and verifies one converted file.

        Args:
          fmt: fp32, fp16, dynamic or int8.
          raw: the converter's bytes.
          source: the Keras model converted: float or qat.
          keep: layers left float (--keep-float), recorded in the result.

        Returns:
          (the staged temporary file, its FormatResult).

        Raises:
          TledgeError: the file does not hold the tensor types its format promises, or cannot
            be run.
        """
        from tledge.runtime import Classifier

        quant = check_quantized(raw, fmt, keep_float=bool(keep))
        blob = with_metadata(raw, metadata_bytes(self.labels, f"tledge {fmt}",
                                                 f"{self.description}; {fmt}", fmt), self.labels)
        tmp = self.out / f".model_{fmt}.tflite.{os.getpid()}.{self.count}.verifying"
        self.count += 1
        self.staged.callback(tmp.unlink, missing_ok=True)  # removed on failure or interruption
        fileio.write_bytes(tmp, blob)
        clf = Classifier(tmp)
        probs = clf.predict_batch(self.images.x,
                                  desc=f"{fmt} TFLite" + (" (keep-float)" if keep else ""))
        stats = compare(self.reference, probs, self.images.y)
        score = stats["balanced_accuracy"] if self.balanced else stats["accuracy"]
        drop = 100.0 * (self.float_score - score)
        float_right = np.argmax(self.reference, 1) == self.images.y
        file_right = np.argmax(probs, 1) == self.images.y
        worse = int(np.sum(float_right & ~file_right))
        better = int(np.sum(~float_right & file_right))
        p_value = paired_worse_p(float_right, file_right, self.images.y, self.balanced)
        delegated = delegation(clf.interpreter)
        quant.update(input_quantization=list(clf.input_quant),
                     output_quantization=list(clf.output_quant),
                     min_runtime_version=min_runtime_version(tmp),
                     delegation=delegated.to_dict() if delegated else None)
        if delegated is not None and delegated.partitions > 1:
            self.echo(f"WARNING: model_{fmt}.tflite is not fully delegated to XNNPACK here "
                      f"({delegated.summary()}): each op type named runs on the slower "
                      "reference kernels and splits the graph")
        if keep:
            quant["keep_float"] = list(keep)
        return tmp, FormatResult(fmt, "", len(blob), source, drop_points=drop,
                                 passed=drop <= self.max_drop or p_value >= SIGNIFICANCE,
                                 quantization=quant, images=len(self.images.y), worse=worse,
                                 better=better, p_value=p_value, figure=self.figure,
                                 image_points=self.image_points, **stats)


def publish(files: list, stale: list, echo: Callable[[str], None]) -> None:
    """Renames verified files into place and removes what they replace.

    Each final name's other form goes (a file that passes replaces an earlier REJECTED one and
    the other way round), then ``stale`` model files of an earlier export.

    Args:
      files: (verified temporary file, final name) pairs.
      stale: model files of an earlier export that the new report would not describe.
      echo: prints a line per removed file.
    """
    for tmp, final in files:
        os.replace(tmp, final)  # written and fsynced by fileio.write_bytes
        if final.name.endswith(".REJECTED.tflite"):
            final.with_name(final.name.replace(".REJECTED", "")).unlink(missing_ok=True)
        else:
            final.with_name(final.stem + ".REJECTED.tflite").unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)
        echo(f"removed {path.name}: an earlier export's, which this report would not describe")
