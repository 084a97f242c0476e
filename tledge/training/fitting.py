"""What every phase of the recipe shares: the loss, the optimizer, fitting with the best epoch
kept (and backed up across workers), evaluation and saving.

``tledge.training.train`` (phases 1 and 2, the run) and ``tledge.training.qat`` (phase 3) both
build on this
module; it imports neither, so the dependency runs one way: train -> qat -> fitting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from tledge.core import fileio
from tledge.core.config import PhaseHParams, RunConfig
from tledge.data import ImageSet
from tledge.core.errors import TledgeError

log = logging.getLogger(__name__)


@dataclass
class PhaseResult:
    """What one phase did.

    Attributes:
      name: frozen, finetune or qat.
      history: Keras' per-epoch logs (loss, accuracy, val_loss, val_accuracy).
      best_epoch: 1-based epoch whose weights were kept.
      val_accuracy: validation accuracy of the kept weights.
      test_accuracy: test-split accuracy of the kept weights, where the data set has one.
      seconds: wall time of the phase's training.
      epoch_seconds: wall time of each epoch (validation included).
      feature_cache: whether the head was fitted on cached backbone features.
      trainable_weights: number of weight tensors that trained.
      monitor: the figure that picked the kept epoch: accuracy, or balanced_accuracy (mean
        per-class recall) where the classes are imbalanced.
      val_balanced_accuracy: validation balanced accuracy of the kept weights.
      test_balanced_accuracy: the test split's, where there is one.
      kept: the run went on with this phase's weights (False: it ended worse on validation
        than the model it started from, beyond chance, which was kept instead).
      worse_p: where it ended below the model it started from, the paired test's p-value of
        that decline (tledge.training.keeprule); None otherwise.
    """

    name: str
    history: dict = field(default_factory=dict)
    best_epoch: int = 0
    val_accuracy: float = float("nan")
    test_accuracy: Optional[float] = None
    seconds: float = 0.0
    epoch_seconds: list = field(default_factory=list)
    feature_cache: bool = False
    trainable_weights: int = 0
    monitor: str = "accuracy"
    val_balanced_accuracy: float = float("nan")
    test_balanced_accuracy: Optional[float] = None
    kept: bool = True
    worse_p: Optional[float] = None

    def epoch_logs(self) -> list:
        """Each epoch's logs and seconds, as KeepBest keeps them."""
        n = len(self.history.get("loss", []))
        seconds = list(self.epoch_seconds) + [0.0] * (n - len(self.epoch_seconds))
        return [{**{k: float(v[i]) for k, v in self.history.items() if i < len(v)},
                 "seconds": seconds[i]} for i in range(n)]

    @property
    def score(self) -> float:
        """The validation figure phases are compared by (``monitor``'s)."""
        return self.val_balanced_accuracy if self.monitor == "balanced_accuracy" \
            else self.val_accuracy


# A training split whose largest class has this many times the images of its smallest is
# imbalanced: balanced accuracy picks the kept epoch and phase, and --class-weight auto weighs.
IMBALANCED = 1.5
WARN_IMBALANCE = 3.0


@dataclass(frozen=True)
class Balance:
    """How a run's classes are balanced, and what training does about it.

    Attributes:
      train_counts: training images per class.
      val_counts: validation images per class.
      class_weight: Keras' ``class_weight`` ({class: its weight}, see ``class_balance``) or
        None.
    """

    train_counts: tuple
    val_counts: tuple
    class_weight: Optional[dict] = None

    @property
    def ratio(self) -> float:
        """The largest class's training images over the smallest's."""
        return max(self.train_counts) / max(1, min(self.train_counts))

    @property
    def imbalanced(self) -> bool:
        return self.ratio >= IMBALANCED

    @property
    def monitor(self) -> str:
        return "balanced_accuracy" if self.imbalanced else "accuracy"


def class_balance(train_y: np.ndarray, val_y: np.ndarray, num_classes: int,
                  mode: str = "auto", final: bool = False) -> Balance:
    """The Balance of these labels under ``--class-weight mode``.

    ``balanced`` weighs each class's loss by n / (classes x its images), which makes every class
    weigh the same; ``none`` not at all; ``auto`` (on an imbalanced split) by the square root
    of that in the float phases and by that itself in QAT (``final``), the last phase, whose
    model ships: deferred re-weighting (Cao et al., NeurIPS 2019), where the features are
    learnt under mild weights and the last phase moves the boundaries. On
    benchmarks/imbalance.md's folder (three classes at 10x fewer images), the default epochs,
    three seeds, against ``none``: ``auto`` +1.01 points of balanced test accuracy and +5.1 of
    the rare classes' recall; the square root in every phase (``auto`` before) +0.88 and +3.5,
    ``balanced`` +0.65 and +6.8."""
    train = np.bincount(np.asarray(train_y).reshape(-1), minlength=num_classes)
    val = np.bincount(np.asarray(val_y).reshape(-1), minlength=num_classes)
    balance = Balance(tuple(int(c) for c in train), tuple(int(c) for c in val))
    if mode == "balanced" or (mode == "auto" and balance.imbalanced):
        weights = {c: float(train.sum() / (num_classes * n)) for c, n in enumerate(train) if n}
        if mode == "auto" and not final:  # tempered until the last phase (the doc above)
            weights = {c: w ** 0.5 for c, w in weights.items()}
        return Balance(balance.train_counts, balance.val_counts, weights)
    return balance


def splits_balance(splits, config: RunConfig, final: bool = False) -> Balance:
    """:func:`class_balance` of a run's training and validation splits, as its config asks
    (``final``: for QAT)."""
    return class_balance(splits.train.y, splits.val.y, len(splits.class_names),
                         config.train.class_weight, final)


def balance_lines(splits, config: RunConfig) -> list:
    """Images per class (train / validation), and what an imbalance changes, said.

    Args:
      splits: the loaded data.
      config: the run's config (its --class-weight).

    Returns:
      Lines for the log: the counts, then a warning where the largest class has 3x the
      images of the smallest or more.
    """
    balance = splits_balance(splits, config)
    counts = ", ".join(f"{name} {t}/{v}" for name, t, v in zip(
        splits.class_names, balance.train_counts, balance.val_counts))
    lines = [f"data: images per class (train/val): {counts}"]
    if balance.imbalanced:
        rare = splits.class_names[int(np.argmin(balance.train_counts))]
        common = splits.class_names[int(np.argmax(balance.train_counts))]
        weighting = ("no class weights (--class-weight none)" if not balance.class_weight else
                     "each class's loss weighted by n / (classes x its images)"
                     + (", square-rooted before QAT" if config.train.class_weight == "auto"
                        else ""))
        line = (f"the classes are imbalanced: {common} has {balance.ratio:.1f}x the images of "
                f"{rare}; {weighting}; balanced accuracy (mean per-class recall) picks each "
                "phase's kept epoch and the phase kept")
        lines.append(("WARNING: " if balance.ratio >= WARN_IMBALANCE else "data: ") + line)
    return lines


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true).reshape(-1), np.asarray(y_pred).reshape(-1)
    size = max(num_classes, int(y_true.max(initial=-1)) + 1)
    seen = np.bincount(y_true, minlength=size)
    right = np.bincount(y_true[y_true == y_pred], minlength=size)
    present = seen > 0
    return float(np.mean(right[present] / seen[present])) if present.any() else float("nan")


class BalancedAccuracyLog:
    """Keras callback factory: after each epoch, the validation split's balanced accuracy
    (mean per-class recall) into the epoch's logs as ``val_balanced_accuracy``, for KeepBest,
    EarlyStopping and the history that come after it.

    A callback and not a compiled metric: a metric class of tledge's in the compile config
    would stop a saved model from loading with a plain ``load_model``. It costs one more
    forward pass over the validation split an epoch (about 3% of a fine-tune epoch), so it
    runs where the classes are imbalanced (where it picks the kept epoch)."""

    def __new__(cls, val_ds):
        import tf_keras as keras

        class _Log(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.labels = None

            def on_epoch_end(self, epoch, logs=None):
                if logs is None:
                    return
                if self.labels is None:
                    labels = [np.asarray(y) for _, y in val_ds]
                    self.labels = np.concatenate(labels) if labels else np.zeros(0, int)
                    if self.labels.ndim == 2:  # one-hot (label smoothing)
                        self.labels = self.labels.argmax(1)
                probs = self.model.predict(val_ds, verbose=0)
                logs["val_balanced_accuracy"] = balanced_accuracy(
                    self.labels.astype(int), probs.argmax(1), probs.shape[1])

        return _Log()


def progress_verbosity() -> int:
    """Keras' per-step progress bar on a terminal; one line per epoch in a log or CI (a bar
    redrawn per step floods a file with thousands of lines)."""
    import sys

    return 1 if sys.stdout.isatty() else 2


def _log_start(state: Optional[Path], prior: Optional[PhaseResult]) -> tuple:
    """KeepBest's (best, best epoch, epochs, whether the starting weights are the best) when a
    phase begins: resumed from its saved log, extended from its finished phase, or new."""
    import json

    if state is not None and (state / "log.json").is_file():
        saved = json.loads((state / "log.json").read_text())
        return saved["best"], saved["best_epoch"], saved["epochs"], False
    if prior is not None:  # a finished phase given more epochs: its epochs, its best
        return float(prior.score), prior.best_epoch, prior.epoch_logs(), True
    return -np.inf, 0, [], False


class KeepBest:
    """Keras callback factory: each epoch's logs and seconds (the phase's history), and the
    weights of the best validation epoch, restored when the phase ends (EarlyStopping restores
    only when it stops early).

    With ``state`` (a folder), all of it is also written there after every epoch, and read
    back when the phase resumes from its BackupAndRestore checkpoint (``tledge train
    --resume``): the resumed phase keeps the epochs and the best weights of before. ``prior``
    (a finished phase given more epochs): its epochs come first, and its kept weights (the
    model's when the fit begins) stay the best until an epoch beats them."""

    def __new__(cls, monitor: str = "val_accuracy", state: Optional[Path] = None,
                prior: Optional[PhaseResult] = None):

        import tf_keras as keras

        class _KeepBest(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.best_weights, self._started = None, 0.0
                self.best, self.best_epoch, self.epochs, self.seed_weights = _log_start(state,
                                                                                        prior)

            def on_train_begin(self, logs=None):
                if self.seed_weights:  # the kept weights the extension starts from
                    self.best_weights = self.model.get_weights()
                    if state is not None:
                        state.mkdir(parents=True, exist_ok=True)
                        with fileio.atomic_path(state / "best.npz") as tmp:
                            np.savez(tmp, *self.best_weights)

            def on_epoch_begin(self, epoch, logs=None):
                self._started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                self.epochs.append({**{k: float(v) for k, v in logs.items()},
                                    "seconds": round(time.perf_counter() - self._started, 3)})
                value = logs.get(monitor)
                better = value is not None and value > self.best
                if better:
                    self.best, self.best_epoch = float(value), epoch + 1
                    self.best_weights = self.model.get_weights()
                if state is not None:
                    state.mkdir(parents=True, exist_ok=True)
                    if better:
                        with fileio.atomic_path(state / "best.npz") as tmp:
                            np.savez(tmp, *self.best_weights)
                    fileio.write_json(state / "log.json", {
                        "best": self.best, "best_epoch": self.best_epoch,
                        "epochs": self.epochs})

            def on_train_end(self, logs=None):
                if self.best_weights is None and state is not None and \
                        (state / "best.npz").is_file():  # the best came before the resume
                    with np.load(state / "best.npz") as saved:
                        self.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
                if self.best_weights is not None:
                    self.model.set_weights(self.best_weights)

            def history(self) -> tuple[dict, list]:
                """(metric -> value per epoch, seconds per epoch), every epoch of the phase."""
                keys = [k for k in (self.epochs[0] if self.epochs else {}) if k != "seconds"]
                return ({k: [e.get(k, float("nan")) for e in self.epochs] for k in keys},
                        [e["seconds"] for e in self.epochs])

        return _KeepBest()


def resumable(backup: Optional[Path], name: str) -> bool:
    """Whether phase ``name`` has a BackupAndRestore checkpoint to resume from."""
    return backup is not None and any((backup / name).rglob("checkpoint"))


def worker_shard(strategy) -> Optional[tuple[int, int]]:
    """(workers, index) under MultiWorkerMirroredStrategy: this worker's share of the training
    data; None otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None
    spec = resolver.cluster_spec()
    chiefs = spec.num_tasks("chief") if "chief" in spec.jobs else 0
    workers = chiefs + (spec.num_tasks("worker") if "worker" in spec.jobs else 0)
    if workers < 2:  # one process: no cluster to share the data with
        return None
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return workers, index


def is_pretrained(config: RunConfig) -> bool:
    return config.model.weights.lower() != "none"


def compile_model(model, learning_rate, label_smoothing: float = 0.0) -> None:
    """Adam at ``learning_rate`` (a number or a schedule), cross-entropy on integer labels."""
    import tf_keras as keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=classification_loss(label_smoothing), metrics=["accuracy"])


def classification_loss(label_smoothing: float):
    """Cross-entropy: on integer labels, or with label smoothing on one-hot labels (tf_keras'
    sparse loss has no smoothing; the pipeline one-hots the labels, see ``label_depth``).
    Both are Keras' own losses, so a saved model loads anywhere with plain load_model."""
    if not label_smoothing:
        return "sparse_categorical_crossentropy"
    import tf_keras as keras

    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def phase_rate(hp, steps: int):
    """A phase's learning rate over its ``steps``: constant or cosine decay to 1%, after an
    optional linear warm-up from 1% over ``hp.warmup`` of the steps (phase 2's setting)."""
    import tf_keras as keras

    warm = int(round(getattr(hp, "warmup", 0.0) * steps))
    if hp.schedule == "constant" and not warm:
        return hp.learning_rate
    alpha = 0.01 if hp.schedule == "cosine" else 1.0  # alpha 1: no decay at all
    if not warm:
        return keras.optimizers.schedules.CosineDecay(hp.learning_rate, steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        hp.learning_rate / 100, max(1, steps - warm), alpha=alpha,
        warmup_target=hp.learning_rate, warmup_steps=warm)


def steps_of(count: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps in ``epochs`` over ``count`` examples on one machine (a schedule's
    length)."""
    return epochs * -(-count // batch_size)


def label_depth(config: RunConfig, num_classes: int) -> int:
    """How the training pipeline gives labels: one-hot of this depth with label smoothing, as
    class indices (0) without."""
    return num_classes if config.train.label_smoothing else 0


def image_batches(splits, config: RunConfig, strategy, seed: int):
    """A phase's (training, validation) batches of images: training shuffled with ``seed``,
    augmented with ``--augment``, this worker's share under several workers; labels one-hot
    where the loss smooths them."""
    from tledge.data.pipeline import batches

    data, depth = config.data, label_depth(config, len(splits.class_names))
    train = batches(splits.train.x, splits.train.y, data.batch_size, shuffle=True,
                    augment=data.augment, seed=seed, shard=worker_shard(strategy), one_hot=depth)
    return train, batches(splits.val.x, splits.val.y, data.batch_size, one_hot=depth)


def _callbacks(keep, val_ds, monitor: str, backup: Optional[Path], early_stop: Optional[int],
               one_epoch: bool) -> list:
    """A phase's callbacks around KeepBest: balanced accuracy where it picks the kept epoch (an
    extra pass over the validation split), BackupAndRestore, NaN, early stopping."""
    import tf_keras as keras

    callbacks = ([BalancedAccuracyLog(val_ds)] if monitor == "balanced_accuracy" else []) + [
        keep, keras.callbacks.TerminateOnNaN()]
    if backup is not None:
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(backup)))
    if one_epoch and progress_verbosity():  # Keras says "Epoch i/n" only when n > 1
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs=None: print("Epoch 1/1", flush=True)))
    if early_stop:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=f"val_{monitor}", mode="max", patience=early_stop))
    return callbacks


def fit_phase(model, fit_model, train_ds, val_ds, hp: PhaseHParams, early_stop: Optional[int],
              name: str, backup: Optional[Path] = None,
              balance: Optional[Balance] = None,
              prior: Optional[PhaseResult] = None) -> PhaseResult:
    """Fit ``fit_model`` (the model itself, or a head sharing its layers) and keep its best.

    ``backup``: a folder for Keras' BackupAndRestore: the state is saved every epoch, a
    restarted cluster or ``tledge train --resume`` resumes the phase at its last finished
    epoch (KeepBest's log and best weights beside it), and both are deleted when the phase
    ends. ``balance``: its class weights weigh the loss, and its monitor (balanced accuracy
    where the classes are imbalanced) picks the kept epoch. ``prior``: this phase as it
    finished before (``--resume`` with more epochs): ``hp.epochs`` more epochs are numbered on
    from its, on a learning-rate schedule of their own, and its kept epoch stays kept unless a
    new one beats it."""
    import shutil


    monitor = balance.monitor if balance else "accuracy"
    # the chief's alone (workers of a cluster share one backup folder on a host)
    chief = fit_model.distribute_strategy.extended.should_checkpoint
    state = backup / f"{name}.log" if backup is not None and chief else None
    if state is not None and not resumable(backup, name):
        shutil.rmtree(state, ignore_errors=True)  # an older attempt's, with no checkpoint
    keep = KeepBest(f"val_{monitor}", state, prior)
    done = len(prior.history.get("loss", [])) if prior is not None else 0
    callbacks = _callbacks(keep, val_ds, monitor, backup and backup / name, early_stop,
                           one_epoch=hp.epochs == 1 and not done)
    start = time.perf_counter()
    hist = fit_model.fit(train_ds, validation_data=val_ds, epochs=done + hp.epochs,
                         initial_epoch=done,
                         callbacks=callbacks, verbose=progress_verbosity(),
                         class_weight=balance.class_weight if balance else None)
    seconds = time.perf_counter() - start
    if backup is not None and chief:
        shutil.rmtree(backup / name, ignore_errors=True)  # Keras leaves the empty folder
        shutil.rmtree(state, ignore_errors=True)
    history, epoch_seconds = keep.history()
    if not history:  # a phase resumed after its last epoch: nothing ran
        history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    seconds = max(seconds, sum(epoch_seconds))  # a resumed phase: its epochs of before too
    losses = history.get("loss", [])
    if any(not np.isfinite(v) for v in losses):
        raise TledgeError(f"phase {name}: the loss became NaN or infinite (epoch "
                          f"{len(losses) or 1}): lower this phase's learning rate "
                          f"({hp.learning_rate:g}) and check the images")
    at = keep.best_epoch - 1

    def kept(key: str) -> float:
        values = history.get(key, [])
        return float(values[at]) if 0 <= at < len(values) else float("nan")

    return PhaseResult(name=name, history=history, best_epoch=keep.best_epoch,
                       val_accuracy=kept("val_accuracy"), seconds=seconds,
                       epoch_seconds=epoch_seconds, monitor=monitor,
                       val_balanced_accuracy=kept("val_balanced_accuracy"),
                       trainable_weights=len(model.trainable_weights))


def predicted(model, images: ImageSet, batch_size: int) -> np.ndarray:
    """``model``'s top-1 class of each of ``images``."""
    from tledge.data.pipeline import batches

    return np.argmax(model.predict(batches(images.x, images.y, batch_size), verbose=0), axis=1)


def evaluate_accuracy(model, images: ImageSet, batch_size: int) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of ``model`` on ``images``."""
    pred = predicted(model, images, batch_size)
    return (float(np.mean(pred == images.y)),
            balanced_accuracy(np.asarray(images.y), pred, int(model.output_shape[-1])))


def save_model(model, path: Path) -> None:
    import warnings

    with fileio.atomic_path(path) as tmp, warnings.catch_warnings():
        # the QAT model is HDF5 on purpose (tfmot's wrappers load from it); tf_keras' two-line
        # "legacy format" warning is not news for the user
        warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")
        model.save(tmp)
