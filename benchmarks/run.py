"""`make bench`: build the reference models when missing, time them all, write the results.

    python benchmarks/run.py [--weights PATH|imagenet|none] [--runs 100] [--threads 1,2]

Reference models (benchmarks/models/, not committed): MobileNetV2 1.0 at 224 and at 96, and at
224 ResNet50, MobileNetV3 Small and Large (and their minimalistic forms), EfficientNet-Lite0
and VGG16, each as a run folder (the float Keras model) and as fp32, fp16, dynamic and int8
TFLite files. Latency does not depend on the weights' values; MobileNetV2 uses --weights (the
pretrained backbone when given), the others random weights; every head is random. int8 is
post-training quantization calibrated on 100 generated `shapes` images, made by tledge's own
conversion (bias correction, HARD_SWISH written for XNNPACK).

Results go to benchmarks/results/<machine>.md, .json and .png, <machine> naming this machine
class (a Pi's board model, else CPU model and core count).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tledge.core.quiet import quiet_tensorflow_logs
quiet_tensorflow_logs()
HERE = Path(__file__).resolve().parent
MODELS = [("mobilenet_v2", 1.0, 224), ("mobilenet_v2", 1.0, 96), ("resnet50", 1.0, 224),
          ("mobilenet_v3_small", 1.0, 224), ("mobilenet_v3_large", 1.0, 224),
          ("mobilenet_v3_small_minimalistic", 1.0, 224),
          ("mobilenet_v3_large_minimalistic", 1.0, 224),
          ("efficientnet_lite0", 1.0, 224), ("vgg16", 1.0, 224)]
FORMATS = ("fp32", "fp16", "dynamic", "int8")


def build(backbone: str, alpha: float, size: int, weights: str, root: Path) -> Path:
    """A run folder with model.keras and model_<format>.tflite files; skipped when complete."""
    from tledge.core import fileio, rundir
    from tledge.core.config import RunConfig
    from tledge.data.shapes import CLASSES, generate
    from tledge.export import QuantizationConfig, check_quantized, convert
    from tledge.models import build_classifier

    name = f"{backbone}_{alpha:g}_{size}" if backbone == "mobilenet_v2" else f"{backbone}_{size}"
    folder = root / name
    if all((folder / f"model_{f}.tflite").is_file() for f in FORMATS) and \
            (folder / rundir.FLOAT_MODEL).is_file():
        return folder
    from tledge.core.quiet import import_tensorflow

    import_tensorflow()  # with the filter of native noise (the converter's debug print)
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    w = weights if backbone == "mobilenet_v2" else "none"
    config = RunConfig().override(data={"image_size": size},
                                  model={"backbone": backbone, "alpha": alpha, "weights": w})
    model = build_classifier(config.model, len(CLASSES), size)
    fileio.write_text(folder / rundir.CONFIG, config.to_yaml())
    fileio.write_labels(folder / rundir.LABELS, CLASSES)
    fileio.write_text(folder / "WEIGHTS.txt", f"backbone weights: {w}; head: random\n")
    with fileio.atomic_path(folder / rundir.FLOAT_MODEL) as tmp:
        model.save(tmp)
    calibration = generate(17, size, seed=0)[0][:100]
    for fmt in FORMATS:
        qconfig = (QuantizationConfig.for_int8(calibration) if fmt == "int8" else
                   getattr(QuantizationConfig, {"fp32": "for_float32", "fp16": "for_float16",
                                                "dynamic": "for_dynamic"}[fmt])())
        raw = convert(model, qconfig)
        check_quantized(raw, fmt)
        fileio.write_bytes(folder / f"model_{fmt}.tflite", raw)
        click.echo(f"built {folder.name}/model_{fmt}.tflite ({len(raw) / 1e6:.1f} MB)")
    keras.backend.clear_session()
    return folder


@click.command()
@click.option("--weights", default="imagenet", show_default=True,
              help="MobileNetV2 backbone weights (latency does not depend on them).")
@click.option("--runs", default=100, show_default=True)
@click.option("--warmup", default=5, show_default=True)
@click.option("--threads", default=None, help="Comma-separated thread counts [default: 1 and "
              "all cores].")
@click.option("--models-dir", default=str(HERE / "models"), show_default=True)
@click.option("--results-dir", default=str(HERE / "results"), show_default=True)
@click.option("--build-only", is_flag=True, help="Build the reference models, time nothing.")
def main(weights, runs, warmup, threads, models_dir, results_dir, build_only):
    from tledge.measure import bench, benchreport
    from tledge.core.errors import TledgeError

    try:
        folders = [build(b, a, s, weights, Path(models_dir)) for b, a, s in MODELS]
        if build_only:
            return
        models = []
        for folder in folders:
            models += [str(folder / f"model_{f}.tflite") for f in FORMATS] + [str(folder)]
        kwargs = {"runs": runs, "warmup": warmup}
        if threads:
            kwargs["threads"] = tuple(int(t) for t in threads.split(","))
        report = bench.bench(models, bench.BenchOptions(**kwargs), echo=click.echo)
    except TledgeError as e:
        click.secho(f"Error: {e}", fg="red", err=True)
        sys.exit(1)
    report["weights"] = {Path(f).name: (Path(f) / "WEIGHTS.txt").read_text().strip()
                         for f in folders}
    click.echo(benchreport.format_table(report))
    stem = Path(results_dir) / report["machine"]["machine_id"]
    benchreport.write_outputs(report, f"{stem}.json", None, f"{stem}.md", f"{stem}.png",
                        echo=click.echo)


if __name__ == "__main__":
    main()
