"""Memory and speed of `tledge train` as the data set grows: peak RSS, data-loading time and
training images per second, from a class-per-folder tree of PNGs.

    python benchmarks/scale.py --images 1800 7200 30000 --baseline 4060459

Writes the folder of ``shapes`` PNGs once (max(--images) / 6 per class, in --folder), then runs
every size through ``tledge train --limit N/6`` in a fresh process, each process's peak resident
memory taken from the kernel (``getrusage`` of the child). Two runs per size:

* ``features``: the command of issue 12, phase 1 with its feature cache (backbone features
  computed once, the head fitted on them), one epoch;
* ``epochs``: phase 1 without the feature cache, two epochs: images stream through the backbone
  every epoch; images/s is train images / epoch seconds (history.json), first and second epoch.

Each version runs from a git worktree of its commit (--current, default HEAD). With the
current version each ``features`` run is made twice: the first decodes into the disk
cache (a fresh $TLEDGE_CACHE_DIR for the whole benchmark), the second reuses it. ``--baseline
REV`` runs the same commands with an older commit, sizes up to
--baseline-max only (its memory grows with the data). Writes
benchmarks/results/scale_<machine>.json and benchmarks/scale.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tledge.core.quiet import quiet_tensorflow_logs  # noqa: E402

PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(rc)")


def _write_class(args):
    label, start, stop, size, folder = args
    from PIL import Image

    from tledge.data.shapes import CLASSES, draw_shape

    out = Path(folder) / CLASSES[label]
    out.mkdir(parents=True, exist_ok=True)
    for index in range(start, stop):
        path = out / f"{index:06d}.png"
        if not path.exists():
            tmp = out / f".{index:06d}.png.tmp"
            Image.fromarray(draw_shape(label, 0, "train", index, size)).save(tmp, format="PNG")
            os.replace(tmp, path)


def write_folder(folder: Path, per_class: int, size: int) -> None:
    from tledge.data.shapes import CLASSES

    jobs = [(label, start, min(start + 500, per_class), size, str(folder))
            for label in range(len(CLASSES)) for start in range(0, per_class, 500)]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_write_class, jobs))


def run(python: list[str], args: list[str], env: dict, cwd: Path) -> dict:
    start = time.perf_counter()
    # cwd: `python -m` puts it first on sys.path, ahead of PYTHONPATH
    proc = subprocess.run([sys.executable, "-c", PEAK, *python, *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise click.ClickException(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak_kb = next(int(line.split()[1]) for line in proc.stdout.splitlines()
                   if line.startswith("PEAK_KB"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("data:")]
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak_kb / 1024), "log": lines}


@click.command()
@click.option("--render", "render_only", type=click.Path(exists=True, dir_okay=False),
              help="Only write benchmarks/scale.md from this results JSON.")
@click.option("--images", multiple=True, type=int, default=(1800, 7200, 30000),
              show_default=True, help="Data set sizes (total images, 6 classes).")
@click.option("--image-size", default=224, show_default=True)
@click.option("--folder", default="/tmp/tledge-scale", show_default=True,
              help="Where the PNG tree is written (kept for later runs).")
@click.option("--current", default="HEAD", show_default=True, help="The git revision measured.")
@click.option("--baseline", help="A git revision to compare with (its in-memory data path).")
@click.option("--baseline-max", default=7200, show_default=True)
@click.option("--out", default=str(ROOT / "benchmarks/results"), show_default=True)
def main(render_only, images, image_size, folder, current, baseline, baseline_max, out):
    if render_only:
        (ROOT / "benchmarks" / "scale.md").write_text(render(json.loads(
            Path(render_only).read_text())))
        return
    from tledge.measure.bench import machine_info

    folder = Path(folder) / f"shapes{image_size}"
    per_class_max = max(images) // 6
    click.echo(f"writing {per_class_max * 6} PNGs into {folder} (once)")
    write_folder(folder, per_class_max, image_size)

    work = Path(tempfile.mkdtemp(prefix="tledge-scale-"))
    env = quiet_tensorflow_logs({**os.environ, "TLEDGE_CACHE_DIR": str(work / "cache")})
    python = [str(ROOT / ".venv/bin/python"), "-m", "tledge.cli"]
    versions = []
    for name, rev in (("current", current), (f"baseline {baseline}", baseline)):
        if rev:  # each version from its own worktree: edits made meanwhile don't leak in
            tree = work / name.split()[0]
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree),
                            rev], check=True, capture_output=True)
            versions.append((name, python, {**env, "PYTHONPATH": str(tree)}, tree))
    common = ["train", "--data", str(folder), "--image-size", str(image_size), "--alpha", "0.35",
              "--weights", "none", "--no-augment", "--epochs-finetune", "0", "--no-qat",
              "--batch-size", "32", "--seed", "0", "--overwrite"]
    kinds = {"features": ["--epochs-frozen", "1"],
             "epochs": ["--epochs-frozen", "2", "--no-feature-cache"]}
    rows = []
    try:
        for n in images:
            for version, python, venv, tree in versions:
                if version != "current" and n > baseline_max:
                    continue
                for kind, extra in kinds.items():
                    repeats = 2 if version == "current" and kind == "features" else 1
                    for attempt in range(repeats):
                        run_dir = work / "run"
                        args = [*common, *extra, "--limit", str(n // 6), "--out", str(run_dir)]
                        result = run(python, args, venv, tree)
                        history = json.loads((run_dir / "history.json").read_text())
                        frozen = history["frozen"]
                        metrics = json.loads((run_dir / "metrics.json").read_text())
                        train_images = metrics["train_images"]
                        row = {"images": n, "version": version, "kind": kind,
                               "cache": "reused" if attempt else "first",
                               "train_images": train_images, **result,
                               "phase_s": frozen["seconds"],
                               "other_s": round(result["wall_s"] - frozen["seconds"], 1)}
                        if kind == "epochs":  # both epochs, validation included
                            row["images_per_s"] = round(2 * train_images / frozen["seconds"], 1)
                            row["epoch_s"] = frozen.get("epoch_seconds")
                            if row["epoch_s"]:
                                row["images_per_s_by_epoch"] = [
                                    round(train_images / s, 1) for s in row["epoch_s"]]
                        rows.append(row)
                        click.echo(json.dumps({k: v for k, v in row.items() if k != "log"}))
    finally:
        for name in ("current", "baseline"):
            if (work / name).exists():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(work / name)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    machine = machine_info()[0]["machine_id"]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"scale_{machine}.json").write_text(json.dumps(
        {"machine": machine, "platform": platform.platform(), "image_size": image_size,
         "command": " ".join(["python benchmarks/scale.py", *sum((["--images", str(n)]
                                                                   for n in images), []),
                              *(["--baseline", baseline] if baseline else [])]),
         "rows": rows}, indent=1))
    click.echo(f"wrote {out}/scale_{machine}.json")
    md = render(json.loads((Path(out) / f"scale_{machine}.json").read_text()))
    (ROOT / "benchmarks" / "scale.md").write_text(md)
    click.echo("wrote benchmarks/scale.md")


def render(result: dict) -> str:
    """benchmarks/scale.md from the JSON results."""
    rows = result["rows"]

    def pick(n, version, kind, cache="first"):
        return next((r for r in rows if r["images"] == n and r["version"].startswith(version)
                     and r["kind"] == kind and r["cache"] == cache), None)

    sizes = sorted({r["images"] for r in rows})
    versions = sorted({r["version"] for r in rows}, key=lambda v: v != "current")
    lines = [
        "# tledge train as the data set grows",
        "",
        f"Machine: `{result['machine']}` ({result['platform']}). Shapes PNGs at "
        f"{result['image_size']} px, MobileNetV2 alpha 0.35, random weights, no augmentation, "
        "batch 32, one process per run; peak RSS is the kernel's (getrusage of the child).",
        "",
        "    " + result["command"],
        "",
        "*features*: phase 1 with its feature cache, 1 epoch (the command of issue 12). "
        "*epochs*: phase 1 without it, 2 epochs, images through the backbone every epoch; "
        "images/s = 2 x train images / phase seconds (validation included), and per epoch. "
        "*load*: wall time outside the phase (start-up, decoding or reading the cache, "
        "building the model). *current* decodes into the disk cache on its first run and "
        "reuses it on the second; the baseline holds every image in memory.",
        "",
        "| images | version | peak RSS, features | load s: first / reused | peak RSS, epochs "
        "| images/s, 2 epochs | images/s, epoch 1 / 2 |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        for version in versions:
            f, e = pick(n, version, "features"), pick(n, version, "epochs")
            if f is None and e is None:
                continue
            again = pick(n, version, "features", "reused")
            load = f"{f['other_s']:.1f}" if f else "-"
            if again:
                load += f" / {again['other_s']:.1f}"
            by_epoch = " / ".join(f"{v:.0f}" for v in (e or {}).get("images_per_s_by_epoch") or [])
            lines.append(
                f"| {n:,} | {version} | {f['peak_rss_mb'] if f else '-':,} MB | {load} | "
                f"{e['peak_rss_mb'] if e else '-':,} MB | "
                f"{e['images_per_s'] if e else '-'} | {by_epoch or '-'} |")
    lines += ["", "## Ratios (same run)", ""]
    lo, hi = sizes[0], sizes[1] if len(sizes) > 1 else sizes[0]
    for version in versions:
        for kind in ("features", "epochs"):
            a, b = pick(lo, version, kind), pick(hi, version, kind)
            if a and b:
                lines.append(f"- {version}, {kind}: peak RSS at {hi:,} / at {lo:,} images = "
                             f"**{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x**")
    for n in sizes:
        cur, base = pick(n, "current", "epochs"), pick(n, "baseline", "epochs")
        if cur and base:
            lines.append(f"- {n:,} images: training images/s, current / baseline = "
                         f"**{cur['images_per_s'] / base['images_per_s']:.2f}**")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
