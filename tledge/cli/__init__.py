"""The ``tledge`` command line: thin. Each command turns flags into typed options and calls the
library; heavy imports (TensorFlow) happen inside the command bodies, so ``tledge --help`` and
the Pi-side commands start fast and never load TensorFlow.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from click_option_group import optgroup

from tledge import __version__
from tledge.core import fileio
from tledge.cli.tune import tune
from tledge.cli.device import (backend_option, bench, camera, collect, deploy, doctor,
                               pull)
from tledge.core.config import (BACKBONES, BATCHNORM, CLASS_WEIGHTS, DATA_CACHES, SCHEDULES,
                           STRATEGIES,
                           DataOptions, FineTuneHParams, ModelOptions, PhaseHParams, QATHParams,
                           RunConfig, TrainOptions)
from tledge.core.errors import (Interrupted, TledgeError, causes, first_line, path_error,
                           missing_training_stack, require_training_stack)


_signal_received: list = []  # the termination signal that became a KeyboardInterrupt


def interrupt_on_termination() -> None:
    """SIGTERM (kill, systemctl stop) and SIGHUP (a dropped SSH session) end a Python process at
    once by default: no ``finally``, no clean-up, a lock and temporary files left behind. Here
    they raise KeyboardInterrupt in the main thread, so every command does what it does on
    Ctrl-C: finished work committed, status written, child processes stopped, temporary files
    removed. The exit code is then 128 + the signal's number, as a shell reports it."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        _signal_received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _interrupted_code() -> int:
    return 128 + _signal_received[0] if _signal_received else 130


class Group(click.Group):
    """Turns TledgeError into a one-line message and exit 1; Ctrl-C into exit 130 (SIGTERM 143,
    SIGHUP 129). No traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TledgeError as e:
            click.secho(f"Error: {e}", fg="red", err=True)
            if ctx.params.get("verbose"):  # -v: what lay under the one line
                for cause in causes(e):
                    click.echo(f"  caused by {type(cause).__name__}: {first_line(cause)}",
                               err=True)
            sys.exit(_interrupted_code() if isinstance(e, Interrupted) else 1)
        except (ImportError, OSError) as e:
            # The training stack imported where a [pi] install lacks it, a write the disk
            # refused (full, read-only), a path the file system cannot take (a name too long,
            # a link loop): one line, not a trace. Anything else is a bug: raise.
            error = missing_training_stack(e) if isinstance(e, ImportError) else path_error(e)
            if error is None:
                raise
            click.secho(f"Error: {error}", fg="red", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.secho("Interrupted.", fg="red", err=True)
            sys.exit(_interrupted_code())


def _default(cls, name: str):
    return getattr(cls(), name)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"],
                                          "max_content_width": 100})
@click.version_option(__version__, prog_name="tledge")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """From a folder of pictures to a fast, verified int8 classifier on a Raspberry Pi.

    \b
    tledge train   --data DIR        transfer-learn, fine-tune, quantization-aware train
    tledge export  RUN_DIR --int8    TFLite files verified against the float model
    tledge evaluate MODEL --data D   accuracy, per-class precision/recall, confusion matrix
    tledge predict MODEL IMAGE...    top-k labels (a .tflite needs no TensorFlow)
    tledge tune --data D --max-latency-ms X   the most accurate model within a latency budget
    """
    interrupt_on_termination()
    # -v: native code's own log lines too (tledge.core.quiet filters them otherwise); set on every
    # invocation, never in the environment, which child processes would inherit
    from tledge.core import quiet
    quiet.set_verbose(verbose)
    handler = logging.StreamHandler()
    handler.setFormatter(_Plain())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("tensorflow", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    quiet.quiet_tensorflow_logs()


class _Plain(logging.Formatter):
    """Progress as plain lines; a warning or an error says what it is ("WARNING: ...")."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno == logging.INFO else f"{record.levelname}: {message}"


D, M, T = DataOptions, ModelOptions, TrainOptions
F, FT, Q = PhaseHParams, FineTuneHParams, QATHParams


@main.command(short_help="Train a transfer classifier: frozen head, fine-tune, QAT.")
@optgroup.group("Data", help="the pictures and how they are fed")
@optgroup.option("--data", help="Folder with one subfolder per class, or a built-in data set: "
                 f"shapes, cifar10, fashion_mnist.  [default: {_default(D, 'source')}]")
@optgroup.option("--test-data", type=click.Path(file_okay=False), help="A folder with the same "
                 "classes, evaluated after every phase as the test split.")
@optgroup.option("--image-size", type=int,
                 help=f"Square model input in pixels.  [default: {_default(D, 'image_size')}]")
@optgroup.option("--val-split", type=float, help="Fraction of each class held out for validation "
                 f"(stratified, seeded).  [default: {_default(D, 'val_split')}]")
@optgroup.option("--limit", type=int, help="At most N training images per class (quick runs).")
@optgroup.option("--augment/--no-augment", default=None,
                 help="Flip, rotation, zoom and contrast on training batches.  [default: "
                 f"{'augment' if D.augment else 'no-augment'}]")
@optgroup.option("--batch-size", type=int, help="Images per training step (split across devices "
                 f"under MirroredStrategy).  [default: {_default(D, 'batch_size')}]")
@optgroup.option("--data-cache", type=click.Choice(DATA_CACHES), help="Where decoded images "
                 "live: memory, disk (decoded once into ~/.cache/tledge, reused by later runs, "
                 "read per batch), or auto: disk above 128 MiB.  [default: auto]")
@optgroup.group("Model", help="the network")
@optgroup.option("--backbone", type=click.Choice(BACKBONES), metavar="NAME",
                 help=f"Pretrained convolutional base: {', '.join(BACKBONES)}.  [default: "
                 f"{_default(M, 'backbone')}]")
@optgroup.option("--alpha", type=float,
                 help="Width multiplier of MobileNetV2 and MobileNetV3 (channels x alpha; "
                 f"ignored by the others).  [default: {_default(M, 'alpha')}]")
@optgroup.option("--weights", help="imagenet (downloaded once by Keras), none (random), or the "
                 "path of a backbone weights file without its top.  [default: imagenet]")
@optgroup.option("--head-units", type=int,
                 help="Hidden dense layer in the head, 0 for none.  [default: 0]")
@optgroup.option("--dropout", type=float,
                 help=f"Dropout rate in the head.  [default: {_default(M, 'dropout')}]")
@optgroup.option("--init-from", type=click.Path(file_okay=False), help="Start from this run "
                 "folder's float model (e.g. to redo QAT: --epochs-frozen 0 --epochs-finetune 0).")
@optgroup.group("Phase 1: frozen", help="a new head on the frozen backbone")
@optgroup.option("--epochs-frozen", type=int, help="Phase 1 epochs, head only on a frozen "
                 f"backbone; 0 skips.  [default: {_default(F, 'epochs')}]")
@optgroup.option("--lr", type=float,
                 help=f"Phase 1 learning rate.  [default: {_default(F, 'learning_rate')}]")
@optgroup.option("--lr-schedule-frozen", type=click.Choice(SCHEDULES), help="Phase 1: "
                 f"constant, or cosine decay to 1% over the phase.  [default: {F.schedule}]")
@optgroup.option("--feature-norm/--no-feature-norm", default=None, help="Phase 1: fit the head on "
                 "standardised backbone features, folded into its first layer after the phase.  "
                 "[default: on]")
@optgroup.option("--feature-cache/--no-feature-cache", default=None, help="Without augmentation, "
                 "fit phase 1 on backbone features computed once.  [default: on]")
@optgroup.group("Phase 2: fine-tune", help="the backbone's top unfrozen, a lower rate")
@optgroup.option("--epochs-finetune", type=int, help="Phase 2 epochs, top of the backbone "
                 f"unfrozen; 0 skips.  [default: {_default(FT, 'epochs')}]")
@optgroup.option("--lr-finetune", type=float,
                 help=f"Phase 2 learning rate.  [default: {_default(FT, 'learning_rate')}]")
@optgroup.option("--unfreeze", help="Phase 2: 'auto' (the backbone's last block or blocks), a "
                 "number of top backbone layers to unfreeze, the name of the first one, or 'all'.  "
                 f"[default: {_default(FT, 'unfreeze')}]")
@optgroup.option("--lr-schedule", type=click.Choice(SCHEDULES), help="Phase 2: "
                 f"constant, or cosine decay to 1% over the phase.  [default: {FT.schedule}]")
@optgroup.option("--warmup", type=float, help="Phase 2: fraction of its steps over which the "
                 f"rate rises linearly to --lr-finetune.  [default: {_default(FT, 'warmup')}]")
@optgroup.option("--batchnorm", type=click.Choice(BATCHNORM), help="Phase 2: a pretrained "
                 "backbone's BatchNorm layers stay frozen (inference mode, ImageNet statistics) or "
                 f"train with batch statistics.  [default: {FT.batchnorm}]")
@optgroup.group("Phase 3: QAT", help="quantization-aware training, for int8")
@optgroup.option("--qat/--no-qat", default=None,
                 help="Phase 3, quantization-aware training.  [default: qat]")
@optgroup.option("--epochs-qat", type=int,
                 help=f"Phase 3 epochs; 0 skips.  [default: {_default(Q, 'epochs')}]")
@optgroup.option("--lr-qat", type=float,
                 help=f"Phase 3 learning rate.  [default: {_default(Q, 'learning_rate')}]")
@optgroup.option("--unfreeze-qat", help="Phase 3: which layers adapt to quantization: 'all', "
                 "'finetune' (those phase 2 trained), or a point as --unfreeze takes one; below "
                 "it weights and quantization ranges stay as calibrated, and QAT runs about 2x "
                 f"faster for about 0.3 points.  [default: {Q.unfreeze}]")
@optgroup.group("Every phase", help="loss, early stopping, seed")
@optgroup.option("--label-smoothing", type=float, help="Share of each label spread over the other "
                 f"classes in the loss.  [default: {_default(T, 'label_smoothing')}]")
@optgroup.option("--class-weight", type=click.Choice(CLASS_WEIGHTS), help="Weigh each class's "
                 "loss in every phase: balanced (by n / (classes x its images)), none, or auto "
                 "(when the largest class has 1.5x the images of the smallest or more: the "
                 "square root of balanced's weights in the float phases, balanced's own in QAT; "
                 "then balanced accuracy picks each phase's kept epoch).  [default: auto]")
@optgroup.option("--early-stop", type=int,
                 help="Stop a phase after N epochs without better validation accuracy.")
@optgroup.option("--seed", type=int,
                 help=f"Makes a run repeatable.  [default: {_default(T, 'seed')}]")
@optgroup.group("Distribution", help="several GPUs or machines")
@optgroup.option("--strategy", type=click.Choice(STRATEGIES),
                 help="auto: MirroredStrategy when more than one GPU is visible; multi-worker: "
                 "over the machines in TF_CONFIG, every worker running this same command.  "
                 "[default: auto]")
@optgroup.option("--backup-dir", type=click.Path(file_okay=False), help="multi-worker: where each "
                 "phase's state is backed up for a restart (on several hosts, a path all see).  "
                 "[default: in ~/.cache/tledge]")
@optgroup.option("--cluster-timeout", type=float, help="multi-worker: seconds to wait for every "
                 "worker in TF_CONFIG before giving up.  [default: "
                 f"{_default(T, 'cluster_timeout'):g}]")
@optgroup.option("--mixed-precision/--no-mixed-precision", default=None,
                 help="float16 compute on GPU.  [default: off]")
@optgroup.group("Run folder", help="where the run goes")
@optgroup.option("--config", "config_file", type=click.Path(dir_okay=False),
                 help="YAML config to start from (a run's config.yaml); flags override it.")
@optgroup.option("--out", type=click.Path(file_okay=False),
                 help="Run folder.  [default: models/<data>-<backbone>-<size>px-<time>]")
@optgroup.option("--overwrite", is_flag=True, help="Replace an existing run folder's files.")
@optgroup.option("--resume", type=click.Path(file_okay=False), metavar="RUN_DIR",
                 help="Finish an interrupted or failed run: its own config.yaml (flags given "
                 "change it, e.g. more epochs for the phases to come), its finished phases "
                 "kept, the phase that stopped going on from its last finished epoch. More "
                 "epochs for the last finished phase (e.g. --epochs-finetune 8) extend it from "
                 "its kept weights, finished run or not; the phases after it run again.")
def train(config_file, data, image_size, val_split, limit, augment, batch_size, data_cache,
          backbone, alpha, weights, head_units, dropout, epochs_frozen, lr, lr_schedule_frozen,
          feature_norm, epochs_finetune, lr_finetune, unfreeze, lr_schedule, warmup, batchnorm,
          label_smoothing, class_weight, test_data, qat, epochs_qat, lr_qat, unfreeze_qat,
          early_stop, seed,
          strategy,
          backup_dir, cluster_timeout, mixed_precision, feature_cache, init_from, out,
          overwrite, resume):
    """Train a transfer classifier: frozen head, then fine-tune, then QAT."""
    from tledge.core import rundir

    if resume:
        if config_file or out or overwrite:
            raise TledgeError("--resume goes on with the run's own config.yaml and folder: "
                              "drop --config, --out and --overwrite")
        if not (Path(resume) / rundir.CONFIG).is_file():
            raise TledgeError(f"{resume} holds no run to resume (no {rundir.CONFIG}): give the "
                              "--out folder of the tledge train that stopped")
        config_file, out = str(Path(resume) / rundir.CONFIG), resume
    config = RunConfig.from_yaml(config_file) if config_file else RunConfig()
    config = config.override(
        data=dict(source=data, image_size=image_size, val_split=val_split, limit=limit,
                  augment=augment, batch_size=batch_size, cache=data_cache,
                  test_source=test_data),
        model=dict(backbone=backbone, alpha=alpha, weights=weights, head_units=head_units,
                   dropout=dropout),
        train=dict(frozen=dict(epochs=epochs_frozen, learning_rate=lr,
                               schedule=lr_schedule_frozen),
                   finetune=dict(epochs=epochs_finetune, learning_rate=lr_finetune,
                                 unfreeze=unfreeze, schedule=lr_schedule, warmup=warmup,
                                 batchnorm=batchnorm),
                   qat=dict(enabled=qat, epochs=epochs_qat, learning_rate=lr_qat,
                            unfreeze=unfreeze_qat),
                   early_stop=early_stop, seed=seed, strategy=strategy, backup_dir=backup_dir,
                   cluster_timeout=cluster_timeout, class_weight=class_weight,
                   label_smoothing=label_smoothing,
                   mixed_precision=mixed_precision, feature_cache=feature_cache,
                   feature_norm=feature_norm, init_from=init_from))
    from tledge.training.distribution import worker_role

    # a bad TF_CONFIG, --out or existing run is said before TensorFlow loads (seconds)
    role = worker_role(config.train.strategy)
    if not out and role:
        raise TledgeError("--strategy multi-worker needs --out: every worker must name the "
                          "same run folder (the default one has the time in its name)")
    out_dir = Path(out) if out else rundir.default_out(config)
    if not role and not resume:  # a cluster's workers may resume into their folder
        rundir.prepare(out_dir, overwrite)
    require_training_stack("tledge train")
    from tledge.training.train import train as run_training

    # train() checks --out again under the folder's lock, before minutes of data loading
    if resume:
        from tledge.training.history import finished_phases
        finished_phases(out_dir, config)  # a finished run: said before data loading
    run_training(config, out_dir, overwrite=overwrite, echo=click.echo, resume=bool(resume))


@main.command(short_help="Convert a run to TFLite files verified against the float model.")
@click.argument("run_dir", type=click.Path())
@click.option("--fp32", is_flag=True, help="Float32 TFLite (the default when no format is given).")
@click.option("--fp16", is_flag=True, help="Float16 weights, float compute.")
@click.option("--dynamic", is_flag=True, help="int8 weights, float activations.")
@click.option("--int8", is_flag=True, help="Full integer: int8 weights and activations, uint8 "
              "input (raw pixels 0..255) and uint8 output (probability = q / 256). From the QAT "
              "model when the run has one (where that file fails the gate, post-training from "
              "the float model if it passes).")
@click.option("--ptq", is_flag=True, help="int8 by post-training quantization even when the run "
              "has a QAT model (to compare the two).")
@click.option("--calibration", type=int, default=300, show_default=True,
              help="Training images that calibrate int8 quantization.")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy points a file may lose against the float model on the validation "
              "images before the export fails; a bigger loss fails it only when it is also beyond "
              "chance (McNemar's exact test on the images where the two disagree, p < 0.05), so "
              "a few images never decide alone. Where the run's classes are imbalanced the "
              "points are balanced accuracy's (mean per-class recall), each image weighed as "
              "that figure weighs it.")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Post-training int8: take the mean error of the rounded weights out of each "
              "layer's bias (measured on 64 calibration images).")
@click.option("--eval-limit", type=int, help="Verify on at most N validation images.")
@click.option("--debug", is_flag=True, help="With --int8: write the per-layer int8 error "
              "report (export/quant_debug.csv and .png); written anyway when int8 fails the gate.")
@click.option("--keep-float", metavar="LAYER[,LAYER...]|auto", help="With --int8: keep these "
              "layers (names from quant_debug.csv) in float; 'auto' adds the worst one at a time "
              "until the gate passes.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder.  [default: "
              "RUN_DIR/export]")
@click.option("--overwrite", is_flag=True, help="Replace existing files of the same formats.")
def export(run_dir, fp32, fp16, dynamic, int8, ptq, calibration, max_drop, bias_correction,
           eval_limit, debug, keep_float, out, overwrite):
    """Convert a run to TFLite and verify every file against the float model."""
    from tledge.core.config import ExportOptions

    formats = tuple(f for f, on in (("fp32", fp32), ("fp16", fp16), ("dynamic", dynamic),
                                    ("int8", int8)) if on) or ("fp32",)
    keep = tuple(n.strip() for n in keep_float.split(",") if n.strip()) if keep_float else ()
    options = ExportOptions(formats=formats, calibration=calibration, ptq=ptq,
                            max_drop=max_drop, eval_limit=eval_limit, debug=debug,
                            keep_float=keep, bias_correction=bias_correction)
    from tledge.core import rundir

    rundir.require_run(Path(run_dir))  # these, and the options, are said before TF loads
    fileio.check_output_dir(Path(out) if out else Path(run_dir) / rundir.EXPORT, "--out")
    require_training_stack("tledge export (the TFLite converter)")
    from tledge.export import export as run_export

    run_export(Path(run_dir), options, out=Path(out) if out else None, overwrite=overwrite,
               echo=click.echo)


@main.command(short_help="Accuracy, per-class precision/recall and a confusion matrix.")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, help="A folder with one subfolder per class (evaluated "
              "whole), or a built-in data set (its test split).")
@click.option("--qat", is_flag=True, help="With a run folder: evaluate its QAT model.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N images per class.")
@backend_option
@click.option("--threads", type=click.IntRange(min=1),
              help="Interpreter threads.  [default: all cores]")
@click.option("--out", type=click.Path(file_okay=False), help="Report folder.  [default: "
              "RUN_DIR/evaluation_<data> or <model>_evaluation_<data> beside the .tflite]")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
def evaluate(model, data, qat, limit, backend, threads, out, overwrite):
    """Accuracy, per-class precision and recall, and a confusion matrix for MODEL."""
    from tledge.measure import evaluate as ev

    out_dir = Path(out) if out else ev.default_eval_dir(Path(model), data)
    report_path = out_dir / "evaluation.json"
    fileio.check_output_dir(out_dir, "--out")
    if report_path.exists() and not overwrite:
        raise TledgeError(f"{report_path} already exists: pass --overwrite or another --out")
    predictor = ev.load_predictor(model, qat=qat, backend=backend, threads=threads)
    found = ev.evaluation_set(data, predictor, limit)
    probs = ev.predict_all(predictor, found.x)
    report = ev.summarize(probs, found.y, predictor)
    report.update(data=data, split=found.split)
    fileio.write_json(report_path, report)
    ev.plot_confusion(report, out_dir / "confusion_matrix.png")
    ev.write_predictions(out_dir / "predictions.csv", found.files, found.y, probs,
                         predictor.labels)
    wrong = ev.plot_mistakes(out_dir / "mistakes.png", found.x, found.files, found.y, probs,
                             predictor.labels)
    click.echo(ev.format_report(report))
    click.echo(f"report in {out_dir}: evaluation.json, confusion_matrix.png, predictions.csv"
               + (f", mistakes.png ({wrong} misclassified)" if wrong else
                  " (no image misclassified)"))


@main.command(short_help="Top-k labels and scores of images (.tflite needs no TensorFlow).")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Classes per image.")
@click.option("--qat", is_flag=True, help="With a run folder: use its QAT model.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per image (image, top_k: label and score; or error).")
@backend_option
@click.option("--threads", type=click.IntRange(min=1),
              help="Interpreter threads.  [default: all cores]")
def predict(model, images, top_k, qat, as_json, backend, threads):
    """Top-k labels and scores for each IMAGE, or each image in a folder given (a .tflite
    MODEL needs no TensorFlow; a run folder uses its Keras model)."""
    import json

    from tledge.measure.evaluate import load_predictor
    from tledge.runtime import load_rgb, top_classes
    from tledge.runtime.preprocess import image_files, resize_rgb

    files = image_files(images)
    predictor = load_predictor(model, qat=qat, backend=backend, threads=threads)
    failed = []
    for image in files:  # every file gets its line; a bad one does not stop the others
        try:
            pixels = resize_rgb(load_rgb(image), predictor.image_size)
        except TledgeError as e:
            failed.append(str(image))
            if as_json:
                click.echo(json.dumps({"image": str(image), "error": str(e)}))
            click.secho(f"{image}: error: {e}", fg="red", err=True)
            continue
        ranked = top_classes(predictor.predict(pixels[None])[0], predictor.labels, top_k)
        if as_json:
            click.echo(json.dumps({"image": str(image), "top_k": [
                {"label": c.label, "score": round(float(c.score), 6)} for c in ranked]}))
        else:
            click.echo(f"{image}: " + ", ".join(f"{c.label} ({c.score:.3f})" for c in ranked))
    if failed:
        raise TledgeError(f"{len(failed)} of {len(files)} image(s) could not be read: "
                          f"{', '.join(failed[:3])}{'...' if len(failed) > 3 else ''}")


for _command in (bench, camera, collect, deploy, doctor, pull, tune):
    main.add_command(_command)
