"""TFLite conversion (fp32, fp16, dynamic, int8), metadata, and verification against the float
model with an accuracy gate.

Conversion returns bytes; writing is a separate, atomic step. Every file is evaluated on the
run's validation split beside the float Keras model before it is accepted; a quantized file that
loses more than ``max_drop`` points is kept as ``model_<format>.REJECTED.tflite`` and the export
fails, so a collapsed int8 model never passes for a good one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge import fileio, rundir
from tledge.config import ExportOptions, RunConfig
from tledge.conversion import QuantizationConfig, convert, make_converter  # noqa: F401
from tledge.errors import TledgeError, first_line
from tledge.runtime import min_runtime_version
from tledge.runtime.delegation import delegation
from tledge.runtime.metadata import METADATA_NAME

log = logging.getLogger(__name__)

REPORT = "export_report.json"
CARD = "model_card.json"


def check_quantized(model_bytes: bytes, fmt: str, keep_float: bool = False) -> dict:
    """Catch the converter pitfall of a model silently left float (or half-quantized): each
    format must hold the tensor types it promises. Returns the counts of tensors (weights and
    activations) per dtype and the I/O dtypes; raises otherwise."""
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


def metadata_bytes(labels: list[str], model_name: str, description: str, fmt: str,
                   normalization: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """TFLite metadata (schema M001) for an image classifier: RGB input, ``(pixel - mean) /
    std`` with ``normalization`` = (mean, std) (tledge's models normalise themselves: mean 0
    and std 1, raw pixels), probabilities out, labels as the output tensor's associated
    TENSOR_AXIS_LABELS file."""
    import flatbuffers

    from tledge._vendor import metadata_schema_py_generated as m

    mean, std = normalization
    image = m.TensorMetadataT()
    image.name = "image"
    image.description = (
        "RGB image, raw pixels 0..255, stretched to the model's input size; normalisation "
        "happens inside the model" if (mean, std) == (0.0, 1.0) else
        f"RGB image stretched to the model's input size, each pixel as (pixel - {mean:g}) / "
        f"{std:g}")
    image.content = m.ContentT()
    image.content.contentPropertiesType = m.ContentProperties.ImageProperties
    image.content.contentProperties = m.ImagePropertiesT()
    image.content.contentProperties.colorSpace = m.ColorSpaceType.RGB
    norm = m.ProcessUnitT()
    norm.optionsType = m.ProcessUnitOptions.NormalizationOptions
    norm.options = m.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [float(mean)], [float(std)]
    image.processUnits = [norm]
    image.stats = m.StatsT()
    image.stats.min, image.stats.max = [(0.0 - mean) / std], [(255.0 - mean) / std]

    probs = m.TensorMetadataT()
    probs.name = "probability"
    probs.description = "Probability of each class" + (
        " (uint8: probability = q / 256)" if fmt == "int8" else "")
    probs.content = m.ContentT()
    probs.content.contentPropertiesType = m.ContentProperties.FeatureProperties
    probs.content.contentProperties = m.FeaturePropertiesT()
    probs.stats = m.StatsT()
    # a uint8 output's statistics are its integer range, as the official metadata writer
    # writes them; a float output's are the probabilities' range
    probs.stats.min, probs.stats.max = ([0.0], [255.0]) if fmt == "int8" else ([0.0], [1.0])
    label_file = m.AssociatedFileT()
    label_file.name = "labels.txt"
    label_file.description = "Labels for the classes the model recognises, one per line."
    label_file.type = m.AssociatedFileType.TENSOR_AXIS_LABELS
    probs.associatedFiles = [label_file]

    subgraph = m.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [probs]
    meta = m.ModelMetadataT()
    meta.name = model_name
    meta.description = description
    meta.author = "tledge"
    meta.subgraphMetadata = [subgraph]
    meta.minParserVersion = "1.0.0"
    builder = flatbuffers.Builder(0)
    builder.Finish(meta.Pack(builder), b"M001")
    return bytes(builder.Output())


def with_metadata(model_bytes: bytes, metadata: bytes, labels: list[str]) -> bytes:
    """Embed metadata in the model's flatbuffer (a TFLITE_METADATA buffer) and append the label
    file as a zip archive, as the TFLite metadata populator does."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or [])
                      if m.name not in (METADATA_NAME, METADATA_NAME.decode())] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), b"TFL3")
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("labels.txt", "".join(f"{label}\n" for label in labels))
    return out.getvalue()


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
      drop_points: float accuracy minus this accuracy, in percentage points.
      passed: within the accuracy gate.
      quantization: input/output dtypes and quantization parameters, tensor dtype counts.
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


def _eval_images(config: RunConfig, options: ExportOptions, splits=None):
    from tledge import data as data_mod

    if splits is None:  # the run's own data and split, from its config.yaml
        splits = data_mod.load(config.data, config.train.seed)
    val = splits.val
    if options.eval_limit is not None and options.eval_limit < len(val):
        idx = np.random.default_rng(0).permutation(len(val))[:options.eval_limit]
        val = data_mod.ImageSet(val.x[np.sort(idx)], val.y[np.sort(idx)])
    return splits, val


def compare(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict:
    diff = np.abs(probs - reference)
    return {
        "accuracy": float(np.mean(np.argmax(probs, 1) == labels)),
        "agreement": float(np.mean(np.argmax(probs, 1) == np.argmax(reference, 1))),
        "max_prob_diff": float(diff.max()),
        "mean_prob_diff": float(diff.mean()),
    }


def export(run_dir: Path, options: ExportOptions, out: Optional[Path] = None,
           overwrite: bool = False, echo: Callable[[str], None] = print, splits=None) -> dict:
    """Convert a run's models to every format asked, verify each, write files, card, report.
    Raises TledgeError (after writing everything) when a file fails the accuracy gate.

    Every file is verified under a temporary name and published under its final name only when
    all formats are done, together with the labels, report and model card that describe it: an
    export killed during verification leaves the old files (or none), never an unverified one.

    ``splits`` (tledge.data.Splits) replaces the run's own data: calibration comes from its
    train split, verification from its val split."""
    run_dir = rundir.require_run(Path(run_dir))
    out = Path(out) if out else run_dir / "export"
    fileio.check_output_dir(out, "--out")
    targets = {fmt: out / f"model_{fmt}.tflite" for fmt in options.formats}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise TledgeError(f"{existing[0]} already exists: pass --overwrite to replace it, or "
                          "--out another folder")
    # The card and report describe every model file in the folder: files of formats this
    # export does not make (an earlier export's) go, with --overwrite, when the new ones land.
    ours = {f"model_{fmt}{tag}.tflite" for fmt in options.formats for tag in ("", ".REJECTED")}
    stale = sorted(p for p in out.glob("model_*.tflite") if p.name not in ours)
    if stale and not overwrite:
        raise TledgeError(
            f"{out} holds {', '.join(p.name for p in stale)} from an earlier export, which this "
            "one would not describe: pass --overwrite to replace the folder's model files, ask "
            "for that format too, or --out another folder")
    # The run folder is read, the export folder written: neither may change under us. A run
    # folder we cannot write to (a read-only copy) cannot be written by train either here: it
    # is only checked for a live writer, not locked.
    if os.access(run_dir, os.W_OK):
        hold_run = rundir.lock(run_dir, rundir.command_line())
    else:
        rundir.prepare_read(run_dir)
        hold_run = contextlib.nullcontext(run_dir)
    with hold_run, rundir.lock(out, rundir.command_line()), contextlib.ExitStack() as staged:
        return _export(run_dir, options, out, targets, echo, splits, staged, stale)


def load_run_model(run: Path, qat: bool = False):
    """(labels, Keras model) of a run folder, its float model or its QAT model; each failure
    one line naming the file: a missing or truncated model, a missing labels.txt (fileio.
    read_labels), labels that do not match the model's outputs."""
    labels_path = run / rundir.LABELS
    labels = fileio.read_labels(labels_path)
    model = load_keras_file(run / (rundir.QAT_MODEL if qat else rundir.FLOAT_MODEL), qat=qat)
    if int(model.output_shape[-1]) != len(labels):
        raise TledgeError(f"{labels_path} names {len(labels)} classes but the model has "
                          f"{model.output_shape[-1]} outputs: restore the run's own labels.txt")
    return labels, model


def load_keras_file(path: Path, qat: bool = False):
    """A run's Keras model; a truncated or corrupt file is one line naming it."""
    if not Path(path).is_file():
        raise TledgeError(f"{path} is missing: train the run again")
    try:
        if qat:
            from tledge.qat import load_qat_model
            return load_qat_model(path)
        import tf_keras as keras
        return keras.models.load_model(path, compile=False)
    except TledgeError:
        raise
    except Exception as e:  # zipfile/h5py/Keras each raise their own kinds for a bad file
        raise TledgeError(f"{path} cannot be loaded ({first_line(e)[:120]}): the file is "
                          "truncated or corrupt; train the run again (or with --init-from "
                          "another run)") from e


def _export(run_dir, options, out, targets, echo, splits, staged, stale=()) -> dict:
    from tledge.runtime import Classifier, in_batches

    qat_path = run_dir / rundir.QAT_MODEL
    use_qat = "int8" in options.formats and qat_path.is_file() and not options.ptq
    config = RunConfig.from_yaml(run_dir / rundir.CONFIG)
    labels, float_model = load_run_model(run_dir)
    echo(f"loading the data of {run_dir} for calibration and verification")
    splits, val = _eval_images(config, options, splits)
    reference = in_batches(lambda x: float_model.predict_on_batch(x.astype(np.float32)),
                           val.x, 64, "float Keras model")
    float_acc = float(np.mean(np.argmax(reference, 1) == val.y))
    echo(f"float Keras model: accuracy {float_acc:.4f} on {len(val)} validation images")

    results: list[FormatResult] = []
    publish: list[tuple[Path, Path]] = []  # (verified temporary file, final name)
    calib = splits.train.x[:options.calibration]
    debug = _Debug(float_model, calib, val.x[:256], out, echo, options.bias_correction)

    def make(fmt, raw, source, keep=()):
        """Check, label, stage under a temporary name and verify one file."""
        quant = check_quantized(raw, fmt, keep_float=bool(keep))
        description = (f"{config.model.backbone} classifier of {len(labels)} classes trained by "
                       f"tledge on {config.data.source}; {fmt}")
        blob = with_metadata(raw, metadata_bytes(labels, f"tledge {fmt}", description, fmt), labels)
        tmp = out / f".model_{fmt}.tflite.{os.getpid()}.{len(results)}.verifying"
        staged.callback(tmp.unlink, missing_ok=True)  # removed on any failure or interruption
        fileio.write_bytes(tmp, blob)
        clf = Classifier(tmp)
        probs = clf.predict_batch(val.x, desc=f"{fmt} TFLite" + (" (keep-float)" if keep else ""))
        stats = compare(reference, probs, val.y)
        drop = 100.0 * (float_acc - stats["accuracy"])
        delegated = delegation(clf.interpreter)
        quant.update(input_quantization=list(clf.input_quant),
                     output_quantization=list(clf.output_quant),
                     min_runtime_version=min_runtime_version(tmp),
                     delegation=delegated.to_dict() if delegated else None)
        if delegated is not None and delegated.partitions > 1:
            echo(f"WARNING: model_{fmt}.tflite is not fully delegated to XNNPACK here "
                 f"({delegated.summary()}): each op type named runs on the slower reference "
                 "kernels and splits the graph")
        if keep:
            quant["keep_float"] = list(keep)
        return tmp, FormatResult(fmt, "", len(blob), source, drop_points=drop,
                                 passed=drop <= options.max_drop, quantization=quant, **stats)

    for fmt in options.formats:
        if fmt == "int8":
            from_qat = use_qat and not options.keep_float
            if use_qat and options.keep_float:
                echo("--keep-float: the int8 file is quantized after training from the float "
                     "model (a QAT model's quantization cannot leave chosen layers float)")
            qconfig = QuantizationConfig.for_int8(calib, from_qat=from_qat,
                                                  bias_correction=options.bias_correction)
            model = load_keras_file(qat_path, qat=True) if from_qat else float_model
        else:
            qconfig = {"fp32": QuantizationConfig.for_float32,
                       "fp16": QuantizationConfig.for_float16,
                       "dynamic": QuantizationConfig.for_dynamic}[fmt]()
            model = float_model
        echo(f"converting {fmt} from the {qconfig.source} model"
             + (f" ({len(calib)} calibration images" + (", bias correction" if
                qconfig.bias_correction else "") + ")" if qconfig.full_integer else ""))
        keep = [k for k in options.keep_float if k != "auto"] if fmt == "int8" else []
        if keep:
            raw = debug.keep_float(keep)
        else:
            raw = convert(model, qconfig)
        tmp, result = make(fmt, raw, qconfig.source, keep)
        if fmt == "int8" and options.keep_float == ("auto",) and not result.passed:
            tmp, result = _keep_float_auto(debug, make, tmp, result, echo)
        if fmt == "int8" and (options.debug or not result.passed):
            if qconfig.source == "qat":  # the file that ships, against the QAT model in float
                debug.report(shipped=(tmp.read_bytes(), model))
            else:
                debug.report()
        final = targets[fmt] if result.passed else \
            targets[fmt].with_name(f"model_{fmt}.REJECTED.tflite")
        result.path = str(final)
        publish.append((tmp, final))
        results.append(result)

    report = {
        "run": str(run_dir),
        "evaluation": {"split": "validation", "images": len(val)},
        "float_keras": {"accuracy": float_acc},
        "max_drop_points": options.max_drop,
        "formats": [r.__dict__ for r in results],
    }
    if debug.shown is not None:  # the per-layer int8 report: what it analysed
        report["int8_layer_report"] = {"csv": "quant_debug.csv", "png": "quant_debug.png",
                                       "analysed": debug.source}
    card = model_card(run_dir, config, labels, results, float_acc, len(val))
    # Publish: the files, then what describes them, in one quick run of renames.
    for tmp, final in publish:
        os.replace(tmp, final)  # written and fsynced by fileio.write_bytes
        if final.name.endswith(".REJECTED.tflite"):
            final.with_name(final.name.replace(".REJECTED", "")).unlink(missing_ok=True)
        else:
            final.with_name(final.stem + ".REJECTED.tflite").unlink(missing_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)
        echo(f"removed {path.name}: an earlier export's, which this report would not describe")
    fileio.write_labels(out / "labels.txt", labels)
    fileio.write_json(out / REPORT, report)
    fileio.write_json(out / CARD, card)
    echo(format_table(float_acc, results))
    failed = [r for r in results if not r.passed]
    if failed:
        raise TledgeError("accuracy gate failed: " + "; ".join(
            f"{r.format} lost {r.drop_points:.2f} points (> {options.max_drop}), kept as "
            f"{Path(r.path).name}; {gate_advice(r, debug)}" for r in failed))
    return report


def gate_advice(result: "FormatResult", debug: "_Debug") -> str:
    """What to do about a file that failed the gate, by what made it."""
    if result.format == "int8":
        worst = f"worst layers: {debug.worst()} (see {debug.csv_name}); " \
            if debug.shown else ""
        return (worst + "try --keep-float auto (or name layers), calibrate on more images "
                "(--calibration), train QAT longer, or raise --max-drop")
    if result.format == "dynamic":
        return ("dynamic-range quantization has no calibration or training to adjust: use "
                "--fp16 (half the size, float accuracy) or --int8 (calibrated or QAT)")
    if result.format == "fp16":
        return ("float16 weights rarely cost accuracy: check the float model and the "
                "validation images (--eval-limit), or raise --max-drop")
    return "an fp32 file should match the float model: report this with the run's config.yaml"


class _Debug:
    """The per-layer int8 report of a run, computed once when first needed."""

    csv_name = "export/quant_debug.csv"

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
        """The debugger's rows for a post-training conversion of the float model: what
        --keep-float picks from."""
        if self.errors is None:
            from tledge import quantdebug

            self.echo(f"per-layer int8 errors on {len(self.images)} validation images "
                      "(QuantizationDebugger)")
            self.errors = quantdebug.layer_errors(self.model, self.calibration, self.images)
        return self.errors

    def report(self, shipped: Optional[tuple] = None) -> None:
        """Write quant_debug.csv/.png: of the post-training conversion of the float model, or,
        with ``shipped`` = (the int8 file's bytes, the QAT Keras model it came from), of that
        file against the QAT model computing in float."""
        from tledge import quantdebug

        if shipped is None:
            self.shown = self.compute()
            self.source = ("a post-training int8 conversion of the float model, each op against "
                           "its float twin (QuantizationDebugger)")
        else:
            from tledge.graph_rewrite import strip_fake_quant

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
        from tledge import quantdebug

        return quantdebug.worst_names(self.shown or self.compute(), count)

    def keep_float(self, names) -> bytes:
        from tledge import quantdebug

        tensors = quantdebug.resolve(names, self.compute())
        self.echo(f"int8 with {', '.join(names)} kept float ({len(tensors)} op(s))")
        return quantdebug.convert_keep_float(self.model, self.calibration, tensors,
                                             self.bias_correction)


def _keep_float_auto(debug: _Debug, make, tmp, result, echo, limit: int = 8):
    """Keep the worst layers float, one more at a time, until the int8 file passes the gate;
    report what that cost in size and latency."""
    from tledge import quantdebug

    plain_size, plain_ms = result.size_bytes, _latency_ms(tmp)
    kept: list[str] = []
    while not result.passed and len(kept) < limit:
        nxt = quantdebug.first_new(debug.compute(), kept)
        if nxt is None:
            break
        kept.append(nxt.layer)
        tmp, result = make("int8", debug.keep_float(kept), "float", tuple(kept))
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


def model_card(run_dir: Path, config: RunConfig, labels: list[str], results: list[FormatResult],
               float_acc: float, n_eval: int) -> dict:
    size = config.data.image_size
    return {
        "task": "image classification",
        "labels": labels,
        "source_run": str(run_dir),
        "config": config.to_dict(),
        "input": {
            "shape": [1, size, size, 3], "color": "RGB",
            "preprocessing": ("decode to RGB, stretch to the input size with a bilinear filter "
                              "(tledge.runtime.preprocess.resize_rgb), no normalisation: the "
                              "model normalises raw 0..255 pixels itself"),
        },
        "output": {"shape": [1, len(labels)], "meaning": "class probabilities (softmax)"},
        "float_keras_accuracy": float_acc,
        "evaluated_on": f"{n_eval} validation images of {config.data.source}",
        "files": {
            Path(r.path).name: {
                "format": r.format, "size_bytes": r.size_bytes, "converted_from": r.source,
                "input_dtype": r.quantization["input_dtype"],
                "output_dtype": r.quantization["output_dtype"],
                "input_quantization": r.quantization.get("input_quantization"),
                "output_quantization": r.quantization.get("output_quantization"),
                "accuracy": r.accuracy, "agreement_with_float": r.agreement,
                "max_prob_diff": r.max_prob_diff, "passed_gate": r.passed,
                "min_runtime_version": r.quantization.get("min_runtime_version"),
                "keep_float": r.quantization.get("keep_float", []),
                "keep_float_cost": r.quantization.get("keep_float_cost"),
                "delegation": r.quantization.get("delegation"),
            } for r in results
        },
    }


def format_table(float_acc: float, results: list[FormatResult]) -> str:
    rows = [f"{'format':<8} {'source':<6} {'size':>9} {'accuracy':>9} {'drop':>7} "
            f"{'agree':>7} {'max|dp|':>8}  gate",
            f"{'keras':<8} {'float':<6} {'':>9} {float_acc:>9.4f} {'':>7} {'':>7} {'':>8}"]
    for r in results:
        rows.append(f"{r.format:<8} {r.source:<6} {r.size_bytes / 1e6:>8.2f}M {r.accuracy:>9.4f} "
                    f"{r.drop_points:>+7.2f} {r.agreement:>7.4f} {r.max_prob_diff:>8.4f}  "
                    f"{'ok' if r.passed else 'FAILED'}")
    return "\n".join(rows)
