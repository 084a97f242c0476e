"""The model card written beside exported files, and the table export prints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tledge.core.config import RunConfig
from tledge.export.verify import FormatResult


def model_card(run_dir: Path, config: RunConfig, labels: list[str], results: list[FormatResult],
               float_acc: float, n_eval: int, float_balanced: Optional[float] = None,
               figure: str = "accuracy") -> dict:
    """The model card written beside the exported files.

    Args:
      run_dir: the run the files came from.
      config: its config.
      labels: one per class.
      results: a FormatResult per file.
      float_acc: the float Keras model's accuracy on the evaluation images.
      n_eval: how many evaluation images.
      float_balanced: its balanced accuracy (mean per-class recall) on them.
      figure: what the accuracy gate compared (``balanced accuracy`` where the run's classes
        are imbalanced).

    Returns:
      The card as a JSON-able dict: task, labels, input and its preprocessing, output, and per
      file its format, size, dtypes, quantization, accuracy, gate, minimum runtime, delegation.
    """
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
        "float_keras_balanced_accuracy": float_balanced,
        "gate_figure": figure,
        "evaluated_on": f"{n_eval} validation images of {config.data.source}",
        "files": {
            Path(r.path).name: {
                "format": r.format, "size_bytes": r.size_bytes, "converted_from": r.source,
                "input_dtype": r.quantization["input_dtype"],
                "output_dtype": r.quantization["output_dtype"],
                "input_quantization": r.quantization.get("input_quantization"),
                "output_quantization": r.quantization.get("output_quantization"),
                "accuracy": r.accuracy, "balanced_accuracy": r.balanced_accuracy,
                "agreement_with_float": r.agreement,
                "max_prob_diff": r.max_prob_diff, "passed_gate": r.passed,
                "min_runtime_version": r.quantization.get("min_runtime_version"),
                "keep_float": r.quantization.get("keep_float", []),
                "keep_float_cost": r.quantization.get("keep_float_cost"),
                "delegation": r.quantization.get("delegation"),
            } for r in results
        },
    }


def format_table(float_acc: float, results: list[FormatResult],
                 float_balanced: Optional[float] = None, figure: str = "accuracy") -> str:
    """The table export prints: each file against the float Keras model, and what the columns
    mean.

    Args:
      float_acc: the float model's accuracy.
      results: a FormatResult per file.
      float_balanced: the float model's balanced accuracy (mean per-class recall).
      figure: what "vs float" and the gate compare: ``accuracy`` or ``balanced accuracy``.

    Returns:
      The table's lines, joined.
    """
    def bal(value: Optional[float]) -> str:
        return f"{value:>9.4f}" if value is not None else f"{'-':>9}"

    rows = [f"{'format':<8} {'source':<6} {'size':>9} {'accuracy':>9} {'balanced':>9} "
            f"{'vs float':>9} {'agree':>7} {'max p diff':>10}  gate",
            f"{'keras':<8} {'float':<6} {'':>9} {float_acc:>9.4f} {bal(float_balanced)} "
            f"{'':>9} {'':>7} {'':>10}"]
    for r in results:
        rows.append(f"{r.format:<8} {r.source:<6} {r.size_bytes / 1e6:>8.2f}M {r.accuracy:>9.4f} "
                    f"{bal(r.balanced_accuracy)} {0.0 - r.drop_points:>+9.2f} {r.agreement:>7.4f} "
                    f"{r.max_prob_diff:>10.4f}  {'ok' if r.passed else 'FAILED'}")
    why = (", the gate's figure where the classes are imbalanced" if figure != "accuracy"
           else "")
    rows.append(f"balanced: mean per-class recall; vs float: {figure} points against the float "
                f"model (negative: the file is worse){why}\nagree: the share of images whose "
                "top-1 is the float model's; max p diff: the largest difference\nof one class's "
                "probability")
    return "\n".join(rows)
