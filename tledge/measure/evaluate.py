"""Evaluate and predict with any tledge model: a run folder (float or QAT Keras model) or a
.tflite file. TFLite models go through the numpy-only runtime, so predicting with one never
imports TensorFlow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio, rundir
from tledge.core.errors import TledgeError


@dataclass
class Predictor:
    """A model that maps model-sized uint8 RGB batches to class probabilities.

    Attributes:
      name: what to call it in reports.
      kind: keras, keras-qat or tflite.
      labels: class labels, in output order.
      image_size: (height, width) of the model's input.
      predict: (N, H, W, 3) uint8 -> (N, classes) float32 probabilities.
    """

    name: str
    kind: str
    labels: list
    image_size: tuple
    predict: Callable[[np.ndarray], np.ndarray]


def load_predictor(model: str | os.PathLike, qat: bool = False, backend: Optional[str] = None,
                   threads: Optional[int] = None) -> Predictor:
    path = Path(model)
    if path.is_dir():
        return _keras_predictor(path, qat)
    if path.suffix.lower() in (".keras", ".h5") and path.is_file():
        raise TledgeError(f"{path} is a Keras model file: pass its run folder ({path.parent}; "
                          "--qat for its QAT model), or a .tflite file of its export/")
    if qat:
        raise TledgeError("--qat applies to a run folder, not a .tflite file: drop --qat")
    from tledge.runtime import Classifier

    return tflite_predictor(Classifier(path, backend=backend, threads=threads))


def tflite_predictor(clf) -> Predictor:
    """A loaded tledge.runtime.Classifier as a Predictor."""
    return Predictor(clf.path.name, "tflite", clf.labels, (clf.height, clf.width),
                     clf.predict_batch)


def keras_predictor(model, name: str, labels: list, kind: str = "keras") -> Predictor:
    """A loaded Keras classifier (raw 0..255 pixels in) as a Predictor."""
    size = tuple(int(v) for v in model.input_shape[1:3])
    return Predictor(name, kind, labels, size,
                     lambda x: np.asarray(model.predict_on_batch(x.astype(np.float32))))


def _keras_predictor(run: Path, qat: bool) -> Predictor:
    from tledge.core.errors import require_training_stack

    rundir.require_run(run)
    rundir.prepare_read(run)  # a run still training: refused, nothing written into it
    require_training_stack(f"the run folder {run} (a Keras model)",
                           ("tensorflow", "tf_keras") + (("tensorflow_model_optimization",)
                                                         if qat else ()))
    from tledge.training.runmodel import load_run_model

    if qat and not (run / rundir.QAT_MODEL).is_file():
        raise TledgeError(f"{run} has no QAT model ({rundir.QAT_MODEL}): train with --qat "
                          "or evaluate the float model without --qat")
    labels, model = load_run_model(run, qat)
    return keras_predictor(model, f"{run.name}/{rundir.QAT_MODEL if qat else rundir.FLOAT_MODEL}",
                           labels, "keras-qat" if qat else "keras")


def evaluation_images(data: str, predictor: Predictor, limit: Optional[int], seed: int = 42):
    """(images, labels in the model's label order, split name): :func:`evaluation_set`'s."""
    found = evaluation_set(data, predictor, limit, seed)
    return found.x, found.y, found.split


@dataclass
class EvaluationSet:
    """What evaluate scores.

    Attributes:
      x: the images at the model's input size.
      y: their labels, in the model's label order.
      split: "test" (a built-in set's test split) or "folder".
      files: each image's name (a folder's files relative to it; test[i] for a built-in set).
    """

    x: object
    y: np.ndarray
    split: str
    files: list


def evaluation_set(data: str, predictor: Predictor, limit: Optional[int],
                   seed: int = 42) -> EvaluationSet:
    """A built-in data set gives its test split; a folder is evaluated whole, its class
    folders matched to labels by name."""
    from tledge import data as data_mod

    height, width = predictor.image_size
    if height != width:
        raise TledgeError(f"the model's input is {height}x{width}; tledge evaluates square models")
    if data in data_mod.BUILTIN:  # its test split alone: the training images are not decoded
        images, names = data_mod.load_test_split(data, height, limit, seed)
        split = "test"
    else:
        from tledge.data.folder import load_folder
        images, names, skipped = load_folder(Path(data), height, limit, seed)
        split = "folder"
    index = {label: i for i, label in enumerate(predictor.labels)}
    missing = [n for n in names if n not in index]
    if missing:
        raise TledgeError(f"class(es) {', '.join(missing[:5])} of {data} are not among the "
                          f"model's labels ({', '.join(predictor.labels[:5])}...): evaluate on "
                          "data with the classes the model was trained on")
    remap = np.asarray([index[n] for n in names], np.int32)
    files = list(images.names) if images.names else [f"{data}-{split}[{i}]"
                                                     for i in range(len(images))]
    return EvaluationSet(images.x, remap[images.y], split, files)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def predict_all(predictor: Predictor, x, batch_size: int = 32) -> np.ndarray:
    """Class probabilities of every image, with a progress bar."""
    from tledge.runtime import in_batches

    return in_batches(predictor.predict, x, batch_size, f"evaluating {predictor.name}",
                      len(predictor.labels), leave=True)


def evaluate(predictor: Predictor, x: np.ndarray, y: np.ndarray,
             batch_size: int = 32) -> dict:
    """Accuracy, balanced accuracy, macro F1, per-class precision, recall and F1, and the
    confusion matrix."""
    return summarize(predict_all(predictor, x, batch_size), y, predictor)


def summarize(probs: np.ndarray, y: np.ndarray, predictor: Predictor) -> dict:
    """:func:`evaluate`'s report from probabilities already computed."""
    n = len(predictor.labels)
    pred = probs.argmax(1)
    cm = confusion(y, pred, n)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), np.nan)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), np.nan)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall),
                      0.0)
    f1 = np.where(np.isnan(recall), np.nan, np.nan_to_num(f1))  # a class never seen: no F1
    present = cm.sum(1) > 0
    per_class = [{"label": label, "precision": _num(p), "recall": _num(r), "f1": _num(f),
                  "support": int(s)}
                 for label, p, r, f, s in zip(predictor.labels, precision, recall, f1,
                                              cm.sum(1))]
    return {"model": predictor.name, "kind": predictor.kind, "images": int(len(y)),
            "accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": float(np.mean(recall[present])) if present.any() else None,
            "macro_f1": float(np.mean(f1[present])) if present.any() else None,
            "per_class": per_class, "confusion_matrix": cm.tolist(),
            "labels": predictor.labels}


def _num(v: float) -> Optional[float]:
    return None if np.isnan(v) else float(v)


def format_report(report: dict) -> str:
    """The summary line, then the per-class table, worst F1 first."""
    split = {"test": f" (the test split of {report.get('data')})",
             "folder": f" ({report.get('data')}, every image)"}.get(report.get("split"), "")

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    lines = [f"{report['model']}: accuracy {report['accuracy']:.4f}, balanced accuracy "
             f"{fmt(report.get('balanced_accuracy'))}, macro F1 {fmt(report.get('macro_f1'))} "
             f"on {report['images']} images{split}",
             f"{'class':<20} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}"]
    rows = sorted(report["per_class"], key=lambda r: (r["support"] == 0, r.get("f1") or 0.0))
    for row in rows:
        lines.append(f"{row['label'][:20]:<20} {fmt(row['precision']):>9} "
                     f"{fmt(row['recall']):>7} {fmt(row.get('f1')):>7} {row['support']:>8}")
    return "\n".join(lines)


def write_predictions(path: Path, files: list, y: np.ndarray, probs: np.ndarray,
                      labels: list, top_k: int = 3) -> None:
    """predictions.csv: every image's file, true label, predicted label, its score, whether
    right, and the top-k as label:score;..."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["file", "true", "predicted", "score", "correct", f"top{top_k}"])
    order = np.argsort(-probs, axis=1)[:, :top_k]
    for name, truth, row, top in zip(files, y, probs, order):
        writer.writerow([name, labels[truth], labels[top[0]], f"{row[top[0]]:.4f}",
                         int(top[0] == truth),
                         ";".join(f"{labels[k]}:{row[k]:.4f}" for k in top)])
    fileio.write_text(path, buf.getvalue())


MAX_MISTAKES_SHOWN = 48


def _short(name: str, limit: int = 20) -> str:
    return name if len(name) <= limit else f"{name[:limit // 2 - 1]}...{name[-(limit // 2 - 2):]}"


def plot_mistakes(path: Path, x, files: list, y: np.ndarray, probs: np.ndarray,
                  labels: list) -> int:
    """mistakes.png: a contact sheet of the misclassified images, most confident mistakes
    first (at most MAX_MISTAKES_SHOWN), each captioned true -> predicted and its score.
    Returns how many images were wrong (no file when none was)."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    if not len(wrong):
        return 0
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    shown = wrong[:MAX_MISTAKES_SHOWN]
    cols = min(8, len(shown))
    rows = -(-len(shown) // cols)
    plt = fileio.pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.2 * rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown):
        ax.imshow(np.asarray(x[int(i)]))  # one row read (x may be the disk cache)
        ax.set_title(f"{labels[y[i]][:14]} -> {labels[pred[i]][:14]}\n"
                     f"{probs[i, pred[i]]:.2f}  {_short(Path(files[i]).name)}", fontsize=7)
    fig.suptitle(f"{len(wrong)} of {len(y)} images misclassified"
                 + (f" (the {len(shown)} most confident shown)" if len(wrong) > len(shown)
                    else "") + ": true -> predicted, score", fontsize=9)
    fileio.save_png(fig, path)
    return int(len(wrong))


def plot_confusion(report: dict, path: Path) -> None:
    plt = fileio.pyplot()

    cm = np.asarray(report["confusion_matrix"], float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    labels = report["labels"]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.6 + 0.6 * n), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{report['model']}: accuracy {report['accuracy']:.4f}", fontsize=9)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    fileio.save_png(fig, path)


def default_eval_dir(model: Path, data: str) -> Path:
    """One report folder per model and data set: RUN/evaluation_<data>, or
    <model>_evaluation_<data> beside a .tflite; <data> is a built-in set's name or the data
    folder's own name. A second data set then needs no --out."""
    import re

    from tledge.data import BUILTIN

    model = Path(model)
    name = data if data in BUILTIN else Path(data).expanduser().resolve().name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"
    folder = f"evaluation_{name}"
    return model / folder if model.is_dir() else model.with_name(f"{model.stem}_{folder}")
