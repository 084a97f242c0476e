"""Typed options for every tledge job, and their YAML form.

No TensorFlow here (nor anything that imports it): the CLI, the tests and a Raspberry Pi import
this module cheaply. Each phase of the recipe has its own frozen dataclass; variants are made
with ``dataclasses.replace`` and a caller's object is never mutated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from tledge.core.errors import TledgeError, first_line
from tledge.core.fieldcheck import check_choice, check_range, check_types

BACKBONES = ("mobilenet_v2", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
             "mobilenet_v3_small_minimalistic", "mobilenet_v3_large_minimalistic",
             "efficientnet_lite0", "vgg16")
# MobileNetV2 widths that Keras has ImageNet weights for.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
FORMATS = ("fp32", "fp16", "dynamic", "int8")
STRATEGIES = ("auto", "mirrored", "multi-worker", "none")
# auto: balanced where the training split's classes differ by 1.5x or more, else none
CLASS_WEIGHTS = ("auto", "balanced", "none")
SCHEDULES = ("constant", "cosine")
BATCHNORM = ("frozen", "train")
BACKENDS = ("litert", "tflite_runtime", "tensorflow")  # TFLite interpreters, preferred first
DATA_CACHES = ("auto", "memory", "disk")  # where decoded images live: tledge.data.cache


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: a tledge config never needs ``*name``, and nine
    levels of aliases to aliases make a list of a billion items out of a few hundred bytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a tledge config", mark)
        return super().compose_node(parent, index)


@dataclass(frozen=True)
class DataOptions:
    """Where the images come from and how they are split and fed.

    Attributes:
      source: a folder with one subfolder per class, or a built-in name: ``shapes`` (generated,
        offline), ``cifar10``, ``fashion_mnist``.
      image_size: side of the square model input, in pixels. Images are resized to it by
        stretching (bilinear), the same function the device runtime uses.
      val_split: fraction of each class held out for validation (stratified, seeded).
      limit: at most this many images per class from the training pool (None: all).
      augment: random flip, rotation, zoom and contrast on training batches only.
      batch_size: images per training step.
      shapes_per_class: images per class that ``shapes`` generates for its training pool.
      cache: where decoded images live: ``memory``, ``disk`` (decoded once into a cache file,
        reused by later runs, read back per batch: memory stays flat however large the set), or
        ``auto``: disk when the decoded set exceeds 128 MiB (tledge.data.cache).
      test_source: a class-per-folder tree with the same classes, evaluated after every phase
        as the test split (built-in sets bring their own; a folder source has none otherwise).
    """

    source: str = "shapes"
    image_size: int = 96
    val_split: float = 0.1
    limit: Optional[int] = None
    augment: bool = False
    batch_size: int = 32
    shapes_per_class: int = 200
    cache: str = "auto"
    test_source: Optional[str] = None

    def __post_init__(self) -> None:
        check_types(self)
        if self.cache not in DATA_CACHES:
            raise TledgeError(f"unknown --data-cache {self.cache!r}: choose one of "
                              f"{', '.join(DATA_CACHES)}")
        check_range(self, "val_split", 0.0, 1.0, low_open=True, high_open=True)
        check_range(self, "image_size", 32, 2048)
        check_range(self, "limit", 2)
        check_range(self, "batch_size", 1, 65536)
        check_range(self, "shapes_per_class", 2, 1_000_000)


@dataclass(frozen=True)
class ModelOptions:
    """The classifier's architecture, apart from how it is trained.

    Attributes:
      backbone: a name from the backbone registry (``mobilenet_v2``, ``resnet50``).
      alpha: width multiplier of MobileNetV2 and MobileNetV3; ignored by the others.
      weights: ``imagenet`` (downloaded by Keras and cached), ``none`` (random init), or the
        path of a Keras weights file for the backbone without its top.
      head_units: width of an optional hidden dense layer in the head (0: none).
      dropout: dropout rate before the head's dense layers.
    """

    backbone: str = "mobilenet_v2"
    alpha: float = 1.0
    weights: str = "imagenet"
    head_units: int = 0
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_types(self)
        if self.backbone not in BACKBONES:
            raise TledgeError(
                f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONES)}")
        check_range(self, "dropout", 0.0, 1.0, high_open=True)
        check_range(self, "head_units", 0, 65536)
        check_range(self, "alpha", 0.0, 4.0, low_open=True)
        alphas = IMAGENET_ALPHAS if self.backbone == "mobilenet_v2" else \
            (1.0,) if self.backbone.endswith("_minimalistic") else \
            (0.75, 1.0) if self.backbone.startswith("mobilenet_v3") else None
        if alphas and self.weights == "imagenet" and self.alpha not in alphas:
            raise TledgeError(f"--alpha {self.alpha:g} has no ImageNet weights for "
                              f"{self.backbone}: choose one of "
                              f"{', '.join(f'{a:g}' for a in alphas)}, or --weights none")


@dataclass(frozen=True)
class PhaseHParams:
    """One phase of the recipe: how long and how fast.

    The defaults are phase 1's (the head on a frozen backbone), measured in
    benchmarks/recipe.md: on standardised features (TrainOptions.feature_norm) a head takes a
    higher rate than the Keras tutorials' constant 1e-3 when the rate decays over the phase.

    Attributes:
      epochs: passes over the training split; 0 skips the phase.
      learning_rate: Adam's (peak) learning rate for this phase.
      schedule: ``constant`` or ``cosine``: decay from learning_rate to 1% of it over the
        phase, so the last epochs refine at a small rate.
    """

    epochs: int = 5
    learning_rate: float = 3e-3
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        check_types(self)
        check_range(self, "epochs", 0, 100_000)
        check_range(self, "learning_rate", 0.0, 10.0, low_open=True)
        check_choice(self, "schedule", SCHEDULES)


@dataclass(frozen=True)
class FineTuneHParams(PhaseHParams):
    """Phase 2: the top of the backbone unfrozen, at a much lower learning rate.

    Attributes:
      epochs: as in PhaseHParams.
      learning_rate: as in PhaseHParams; 1/10 of phase 1's (measured in
        benchmarks/recipe.md; the Keras guides use 1/10 to 1/100 of it).
      unfreeze: how much of the backbone trains: ``auto`` (set per backbone in
        tledge.models.REGISTRY: all of MobileNetV2, measured in benchmarks/recipe.md; the start
        of the last block or blocks of the others), a number of its top layers, the name of
        the first layer to unfreeze (everything after it too), or ``all``.
        BatchNorm layers of a pretrained backbone stay frozen, in inference mode, unless
        ``batchnorm`` says train.
      schedule: as in PhaseHParams (the Keras tutorials: constant).
      warmup: fraction of the phase's steps over which the rate rises linearly from 1/100 of
        learning_rate to it, before the schedule (0: none). Newly unfrozen layers then start
        from small updates while Adam's moment estimates settle.
      batchnorm: ``frozen``: a pretrained backbone's BatchNorm layers stay in inference mode
        with their ImageNet statistics (the Keras fine-tuning guide); ``train``: those in the
        unfrozen part normalise with batch statistics and update their moving ones. A randomly
        initialised backbone's always train.
    """

    epochs: int = 5
    learning_rate: float = 1e-4
    unfreeze: str = "auto"
    schedule: str = "cosine"
    warmup: float = 0.1
    batchnorm: str = "frozen"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "warmup", 0.0, 1.0, high_open=True)
        check_choice(self, "batchnorm", BATCHNORM)
        check_unfreeze(self.unfreeze, "--unfreeze")


def check_unfreeze(spec: str, flag: str, extra: tuple = ()) -> None:
    """An unfreeze point: a number of top layers, 'all', a layer name, or one of ``extra``."""
    spec = spec.strip()
    name_chars = spec.replace("_", "").replace("/", "").replace("-", "").replace(".", "")
    if not (spec in ("all", *extra) or spec.isdigit() or name_chars.isalnum()):
        raise TledgeError(f"{flag} {spec!r} is neither a number of layers, 'all' nor a layer "
                          f"name: pass e.g. {flag} 30")


@dataclass(frozen=True)
class QATHParams(PhaseHParams):
    """Phase 3: quantization-aware training of the fine-tuned model.

    Attributes:
      enabled: run the phase at all.
      epochs: as in PhaseHParams.
      learning_rate: as in PhaseHParams; small, the model is already trained.
      schedule: as in PhaseHParams.
      unfreeze: which layers adapt to quantization: ``all`` (every layer), ``finetune``
        (those phase 2 trained: its ``unfreeze``), or a point as phase 2 takes one (a number
        of top layers, a layer name). Below it the weights stay and the fake-quantization
        ranges stay where calibration put them, so without augmentation the bottom's
        quantized activations are computed once (as phase 2's are) and QAT pays for the top
        alone: 2.1-2.2x faster, and 0.23-0.34 points of test accuracy lower than ``all`` in the
        two runs measured (benchmarks/train_speed.md), so ``all`` stays the default.
    """

    enabled: bool = True
    epochs: int = 2
    learning_rate: float = 1e-5
    schedule: str = "constant"
    unfreeze: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_unfreeze(self.unfreeze, "--unfreeze-qat", ("finetune",))


@dataclass(frozen=True)
class TrainOptions:
    """How the three phases run.

    Attributes:
      frozen: phase 1, the head alone on a frozen backbone.
      finetune: phase 2, the top of the backbone unfrozen.
      qat: phase 3, quantization-aware training.
      early_stop: stop a phase after this many epochs without a better validation accuracy
        (None: never). The best epoch of each phase is kept either way.
      seed: seeds the split, the shuffling, augmentation and weight init.
      strategy: ``auto`` (MirroredStrategy when more than one GPU is visible), ``mirrored``
        (always: over the GPUs, or over the logical CPUs when there is no GPU),
        ``multi-worker`` (MultiWorkerMirroredStrategy over the machines in TF_CONFIG), ``none``.
      mixed_precision: float16 compute on GPU (ignored, with a warning, on a CPU).
      feature_cache: when augmentation is off, phase 1 computes the backbone's features once and
        fits the head on them, then puts the head's weights back into the full model.
      feature_norm: phase 1 fits the head on standardised backbone features (each feature's
        mean and standard deviation on the training split, or on a sample of it when phase 1
        runs on images), then folds the standardisation into the head's first dense layer:
        the saved model is the same architecture, with no extra layer.
      init_from: start from this run folder's float model instead of fresh backbone weights
        (to redo QAT, or fine-tune further, without repeating the earlier phases).
      label_smoothing: the share of each label spread over the other classes in the loss of
        every phase (0: plain cross-entropy).
      backup_dir: multi-worker runs: where each phase's BackupAndRestore state goes, read by
        every worker when the cluster restarts (on several hosts: a path they all see). None:
        a folder in tledge's cache named after the run folder.
      cluster_timeout: multi-worker runs: seconds to wait for every worker of TF_CONFIG to be
        up before giving up with an error (TensorFlow's own default is to wait for ever).
      class_weight: ``balanced`` weighs each class's loss by n / (classes x its images), in
        every phase; ``none`` does not; ``auto``, when the training split's largest class has
        1.5x the images of its smallest or more, by the square root of that in the float
        phases and by that itself in QAT (tledge.training.fitting.class_balance: measured the
        better test accuracy and rare-class recall).
    """

    frozen: PhaseHParams = field(default_factory=PhaseHParams)
    finetune: FineTuneHParams = field(default_factory=FineTuneHParams)
    qat: QATHParams = field(default_factory=QATHParams)
    early_stop: Optional[int] = None
    seed: int = 42
    strategy: str = "auto"
    mixed_precision: bool = False
    feature_cache: bool = True
    feature_norm: bool = True
    init_from: Optional[str] = None
    backup_dir: Optional[str] = None
    label_smoothing: float = 0.1
    cluster_timeout: float = 300.0
    class_weight: str = "auto"

    def __post_init__(self) -> None:
        check_types(self)
        check_choice(self, "class_weight", CLASS_WEIGHTS)
        for name, cls in (("frozen", PhaseHParams), ("finetune", FineTuneHParams),
                          ("qat", QATHParams)):
            if type(getattr(self, name)) is not cls:
                raise TledgeError(f"train.{name} must be a {cls.__name__}")
        if self.strategy not in STRATEGIES:
            raise TledgeError(
                f"unknown strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        check_range(self, "early_stop", 1, 100_000)
        check_range(self, "seed", 0, 2**32 - 1)
        check_range(self, "label_smoothing", 0.0, 1.0, high_open=True)
        check_range(self, "cluster_timeout", 1.0, 86_400.0)


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``tledge train`` run needs; saved resolved as ``config.yaml``.

    Attributes:
      data: DataOptions.
      model: ModelOptions.
      train: TrainOptions.
    """

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainOptions = field(default_factory=TrainOptions)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        return _build(cls, d, "")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        try:
            raw = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_ConfigLoader) or {}
        except RecursionError as cause:
            raise TledgeError(f"config file {path} is nested too deeply to be a tledge config: "
                              "pass a run's config.yaml or a file of the same shape") from cause
        except FileNotFoundError as cause:
            raise TledgeError(
                f"config file {path} does not exist: pass an existing YAML file") from cause
        except IsADirectoryError as cause:
            raise TledgeError(f"config file {path} is a folder: pass a YAML file (a run's "
                              "config.yaml)") from cause
        except PermissionError as cause:
            raise TledgeError(f"config file {path} cannot be read (permission denied)") from cause
        except (UnicodeDecodeError, ValueError) as cause:
            raise TledgeError(f"config file {path} is not a text file: pass a YAML file (a "
                              "run's config.yaml)") from cause
        except yaml.YAMLError as e:
            raise TledgeError(
                f"config file {path} is not valid YAML ({first_line(e)}): fix it") from e
        if not isinstance(raw, dict):
            raise TledgeError(f"config file {path} must hold a mapping of sections")
        return cls.from_dict(raw)

    def override(self, **sections: Mapping[str, Any]) -> "RunConfig":
        """A copy with fields replaced: ``override(data={"limit": 5}, train={"seed": 1})``.

        Nested phases take dicts too: ``train={"frozen": {"epochs": 0}}``. None values are
        dropped, so unset CLI flags leave the config's value in place.
        """
        cfg = self
        for name, values in sections.items():
            current = getattr(cfg, name)
            cfg = dataclasses.replace(cfg, **{name: _replace(current, values)})
        return cfg

    def __post_init__(self) -> None:
        for name, cls in (("data", DataOptions), ("model", ModelOptions),
                          ("train", TrainOptions)):
            if type(getattr(self, name)) is not cls:
                raise TledgeError(f"{name} must be a mapping of {cls.__name__} keys")


def _replace(obj: Any, values: Mapping[str, Any]) -> Any:
    changes = {}
    for key, value in values.items():
        if value is None:
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = _replace(current, value)
        changes[key] = value
    return dataclasses.replace(obj, **changes) if changes else obj


def _build(cls: type, d: Mapping[str, Any], where: str) -> Any:
    name_of = where or "the config"
    if not isinstance(d, Mapping):
        raise TledgeError(f"{name_of} must be a mapping of keys, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(repr, set(d) - set(fields)))
    if unknown:
        raise TledgeError(f"unknown key(s) {', '.join(unknown)[:200]} in {name_of}: expected some "
                          f"of {', '.join(fields)}")
    kwargs = {}
    for name, value in d.items():
        sub = _nested_type(cls, name)
        path = f"{where}.{name}" if where else name
        kwargs[name] = _build(sub, value, path) if sub is not None else value
    return cls(**kwargs)


def _nested_type(cls: type, name: str) -> Optional[type]:
    default = getattr(cls(), name, None)
    return type(default) if dataclasses.is_dataclass(default) else None


@dataclass(frozen=True)
class ExportOptions:
    """What ``tledge export`` writes and how strictly it checks it.

    Attributes:
      formats: any of fp32, fp16, dynamic (int8 weights, float activations), int8 (full
        integer: int8 weights and activations, uint8 input and output).
      calibration: training images that calibrate post-training int8 quantization.
      ptq: quantize int8 after training even when the run has a QAT model (to compare).
      max_drop: accuracy points a file may lose against the float Keras model on the
        validation split before the export fails.
      eval_limit: validate on at most this many validation images (None: all of them).
      debug: write the per-layer int8 error report (quant_debug.csv and .png); it is written
        anyway when the int8 file fails the gate.
      keep_float: layers (names from the report) that stay float in the int8 file, or
        ("auto",): add the worst layers one at a time until the gate passes.
      bias_correction: post-training int8 only: correct each layer's bias for the mean error
        of its rounded weights (tledge.quantize.biascorrect).
    """

    formats: tuple = ("fp32",)
    calibration: int = 300
    ptq: bool = False
    max_drop: float = 1.0
    eval_limit: Optional[int] = None
    debug: bool = False
    keep_float: tuple = ()
    bias_correction: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        if any(not isinstance(n, str) or not n.strip() for n in self.keep_float):
            raise TledgeError(f"--keep-float takes layer names, got {self.keep_float!r}")
        if "auto" in self.keep_float and len(self.keep_float) > 1:
            raise TledgeError("--keep-float auto chooses the layers itself: pass it alone")
        if (self.keep_float or self.debug) and "int8" not in self.formats:
            raise TledgeError("--keep-float and --debug apply to --int8: add --int8")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise TledgeError(
                f"unknown export format(s) {unknown}: choose from {', '.join(FORMATS)}")
        check_range(self, "calibration", 1, 1_000_000)
        check_range(self, "max_drop", 0.0, 100.0)
        check_range(self, "eval_limit", 1)
