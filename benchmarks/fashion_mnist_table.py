"""Turn the run folders and evaluation reports of benchmarks/fashion_mnist.sh into the
Markdown table committed as benchmarks/fashion_mnist.md."""

import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def cell(p) -> str:
    if not p:
        return "-"
    return (f"{100 * p['test_accuracy']:.2f}% (val {100 * p['val_accuracy']:.2f}%, "
            f"epoch {p['best_epoch']}, {p['seconds'] / 60:.1f} min)")


def main(out: str) -> None:
    root = Path(out)
    t, s = load(root / "transfer" / "metrics.json"), load(root / "scratch" / "metrics.json")
    lines = [
        "# Fashion-MNIST at 96x96: transfer vs scratch, and every export format", "",
        "Produced by `bash benchmarks/fashion_mnist.sh` (commands and settings there): "
        "MobileNetV2 1.0, the offline pretrained backbone of `../shared/weights/` "
        "(ImageNet-initialised, fine-tuned on Stanford Dogs), 1,800 training and 200 "
        "validation images per class (`--limit 2000 --val-split 0.1`), accuracy on the full "
        "10,000-image test split. 2 CPU cores; phase times include the test evaluation and "
        "were taken with other jobs sharing the cores, so they are not speed figures.", "",
        "## Training", "",
        "| phase | transfer (pretrained) | scratch (`--weights none`) |", "|---|---:|---:|"]
    for phase in ("frozen", "finetune", "qat"):
        tp, sp = t["phases"].get(phase), s["phases"].get(phase)
        if not tp and not sp:
            continue
        lines.append(f"| {phase} | {cell(tp)} | {cell(sp)} |")
    lines += ["", "## Export formats (test split, 10,000 images)", "",
              "| model | source | size | test accuracy | vs float | int8 input / output |",
              "|---|---|---:|---:|---:|---|"]
    float_eval = load(root / "transfer" / "evaluation_fashion_mnist" / "evaluation.json")
    base = float_eval["accuracy"]
    lines.append(f"| Keras float (model.keras) | float | "
                 f"{(root / 'transfer' / 'model.keras').stat().st_size / 1e6:.2f} MB | "
                 f"{100 * base:.2f}% | - | float32 / float32 |")
    sizes = {}
    for folder, source in (("export", None), ("export_ptq", "PTQ")):
        report = load(root / "transfer" / folder / "export_report.json")
        for r in report["formats"]:
            path = Path(r["path"])
            ev = load(path.with_name(f"{path.stem}_evaluation_fashion_mnist") / "evaluation.json")
            sizes[(r["format"], r["source"])] = r["size_bytes"]
            q = r["quantization"]
            lines.append(
                f"| {path.name} ({folder}) | {r['source'] if source is None else source} | "
                f"{r['size_bytes'] / 1e6:.2f} MB | {100 * ev['accuracy']:.2f}% | "
                f"{100 * (ev['accuracy'] - base):+.2f} | {q['input_dtype']} / "
                f"{q['output_dtype']} |")
    fp32 = sizes.get(("fp32", "float"))
    int8 = sizes.get(("int8", "qat")) or sizes.get(("int8", "float"))
    if fp32 and int8:
        lines += ["", f"int8 file size: {100 * int8 / fp32:.1f}% of the fp32 file."]
    lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1])
