"""Where int8 loses accuracy: a per-layer quantization report, and int8 files that keep chosen
layers in float.

``layer_errors`` runs TensorFlow's ``tf.lite.experimental.QuantizationDebugger`` on the
post-training int8 conversion of a float model: each quantized op runs beside its float twin on
the same (quantized) input, over the validation images, and for each op's output tensor we keep

- ``rmse/scale`` and ``max_abs/scale``: the error in steps of the tensor's quantization scale.
  Plain rounding gives about 0.29 (1/sqrt(12)) and at most 0.5; more means values were clipped
  (the calibration images did not cover the range the validation images reach);
- ``rel_rmse``: the error relative to the float signal's own spread (RMSE / std of the float
  values). This is what the ranking uses: a range blown up by one outlier rounds most values to
  zero yet keeps ``rmse/scale`` small, and only the relative error shows it;
- the float values' range and the fraction of them outside the int8 range (clipped).

``file_errors`` analyses an int8 *file* instead, the one that ships, where the debugger cannot
(a QAT model's ops are quantized by its own fake-quant ranges, so the debugger has no float twin
for them): the file and the float model's fp32 conversion run end to end on the same images,
every intermediate tensor kept, and each op output of the int8 file is compared with the float
tensor of the same layer. Errors then accumulate along the graph, so a row's ``rel_rmse`` is the
error that op *added* (its output's end-to-end relative error minus the largest of its inputs'),
and ``end_to_end`` the accumulated one; against the float model they include what QAT changed
in the weights.

``convert_keep_float`` makes a full-integer file (uint8 in, uint8 out) in which the named ops stay
float (the converter's ``denylisted_nodes``), with quantize/dequantize around them.
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from tledge.core import fileio
from tledge.quantize.conversion import (QuantizationConfig, convert, make_converter,
                               representative_dataset)
from tledge.core.errors import TledgeError, first_line

CSV_NAME = "quant_debug.csv"
PNG_NAME = "quant_debug.png"


@dataclass(frozen=True)
class LayerError:
    """One quantized op's output against float.

    Attributes:
      layer: a short name (the Keras layer's), what --keep-float takes.
      op: the TFLite op (CONV_2D, ADD, ...).
      tensor: the converter's full name of the op's output tensor (also taken by --keep-float).
      rel_rmse: RMSE / std of the float values (the ranking).
      rmse_scaled: RMSE in units of the quantization scale (~0.29 is rounding alone).
      max_scaled: largest absolute error, in units of the scale.
      clipped: fraction of float values outside the tensor's int8 range.
      float_min, float_max: the range of the float values.
      scale, zero_point: the tensor's quantization.
      reliable: the float reference is finite and within 100x the tensor's int8 range. The
        debugger's float twin of an op sometimes reads garbage (2.3e34 out of a ReLU6 was
        seen); such a row is flagged and ranked last, never named as the worst layer.
      end_to_end: (file_errors only) the output's relative error with every op before it
        quantized too; rel_rmse is then what this op added. NaN for the debugger's rows.
    """

    layer: str
    op: str
    tensor: str
    rel_rmse: float
    rmse_scaled: float
    max_scaled: float
    clipped: float
    float_min: float
    float_max: float
    scale: float
    zero_point: int
    reliable: bool = True
    end_to_end: float = float("nan")


def short_name(tensor: str) -> str:
    """"model/block_1_conv/BiasAdd;model/block_1_conv/Conv2D" -> "block_1_conv"."""
    first = tensor.split(";")[0]
    parts = [p for p in first.split("/") if p]
    name = parts[1] if len(parts) > 2 and parts[0] in ("model", "sequential") else \
        (parts[-2] if len(parts) > 1 else first)
    return name[len("quant_"):] if name.startswith("quant_") else name


def _direct_metrics():
    def flat(values: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([np.ravel(v) for v in values]).astype(np.float64)

    def errors(f, q, scale, zero_point):
        f, q = flat(f), flat(q)
        return f, scale * (q - zero_point)  # dequantized: scale * (q - zero_point)

    def rel_rmse(f, q, scale, zero_point):
        f, d = errors(f, q, scale, zero_point)
        return float(np.sqrt(np.mean((d - f) ** 2)) / (np.std(f) + 1e-12))

    def rmse_scaled(f, q, scale, zero_point):
        f, d = errors(f, q, scale, zero_point)
        return float(np.sqrt(np.mean((d - f) ** 2)) / scale)

    def max_scaled(f, q, scale, zero_point):
        f, d = errors(f, q, scale, zero_point)
        return float(np.max(np.abs(d - f)) / scale)

    def clipped(f, q, scale, zero_point):
        f = flat(f)
        low, high = scale * (-128 - zero_point), scale * (127 - zero_point)
        return float(np.mean((f < low - scale / 2) | (f > high + scale / 2)))

    def float_min(f, q, scale, zero_point):
        return float(flat(f).min())

    def float_max(f, q, scale, zero_point):
        return float(flat(f).max())

    return {"rel_rmse": rel_rmse, "rmse_scaled": rmse_scaled, "max_scaled": max_scaled,
            "clipped": clipped, "float_min": float_min, "float_max": float_max}


def _int8_converter(model, calibration: np.ndarray):
    return make_converter(model, QuantizationConfig.for_int8(calibration))


def layer_errors(model, calibration: np.ndarray, images: np.ndarray) -> list[LayerError]:
    """Per-op errors of the post-training int8 conversion of ``model``, worst first."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={}, layer_direct_compare_metrics=_direct_metrics())
    try:
        with warnings.catch_warnings():
            # The debugger runs tf.lite.Interpreter (deprecated for LiteRT: it warns) and the
            # converter warns of "input statistics" our uint8 input does not need.
            warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter")
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=_int8_converter(model, calibration),
                debug_dataset=representative_dataset(images), debug_options=options)
            debugger.run()
    except Exception as e:  # the debugger's errors are long MLIR dumps
        raise TledgeError(f"the int8 quantization debugger failed ({first_line(e)[:200]})"
                          ) from e
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    rows = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        rows.append(LayerError(
            layer=short_name(row["tensor_name"]), op=row["op_name"], tensor=row["tensor_name"],
            rel_rmse=float(row["rel_rmse"]), rmse_scaled=float(row["rmse_scaled"]),
            max_scaled=float(row["max_scaled"]), clipped=float(row["clipped"]),
            float_min=float(row["float_min"]), float_max=float(row["float_max"]),
            scale=float(row["scale"]), zero_point=int(float(row["zero_point"])),
            reliable=_reliable(row)))
    return sorted(rows, key=lambda r: (not r.reliable, -r.rel_rmse))


def _layer_key(tensor: str) -> str:
    """A converted tensor's name as the layer path it came from, the same for a QAT model's
    file ("model/quant_block_1_expand_relu/Relu6;...") and the float model's
    ("model/block_1_expand_relu/Relu6;...")."""
    first = tensor.split(";")[0]
    return "/".join(p[len("quant_"):] if p.startswith("quant_") else p for p in first.split("/"))


def _all_tensors(model: bytes, images: np.ndarray) -> tuple[list, dict, dict]:
    """(the op details, {tensor index: values stacked over ``images``} of every op output,
    {tensor index: tensor details}) of the model run one image at a time."""
    from tledge.runtime import all_tensors_interpreter, quantize

    interpreter = all_tensors_interpreter(model)
    # the ops as the model has them (a DELEGATE node repeats the outputs of the ops it took)
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    inp = interpreter.get_input_details()[0]
    outputs = [o for op in ops for o in op["outputs"] if o >= 0]
    values: dict = {o: [] for o in outputs}
    for image in images:  # raw pixels, as tledge's files take them (uint8 as they are)
        x = image[None]
        if inp["dtype"] == np.float32:
            x = x.astype(np.float32)
        elif inp["dtype"] == np.int8:
            x = quantize(x.astype(np.float32), *inp["quantization"], np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        for o in outputs:
            values[o].append(interpreter.get_tensor(o).copy())
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return ops, {o: np.stack(v) for o, v in values.items()}, details


def file_errors(int8_file: bytes, float_file: bytes, images: np.ndarray) -> list[LayerError]:
    """Per-op errors of an int8 .tflite (``int8_file``) against a float .tflite of the same
    network (``float_file``), both run end to end on ``images`` (uint8 pixels at the model's
    size); worst added error first (module docstring). Ops of the int8 file with no float twin
    of the same layer (a QAT model's own input quantizer) and requantizing QUANTIZE ops are
    left out."""
    q_ops, q_values, q_details = _all_tensors(int8_file, images)
    f_ops, f_values, f_details = _all_tensors(float_file, images)
    f_by_key = {}
    for op in f_ops:
        for o in op["outputs"]:
            f_by_key.setdefault(_layer_key(f_details[o]["name"]), o)
    metrics = _direct_metrics()  # the debugger's formulas, on whole tensors here
    end_to_end: dict = {}  # each int8 tensor's relative error so far (carried through ops
    rows = []              # that have no twin, such as QUANTIZE)
    for op in q_ops:
        before = max((end_to_end.get(int(i), 0.0) for i in op["inputs"] if i >= 0), default=0.0)
        for o in op["outputs"]:
            end_to_end[o] = before
            detail = q_details.get(o)
            twin = f_by_key.get(_layer_key(detail["name"])) if detail else None
            if twin is None or detail["dtype"] not in (np.int8, np.uint8) \
                    or op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
                continue  # requantizing is no layer: its error is its input's
            scale, zero_point = detail["quantization"]
            f, q = f_values[twin], q_values[o].astype(np.int32)
            if not scale or f.shape != q.shape:
                continue
            if detail["dtype"] == np.uint8:  # as int8: the same real values, the same range
                q, zero_point = q - 128, zero_point - 128
            row = {name: metric([f], [q], scale, zero_point)
                   for name, metric in metrics.items()}
            row["scale"] = float(scale)
            end_to_end[o] = row["rel_rmse"]
            rows.append(LayerError(
                layer=short_name(detail["name"]), op=op["op_name"], tensor=detail["name"],
                rel_rmse=max(row["rel_rmse"] - before, 0.0), rmse_scaled=row["rmse_scaled"],
                max_scaled=row["max_scaled"], clipped=row["clipped"],
                float_min=row["float_min"], float_max=row["float_max"], scale=float(scale),
                zero_point=int(detail["quantization"][1]), reliable=_reliable(row),
                end_to_end=row["rel_rmse"]))
    return sorted(rows, key=lambda r: (not r.reliable, -r.rel_rmse))


def _reliable(row: dict) -> bool:
    """Whether a debugger row's float reference can be believed (LayerError.reliable)."""
    try:
        values = [float(row[k]) for k in ("float_min", "float_max", "rel_rmse", "scale")]
    except (KeyError, ValueError):
        return False
    if not all(np.isfinite(values)):
        return False
    reach = 100 * abs(values[3]) * 256
    return max(abs(values[0]), abs(values[1])) <= reach


def write_report(errors: list[LayerError], out: Path, worst: int = 15,
                 source: str = "") -> tuple[Path, Path]:
    """``quant_debug.csv`` (every op, worst first) and a PNG chart of the worst ones, whose
    title names ``source``, what was analysed."""
    buf = io.StringIO()
    fields = list(asdict(errors[0]).keys()) if errors else ["layer"]
    writer = csv.DictWriter(buf, fields)
    writer.writeheader()
    for e in errors:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in asdict(e).items()})
    csv_path = fileio.write_text(Path(out) / CSV_NAME, buf.getvalue())
    png_path = Path(out) / PNG_NAME
    _plot(errors[:worst], png_path, source)
    return csv_path, png_path


def _plot(errors: list[LayerError], path: Path, source: str = "") -> None:
    plt = fileio.pyplot()

    labels = [f"{e.layer} ({e.op})" for e in errors][::-1]
    values = [e.rel_rmse for e in errors][::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * max(len(errors), 1)), layout="constrained")
    colours = ["#c0392b" if e.clipped > 0.001 else "#2e86c1" for e in errors][::-1]
    ax.barh(range(len(values)), values, color=colours)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    ax.set_xlabel("int8 error / float signal std (relative RMSE); red: values clipped")
    import textwrap

    lines = ["where int8 loses: the worst layers"]
    lines += textwrap.wrap(f"analysed: {source}", 75) if source else []
    ax.set_title("\n".join(lines), fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fileio.save_png(fig, path)


def resolve(names: Iterable[str], errors: list[LayerError]) -> list[str]:
    """--keep-float names (short layer names or full tensor names) -> the tensors to denylist."""
    by_layer: dict[str, list[str]] = {}
    for e in errors:
        by_layer.setdefault(e.layer, []).append(e.tensor)
    tensors = {e.tensor for e in errors}
    out: list[str] = []
    for name in names:
        if name in tensors:
            out.append(name)
        elif name in by_layer:
            out.extend(by_layer[name])
        else:
            known = ", ".join(e.layer for e in errors[:5])
            raise TledgeError(f"--keep-float {name!r} is not a quantized layer of this model "
                              f"(the worst are {known}): use names from {CSV_NAME}")
    return list(dict.fromkeys(out))


def convert_keep_float(model, calibration: np.ndarray, tensors: Sequence[str],
                       bias_correction: bool = True) -> bytes:
    """Full-integer int8 (uint8 in and out) with the ops that output ``tensors`` left float
    (the converter's ``denylisted_nodes``, as QuantizationDebugger does it)."""

    qconfig = QuantizationConfig.for_int8(calibration, bias_correction=bias_correction)
    return convert(model, qconfig, keep_float=tuple(tensors))


def worst_names(errors: list[LayerError], count: int = 3) -> str:
    return ", ".join(f"{e.layer} ({e.op}, relative error {e.rel_rmse:.2f}"
                     + (f", {100 * e.clipped:.1f}% clipped" if e.clipped > 0.001 else "") + ")"
                     for e in [e for e in errors if e.reliable][:count])


def first_new(errors: list[LayerError], kept: Sequence[str]) -> Optional[LayerError]:
    """The worst layer not kept float yet (for --keep-float auto)."""
    return next((e for e in errors if e.reliable and e.layer not in kept), None)
