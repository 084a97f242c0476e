"""The recipe: a new head on a frozen backbone, then the top of the backbone fine-tuned at a much
lower learning rate, then quantization-aware training (``tledge.training.qat``).

Each phase keeps its best epoch on the validation split, and the run folder is brought up to
date as soon as a phase ends, so an interrupted run keeps every phase it finished.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


from tledge.core import fileio, rundir
from tledge.core.config import RunConfig
from tledge.data import Splits
from tledge.training.distribution import backup_dir, precision_policy, resolve_strategy, worker_role
from tledge.core.errors import Interrupted, TledgeError, first_line
from tledge.training.fitting import (PhaseResult, balance_lines, class_balance, compile_model,
                            evaluate_accuracy, fit_phase, image_batches, is_pretrained,
                            label_depth, phase_rate, predicted, save_model, splits_balance,
                            steps_of, worker_shard)
from tledge.training.features import (feature_statistics, features_of, head_of, head_on_features,
                             sampled_feature_statistics, split_at, standardised_head,
                             top_layer_names, images_only, activation_batches)
from tledge.training.history import (asked_epochs, finished_phases, phase_header, phase_line,
                                     resume_plan, write_reports)
from tledge.training.bnfold import folded_batchnorm
from tledge.training.keeprule import judge
from tledge.training.runmodel import batchnorm_from_data, load_initial_model

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """A finished (or interrupted) run.

    Attributes:
      out: the run folder.
      phases: the phases that ran, in order.
      model: the float Keras model with the best weights of the last phase.
      qat_model: the quantization-aware model, when phase 3 ran.
    """

    out: Path
    phases: list = field(default_factory=list)
    model: object = None
    qat_model: object = None


def frozen_phase(model, splits: Splits, config: RunConfig, strategy,
                 backup: Optional[Path] = None, prior=None) -> PhaseResult:
    """Phase 1: the backbone frozen, the head trained.

    On standardised features (``--feature-norm``, folded into the head afterwards). Without
    augmentation the backbone's features are computed once and the head fitted on them (the TF
    Hub "bottleneck" trick); not across several workers, where each trains on its share of the
    images instead.

    Args:
      model: the classifier; its head's weights are the phase's best epoch's afterwards.
      splits: train and validation images.
      config: the run's config (``train.frozen`` is the phase's).
      strategy: a tf.distribute strategy.
      backup: a folder for BackupAndRestore (multi-worker), or None.
      prior: the phase as it finished before, extended by ``train.frozen.epochs`` more
        (``fitting.fit_phase``), or None.

    Returns:
      The phase's PhaseResult (history, best epoch, its validation accuracy, seconds).
    """
    from tledge.models import set_backbone_trainable

    set_backbone_trainable(model, None)
    if images_only(config, strategy):
        return _frozen_on_images(model, splits, config, strategy, backup, prior)
    log.info("phase frozen: computing backbone features once (no augmentation)")
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        extractor, _ = head_on_features(model)
        bs = config.data.batch_size
        train = (features_of(extractor, splits.train, bs, stack, "train", config.data.cache),
                 splits.train.y)
        val = features_of(extractor, splits.val, bs, stack, "val", config.data.cache), splits.val.y
        result = fit_head(model, train, val, config, strategy, backup, prior)
    result.seconds = time.perf_counter() - start  # feature extraction included
    return result


def fit_head(model, train: tuple, val: tuple, config: RunConfig, strategy,
             backup: Optional[Path] = None, prior=None) -> PhaseResult:
    """Phase 1 on backbone features computed already.

    ``model``'s head trains (on standardised features with ``--feature-norm``).
    benchmarks/head_sweep.py calls this on features it keeps across runs.

    Args:
      model: the classifier.
      train, val: (features, labels), the features rows of an ndarray or a DiskArray.
      config: the run's config.
      strategy: a tf.distribute strategy.
      backup: a folder for BackupAndRestore, or None.

    Returns:
      The phase's PhaseResult (``feature_cache`` True).
    """
    from tledge.data.pipeline import batches

    hp, bs, seed = config.train.frozen, config.data.batch_size, config.train.seed
    depth = label_depth(config, model.output_shape[-1])
    balance = class_balance(train[1], val[1], model.output_shape[-1], config.train.class_weight)
    with contextlib.ExitStack() as stack:
        norm = None
        if config.train.feature_norm:
            norm = stack.enter_context(standardised_head(model, *feature_statistics(train[0])))
        with strategy.scope():
            _, head = head_on_features(model, norm)
            compile_model(head, phase_rate(hp, steps_of(len(train[0]), bs, hp.epochs)),
                          config.train.label_smoothing)
        result = fit_phase(model, head,
                           batches(*train, bs, shuffle=True, seed=seed, one_hot=depth),
                           batches(*val, bs, one_hot=depth),
                           hp, config.train.early_stop, "frozen", backup, balance, prior)
    result.feature_cache = True
    result.trainable_weights = len(head.trainable_weights)
    return result


def _frozen_on_images(model, splits: Splits, config: RunConfig, strategy,
                      backup: Optional[Path] = None, prior=None) -> PhaseResult:
    """Phase 1 through the frozen backbone every step (augmentation, several workers), the
    features standardised with the statistics of a sample of the training images."""
    import tf_keras as keras

    hp, data, seed = config.train.frozen, config.data, config.train.seed
    with contextlib.ExitStack() as stack:
        norm, extractor = None, None
        if config.train.feature_norm:
            extractor, _ = head_on_features(model)
            norm = stack.enter_context(standardised_head(
                model, *sampled_feature_statistics(extractor, splits.train, data.batch_size,
                                                   seed)))
        rate = phase_rate(hp, steps_of(len(splits.train), data.batch_size, hp.epochs))
        with strategy.scope():
            fit_model = model if norm is None else \
                keras.Model(model.input, head_of(model, extractor.output, norm))
            compile_model(fit_model, rate, config.train.label_smoothing)
        train_ds, val_ds = image_batches(splits, config, strategy, seed)
        return fit_phase(model, fit_model, train_ds, val_ds, hp, config.train.early_stop,
                         "frozen", backup, splits_balance(splits, config), prior)


def finetune_phase(model, splits: Splits, config: RunConfig, strategy,
                   backup: Optional[Path] = None, prior=None) -> PhaseResult:
    """Phase 2: the top of the backbone unfrozen, trained with the head at a low learning rate.

    Without augmentation the frozen bottom (below the unfreeze point, BatchNorm in inference
    mode) gives an image the same activations every epoch: they are computed once and the top
    trained on them (``features.split_at``; not across workers, nor with --no-feature-cache:
    said in one line): the same weights a plain fit trains. Frozen BatchNorm runs folded into
    its convolution (``bnfold``): the same model to float round-off.

    Args:
      model: the classifier after phase 1.
      splits: train and validation images.
      config: the run's config (``train.finetune`` is the phase's: epochs, rate, unfreeze
        point, BatchNorm mode).
      strategy: a tf.distribute strategy.
      backup: a folder for BackupAndRestore, or None.
      prior: the phase as it finished before, extended (``fitting.fit_phase``), or None.

    Returns:
      The phase's PhaseResult (``feature_cache``: trained on the cached activations).
    """
    from tledge.models import set_backbone_trainable

    hp, data, seed = config.train.finetune, config.data, config.train.seed
    freeze_bn = is_pretrained(config) and hp.batchnorm == "frozen"
    unfrozen = set_backbone_trainable(model, hp.unfreeze, freeze_batchnorm=freeze_bn,
                                      backbone=config.model.backbone)
    with strategy.scope():  # a model made outside the scope runs its step outside it too
        bottom, top = split_at(model, top_layer_names(model, hp.unfreeze,
                                                      config.model.backbone))
    why_not = images_only(config, strategy) or (top if bottom is None else None)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if why_not:
            log.info("phase finetune: %d backbone layers with weights unfrozen; every epoch "
                     "runs the whole network (%s)", unfrozen, why_not)
            fit_model, (train_ds, val_ds) = model, image_batches(splits, config, strategy,
                                                                 seed + 1)
        else:
            log.info("phase finetune: %d backbone layers with weights unfrozen; the frozen "
                     "layers below them run once per image (no augmentation)", unfrozen)
            fit_model, train_ds, val_ds = top, *activation_batches(
                bottom, splits, config, stack, seed + 1)
            log.info("phase finetune: activations of %d images computed in %.1f s",
                     len(splits.train) + len(splits.val), time.perf_counter() - start)
        steps = steps_of(len(splits.train), data.batch_size, hp.epochs)
        with strategy.scope():
            fit_model = folded_batchnorm(fit_model, "finetune")
            compile_model(fit_model, phase_rate(hp, steps), config.train.label_smoothing)
        result = fit_phase(model, fit_model, train_ds, val_ds, hp, config.train.early_stop,
                           "finetune", backup, splits_balance(splits, config), prior)
    result.seconds = time.perf_counter() - start  # the activations' computation included
    result.feature_cache = not why_not
    return result


def train(config: RunConfig, out: Path, *, overwrite: bool = False,
          splits: Optional[Splits] = None, echo: Callable[[str], None] = print,
          resume: bool = False) -> TrainResult:
    """Runs the recipe described by ``config`` into the run folder ``out``.

    This process holds the folder (rundir.lock) until it is done: a second writer is refused in
    one line. Under ``--strategy multi-worker`` every worker runs this with the same arguments;
    only the chief prepares, locks and writes ``out``. The others do the same work (saving a
    model takes every worker) into a temporary folder of their own, removed at the end. A
    restarted cluster resumes each phase from its backup (``backup_dir``) and may reuse ``out``.

    Args:
      config: data, model and recipe.
      out: the run folder.
      overwrite: replace a run already there (it stays whole until the new float model is saved).
      splits: data already loaded (tests, benchmarks); None: load ``config.data``.
      echo: prints a line for the user.
      resume: finish the interrupted or failed run in ``out`` (``tledge train --resume``): its
        finished phases are kept, the phase that stopped goes on from its last finished epoch
        (weights, optimizer state, schedule position: every phase backs itself up each epoch,
        in ``backup_dir``), the phases after it run.

    Returns:
      The TrainResult: the folder, the phases that ran, the float and QAT Keras models.

    Raises:
      TledgeError: bad data, a folder another run holds, a failed phase (status written).
      Interrupted: Ctrl-C, SIGTERM or SIGHUP; finished phases are kept.
    """
    import shutil
    import tempfile

    role = worker_role(config.train.strategy)
    backup = backup_dir(config, Path(out))  # every phase backs itself up each epoch
    if role and not role.chief:
        scratch = Path(tempfile.mkdtemp(prefix=f"tledge-worker{role.index}-"))
        try:
            result = _train(config, scratch, overwrite=True, splits=splits, backup=backup,
                            echo=lambda line: echo(f"[worker {role.index}] {line}"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        result.out = Path(out)
        return result
    # a restarted cluster resumes from its backup by itself; one process, with --resume
    resuming = resume or (role is not None and any(backup.glob("*/chief/checkpoint")))
    if resuming:
        echo(f"resuming {out} from its last finished epoch (backup in {backup})")
    out = rundir.prepare(Path(out), overwrite or resuming)
    with rundir.lock(out, rundir.command_line()):
        out = rundir.prepare(out, overwrite or resuming)  # now that no one else can write there
        if not resuming:  # an earlier attempt's backups are not this run's
            shutil.rmtree(backup, ignore_errors=True)
        result = _train(config, out, overwrite=overwrite, splits=splits, echo=echo,
                        backup=backup, resume=resume)
    shutil.rmtree(backup, ignore_errors=True)
    return result


def _train(config: RunConfig, out: Path, *, overwrite: bool, splits: Optional[Splits],
           echo: Callable[[str], None], backup: Optional[Path] = None,
           resume: bool = False) -> TrainResult:
    import tensorflow as tf
    import tf_keras as keras

    from tledge import data as data_mod

    # MultiWorkerMirroredStrategy must exist before TensorFlow runs anything.
    strategy = resolve_strategy(config.train.strategy, config.train.cluster_timeout, echo,
                                lock=Path(out) / rundir.LOCK)
    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()
    if splits is None:
        splits = data_mod.load(config.data, config.train.seed)
    for line in _setup_lines(config, splits, strategy):
        echo(line)
    result, extend = TrainResult(out=out, phases=[]), {}
    if resume:
        result.phases, extend = resume_plan(finished_phases(out, config), config, echo)
    done = {p.name for p in result.phases}
    with precision_policy(config.train.mixed_precision):
        if done & {"frozen", "finetune"} or extend:  # the float model they left
            with strategy.scope():
                result.model = load_initial_model(out, splits, config.data.image_size)
            if result.phases:
                echo(f"resuming after phase(s) {', '.join(p.name for p in result.phases)}")
        else:  # before the run folder is written: a bad option leaves nothing behind
            result.model = _initial_model(config, splits, strategy)
        run = _RunWriter(out, config, splits.class_names, replacing=overwrite and any(
            (out / name).exists() for name in rundir.ARTIFACTS))
        run.saved = bool(done & {"frozen", "finetune"})
        current = None
        try:
            for name, epochs, run_phase in _phases(config, out, run, splits, strategy, backup,
                                                   extend):
                if name in done:
                    continue
                if epochs == 0:
                    if name != "qat":  # QAT off is the user's choice, not a skipped phase
                        echo(f"phase {name}: skipped (0 epochs)")
                    continue
                current = name
                echo(phase_header(name, epochs))
                echo(phase_line(run_phase(result)))
            current = "qat"
            if not run.saved:  # no phase ran (--init-from, or 0 epochs): the model as is
                run.save_float(result.model)
        except KeyboardInterrupt as cause:
            _interrupted(cause, current, run, result, splits)
        except Exception as e:
            _failed(e, current, run, result, splits)
        write_reports(out, result.phases, splits, status="complete")
    echo(f"run saved in {out}")
    echo(f"next: tledge export {out} --int8 --fp32")
    return result


def _setup_lines(config: RunConfig, splits: Splits, strategy) -> list:
    """What the run trains on, where its images live and how it is distributed."""
    lines = [f"data: {config.data.source}: {len(splits.class_names)} classes, "
             f"{len(splits.train)} train / {len(splits.val)} val"
             + (f" / {len(splits.test)} test" if splits.test is not None else "")
             + f" images at {config.data.image_size}px"
             + (f", {splits.skipped} unreadable file(s) skipped" if splits.skipped else ""),
             f"data: {storage_line(splits)}"] + balance_lines(splits, config)
    shard = worker_shard(strategy)
    if shard is not None:
        lines.append(f"strategy: MultiWorkerMirroredStrategy, worker {shard[1]} of {shard[0]}, "
                     f"{strategy.num_replicas_in_sync} replicas in all; this worker trains on "
                     f"every {shard[0]}{'nd' if shard[0] == 2 else 'th'} training image")
    elif strategy.num_replicas_in_sync > 1:
        lines.append(f"strategy: MirroredStrategy over {strategy.num_replicas_in_sync} devices")
    return lines


def _initial_model(config: RunConfig, splits: Splits, strategy):
    """The classifier the recipe starts from: a new one, or --init-from a run's float model."""
    from tledge.models import build_classifier, unfreeze_start

    with strategy.scope():
        if config.train.init_from:
            model = load_initial_model(Path(config.train.init_from), splits,
                                       config.data.image_size)
        else:
            model = build_classifier(config.model, len(splits.class_names),
                                     config.data.image_size)
    if not config.train.init_from and not is_pretrained(config):
        batchnorm_from_data(model, splits.train, config.data.batch_size, config.train.seed)
    if config.train.finetune.epochs:
        # a bad name fails now, not after the frozen phase
        unfreeze_start(model, config.train.finetune.unfreeze, config.model.backbone)
    return model


def _phases(config: RunConfig, out: Path, run: "_RunWriter", splits: Splits, strategy,
            backup: Optional[Path], extend: Optional[dict] = None) -> list:
    """(name, epochs, run) for each phase of the recipe, in order. ``run(result)`` trains
    ``result.model``, appends the phase's PhaseResult to ``result.phases`` and returns it; a
    float phase saves the float model and the reports after it, the QAT phase its own model
    (after saving the float model as it is when no float phase ran). ``extend``: {phase:
    its PhaseResult} for a finished phase given more epochs (``history.resume_plan``)."""
    extend, asked = extend or {}, asked_epochs(config)
    bs = config.data.batch_size
    extra = {name: asked[name] - len(p.history.get("loss", [])) for name, p in extend.items()}

    def float_phase(name, train_phase):
        def run_float(result):
            before = next((p for p in reversed(result.phases) if p.kept), None)
            start_weights = result.model.get_weights() if before is not None else None
            start_pred = None if before is None else predicted(result.model, splits.val, bs)
            more = {"prior": extend[name]} if name in extend else {}
            phase = train_phase(result.model, splits, config.override(
                train={name: {"epochs": extra.get(name, asked[name])}}), strategy,
                backup=backup, **more)
            if splits.test is not None:
                phase.test_accuracy, phase.test_balanced_accuracy = evaluate_accuracy(
                    result.model, splits.test, config.data.batch_size)
            if before is not None and not judge(phase, start_pred, predicted(
                    result.model, splits.val, bs), splits.val.y):
                result.model.set_weights(start_weights)  # worse beyond chance: its start stays
            run.save_float(result.model)
            result.phases.append(phase)
            write_reports(out, result.phases, splits, status=f"running (after {phase.name})")
            return phase
        return run_float

    def run_qat(result):
        from tledge.training.qat import qat_phase

        if not run.saved:  # no float phase ran (--init-from, 0 epochs): the model as is
            run.save_float(result.model)
        phase, result.qat_model = qat_phase(result.model, splits, config, strategy, out, backup)
        result.phases.append(phase)
        return phase

    return [("frozen", extra.get("frozen", asked["frozen"]),
             float_phase("frozen", frozen_phase)),
            ("finetune", extra.get("finetune", asked["finetune"]),
             float_phase("finetune", finetune_phase)),
            ("qat", asked["qat"], run_qat)]


def _interrupted(cause: KeyboardInterrupt, current: str, run: "_RunWriter",
                 result: TrainResult, splits: Splits):
    """Ctrl-C during phase ``current``: what was saved, said in one line."""
    out = result.out
    if not run.saved:
        raise Interrupted(f"interrupted during phase {current}, before it finished: "
                          f"{out} is as it was" + (" (the old run, whole)" if run.replacing
                                                   else f"; tledge train --resume {out} goes "
                                                   "on from its last finished epoch")) from cause
    write_reports(out, result.phases, splits, status=f"interrupted during {current}")
    done = ", ".join(p.name for p in result.phases) or "none"
    raise Interrupted(f"interrupted during phase {current}; finished phases ({done}) "
                      f"are saved in {out}; tledge train --resume {out} finishes it") from cause


def _failed(e: Exception, current: str, run: "_RunWriter", result: TrainResult,
            splits: Splits):
    """Whatever stopped phase ``current`` (a NaN loss, a full disk), metrics.json must not go
    on saying "running". On a full disk this small write may fail too: the old file then
    stays. An old run being replaced keeps its own metrics until a new model replaced it."""
    import tensorflow as tf

    out = result.out
    why = first_line(e)[:200]
    if run.saved or not run.replacing:
        with contextlib.suppress(Exception):
            write_reports(out, result.phases, splits, status=f"failed during {current}: {why}")
    if isinstance(e, (tf.errors.UnavailableError, tf.errors.AbortedError,
                      tf.errors.CancelledError)):
        # a worker of the cluster went away (killed, its host down): TensorFlow aborts the
        # collectives on every other worker
        raise TledgeError(
            f"phase {current} stopped: a worker of the cluster is gone ({why[:120]}); finished "
            f"phases are saved in {out}, and restarting every worker with the same command "
            "resumes from the last backup") from e
    raise e


class _RunWriter:
    """Writes a run folder so that what it held is never lost before there is something to
    replace it: a new folder gets its config.yaml and labels.txt at once (they describe the
    attempt, even one that fails); an existing run being replaced (--overwrite) stays whole,
    its model included, until the first float model of the new run is saved, and only then
    are its config, labels and the files the new run may not write (a QAT model, metrics,
    curves) replaced or removed.

    Attributes:
      replacing: ``out`` held a run when training started.
      saved: a float model of this run is in ``out``.
    """

    def __init__(self, out: Path, config: RunConfig, labels: list, replacing: bool):
        self.out, self.config, self.labels = out, config, list(labels)
        self.replacing, self.saved = replacing, False
        if not replacing:
            self._describe()

    def _describe(self) -> None:
        fileio.write_text(self.out / rundir.CONFIG, self.config.to_yaml())
        fileio.write_labels(self.out / rundir.LABELS, self.labels)

    def save_float(self, model) -> None:
        """Save the float model (atomically); the first time, retire the old run's files."""
        save_model(model, self.out / rundir.FLOAT_MODEL)
        if self.replacing and not self.saved:  # the new model is in place: now the rest
            rundir.clear_stale(self.out, keep=(rundir.FLOAT_MODEL,))
            self._describe()
        self.saved = True


def storage_line(splits: Splits) -> str:
    """Where the decoded images live, for the log (the automatic choice, said): one line, in
    memory or streamed from the disk cache, with the size."""
    from tledge.data.cache import DiskArray

    x = splits.train.x
    if isinstance(x, DiskArray):
        return (f"streamed per batch from the disk cache {x.path.parent} "
                f"({x.total * x.row_bytes / 2**20:,.0f} MiB decoded; memory stays flat)")
    size = sum(s.x.nbytes for s in (splits.train, splits.val, splits.test) if s is not None)
    return f"held in memory ({size / 2**20:,.0f} MiB decoded)"
