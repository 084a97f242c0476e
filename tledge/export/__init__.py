"""``tledge export``: TFLite files (fp32, fp16, dynamic, int8) verified against the float model
with an accuracy gate.

Conversion returns bytes; writing is a separate, atomic step. Every file is evaluated on the
run's validation split beside the float Keras model before it is accepted; a quantized file that
loses more than ``max_drop`` points is kept as ``model_<format>.REJECTED.tflite`` and the export
fails, so a collapsed int8 model never passes for a good one.

Rooms: ``tledge.quantize.conversion`` (converter set-up, QuantizationConfig),
``metadata`` (the TFLite
metadata written into each file), ``verify`` (tensor types, the gate, the int8 layer report,
--keep-float, publishing), ``card`` (the model card and the printed table); this module runs
them in order.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio, rundir
from tledge.core.config import ExportOptions, RunConfig
from tledge.quantize.conversion import QuantizationConfig, convert
from tledge.core.errors import TledgeError
from tledge.export.card import format_table, model_card
from tledge.export.verify import (FormatResult, LayerReport, Verifier, check_quantized,
                                  gate_advice, gate_note, keep_float_auto, publish)
from tledge.training.fitting import class_balance
from tledge.training.runmodel import load_keras_file, load_run_model

__all__ = ["CARD", "REPORT", "FormatResult", "QuantizationConfig", "check_quantized", "convert",
           "export"]

REPORT, CARD = rundir.REPORT, rundir.CARD


def _eval_images(config: RunConfig, options: ExportOptions, splits=None):
    from tledge import data as data_mod

    if splits is None:  # the run's own data and split, from its config.yaml
        splits = data_mod.load(config.data, config.train.seed, again=True)
    val = splits.val
    if options.eval_limit is not None and options.eval_limit < len(val):
        idx = np.random.default_rng(0).permutation(len(val))[:options.eval_limit]
        val = data_mod.ImageSet(val.x[np.sort(idx)], val.y[np.sort(idx)])
    return splits, val


def export(run_dir: Path, options: ExportOptions, out: Optional[Path] = None,
           overwrite: bool = False, echo: Callable[[str], None] = print, splits=None) -> dict:
    """Converts a run's models to every format asked, verifies each, writes files, card, report.

    Every file is verified under a temporary name and published under its final name only when
    all formats are done, together with the labels, report and model card that describe it: an
    export killed during verification leaves the old files (or none), never an unverified one.

    Args:
      run_dir: the run folder (tledge train's).
      options: formats, calibration, gate, keep-float, debug report.
      out: the export folder; None: RUN_DIR/export.
      overwrite: replace files an earlier export wrote there.
      echo: prints a line for the user.
      splits: tledge.data.Splits replacing the run's own data: calibration comes from its train
        split, verification from its val split.

    Returns:
      The report written as export_report.json.

    Raises:
      TledgeError: a bad run or output folder, a failed conversion, or (after writing
        everything, the failing file as model_<format>.REJECTED.tflite) a file that failed the
        accuracy gate.
    """
    run_dir = rundir.require_run(Path(run_dir))
    out = Path(out) if out else run_dir / rundir.EXPORT
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
        # held: what a killed export left here (kill -9 skips every cleanup) is nobody's now
        gone = fileio.remove_leftovers(out, rundir.is_export_file)
        if gone:
            echo(f"removed {len(gone)} file(s) a killed export left in {out}")
        return _export(run_dir, options, out, targets, echo, splits, staged, stale)


def _verifier(config: RunConfig, labels: list, float_model, splits, val, out: Path, staged,
              options: ExportOptions, echo) -> Verifier:
    """The float model's scores on the validation images, to verify each file against; the gate
    compares balanced accuracy where the run's classes are imbalanced."""
    from tledge.runtime import in_batches

    reference = in_batches(lambda x: float_model.predict_on_batch(x.astype(np.float32)),
                           val.x, 64, "float Keras model")
    imbalanced = class_balance(splits.train.y, splits.val.y, len(labels), "none").imbalanced
    return Verifier(reference, val, labels,
                    f"{config.model.backbone} classifier of {len(labels)} classes trained by "
                    f"tledge on {config.data.source}", out, staged, options.max_drop, echo,
                    balanced=imbalanced)


def _export(run_dir, options, out, targets, echo, splits, staged, stale=()) -> dict:
    config = RunConfig.from_yaml(run_dir / rundir.CONFIG)
    labels, float_model = load_run_model(run_dir)
    echo(f"loading the data of {run_dir} for calibration and verification")
    splits, val = _eval_images(config, options, splits)
    verifier = _verifier(config, labels, float_model, splits, val, out, staged, options, echo)
    echo(verifier.float_line())
    calib = splits.train.x[:options.calibration]
    debug = LayerReport(float_model, calib, val.x[:256], out, echo, options.bias_correction)
    staged_files, results = [], []  # (verified temporary file, final name), FormatResult
    for fmt in options.formats:
        tmp, result = _one_format(fmt, run_dir, options, float_model, calib, verifier, debug,
                                  echo)
        final = targets[fmt] if result.passed else \
            targets[fmt].with_name(f"model_{fmt}.REJECTED.tflite")
        result.path = str(final)
        staged_files.append((tmp, final))
        results.append(result)

    report = {
        "run": str(run_dir),
        "evaluation": {"split": "validation", "images": len(val)},
        "float_keras": {"accuracy": verifier.float_acc,
                        "balanced_accuracy": verifier.float_balanced},
        "gate_figure": verifier.figure,
        "max_drop_points": options.max_drop,
        "formats": [r.__dict__ for r in results],
    }
    if debug.shown is not None:  # the per-layer int8 report: what it analysed
        report["int8_layer_report"] = {"csv": "quant_debug.csv", "png": "quant_debug.png",
                                       "analysed": debug.source}
    card = model_card(run_dir, config, labels, results, verifier.float_acc, len(val),
                      verifier.float_balanced, verifier.figure)
    # Publish: the files, then what describes them, in one quick run of renames.
    publish(staged_files, stale, echo)
    fileio.write_labels(out / "labels.txt", labels)
    fileio.write_json(out / REPORT, report)
    fileio.write_json(out / CARD, card)
    echo(format_table(verifier.float_acc, results, verifier.float_balanced, verifier.figure))
    for r in results:
        note = gate_note(r, options.max_drop)
        if note:
            echo(f"WARNING: {note}")
    failed = [r for r in results if not r.passed]
    if failed:
        raise TledgeError("accuracy gate failed: " + "; ".join(
            f"{r.format} lost {r.drop_points:.2f} points of {r.figure} (> {options.max_drop}) "
            f"{gate_advice(r, debug)}; kept as {Path(r.path).name}" for r in failed))
    echo(f"exported to {out}: " + ", ".join(Path(r.path).name for r in results)
         + f", labels.txt, {CARD}, {REPORT}")
    echo(f"next: tledge evaluate {out / Path(results[-1].path).name} --data DATA, or tledge "
         f"deploy {out} pi@HOST" if results else "")
    return report


def _one_format(fmt: str, run_dir: Path, options: ExportOptions, float_model, calib,
                verifier: Verifier, debug: LayerReport, echo) -> tuple:
    """Convert, stage and verify one format: (the staged file, its FormatResult)."""
    qat_path = run_dir / rundir.QAT_MODEL
    use_qat = fmt == "int8" and qat_path.is_file() and not options.ptq
    unfinished = _qat_unfinished(run_dir)
    if fmt == "int8" and unfinished and not options.ptq:
        echo(f"WARNING: {run_dir}'s QAT phase did not finish ({unfinished}): the int8 file is "
             "quantized after training from the float model; tledge train --resume "
             f"{run_dir} finishes the run, QAT included, then export again")
    from_qat = use_qat and not options.keep_float
    if use_qat and options.keep_float:
        echo("--keep-float: the int8 file is quantized after training from the float model (a "
             "QAT model's quantization cannot leave chosen layers float)")
    qconfig = QuantizationConfig.for_format(fmt, calib, from_qat=from_qat,
                                            bias_correction=options.bias_correction)
    model = load_keras_file(qat_path, qat=True) if from_qat else float_model
    echo(f"converting {fmt} from the {qconfig.source} model"
         + (f" ({len(calib)} calibration images" + (", bias correction" if
            qconfig.bias_correction else "") + ")" if qconfig.full_integer else ""))
    keep = [k for k in options.keep_float if k != "auto"] if fmt == "int8" else []
    raw = debug.keep_float(keep) if keep else convert(model, qconfig)
    tmp, result = verifier.verify(fmt, raw, qconfig.source, keep)
    if fmt == "int8" and options.keep_float == ("auto",) and not result.passed:
        tmp, result = keep_float_auto(debug, verifier, tmp, result, echo)
    if from_qat and not result.passed:
        tmp, result = _post_training_instead(fmt, float_model, calib, options, verifier, tmp,
                                             result, echo)
    if fmt == "int8" and (options.debug or not result.passed):
        if result.source == "qat":  # the file that ships, against the QAT model in float
            debug.report(shipped=(tmp.read_bytes(), model))
        else:
            debug.report()
    return tmp, result


def _post_training_instead(fmt: str, float_model, calib, options: ExportOptions,
                           verifier: Verifier, tmp: Path, result: FormatResult, echo) -> tuple:
    """The QAT model's int8 file failed the gate: the float model quantized after training is
    verified too, and shipped where it passes (where both fail, the one that lost less is kept
    as REJECTED). A QAT phase can end worse than the float model it started from; the run's
    float model is still there to quantize."""
    echo(f"model_{fmt}.tflite from the QAT model lost {result.drop_points:.2f} points of "
         f"{result.figure} beyond chance: trying post-training int8 from the float model")
    qconfig = QuantizationConfig.for_format(fmt, calib, bias_correction=options.bias_correction)
    ptq_tmp, ptq = verifier.verify(fmt, convert(float_model, qconfig), qconfig.source, [])
    if not (ptq.passed or ptq.drop_points < result.drop_points):
        return tmp, result
    if ptq.passed:
        echo(f"WARNING: model_{fmt}.tflite is quantized after training from the float model "
             f"(it lost {ptq.drop_points:.2f} points): the QAT model's file lost "
             f"{result.drop_points:.2f}, so this run's QAT phase did not keep the float "
             "model's accuracy (export --ptq makes this choice directly)")
    return ptq_tmp, ptq


def _qat_unfinished(run_dir: Path) -> Optional[str]:
    """The run's status where it planned QAT and stopped before QAT finished, else None."""
    import json

    try:
        metrics = json.loads((run_dir / rundir.METRICS).read_text())
        config = RunConfig.from_yaml(run_dir / rundir.CONFIG)
    except (OSError, ValueError, TledgeError):
        return None
    status = str(metrics.get("status", ""))
    planned = config.train.qat.enabled and config.train.qat.epochs > 0
    if planned and "qat" not in metrics.get("phases_completed", []) and status != "complete":
        return f"metrics.json says: {status[:80]}"
    return None
