"""What ``tledge tune`` found: a table (terminal, Markdown; tune.json holds every figure), a
chart of validation accuracy against measured latency with the budget and the Pareto front,
and best.yaml, the winner's config for ``tledge train --config``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tledge.core import fileio

HEADS = ("candidate", "ms p50", "MB", "validation", "train s", "status")


def rows(state: dict, best: str) -> list[dict]:
    """Every candidate's figures, the trained ones by score, then the rest by latency."""
    out = []
    for name, c in state["candidates"].items():
        last = c["rounds"][-1] if c.get("rounds") else None
        status = ("best" if name == best else c.get("dropped") or
                  ("not trained: the time budget ran out" if last is None and
                   c.get("latency_ms") is not None else "kept" if last else "not measured"))
        out.append({"candidate": name, "latency_ms": c.get("latency_ms"),
                    "size_mb": None if c.get("size_bytes") is None else c["size_bytes"] / 1e6,
                    "score": None if last is None else last["score"],
                    "monitor": None if last is None else last["monitor"],
                    "epochs": None if last is None else last["epochs"],
                    "weights": None if last is None else Path(str(last.get("weights"))).name,
                    "train_s": c.get("trained_seconds"), "status": status})
    return sorted(out, key=lambda r: (r["score"] is None, -(r["score"] or 0),
                                      r["latency_ms"] if r["latency_ms"] is not None else 1e9))


def pareto(table: list[dict]) -> set:
    """The candidates no other beats on both latency and validation score."""
    trained = [r for r in table if r["score"] is not None]
    return {r["candidate"] for r in trained
            if not any(o["latency_ms"] <= r["latency_ms"] and o["score"] >= r["score"] and
                       (o["latency_ms"] < r["latency_ms"] or o["score"] > r["score"])
                       for o in trained)}


def _cells(r: dict) -> list[str]:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)
    return [r["candidate"], num(r["latency_ms"], ".2f"), num(r["size_mb"], ".2f"),
            num(r["score"], ".4f"), num(r["train_s"], ".0f"), r["status"]]


def format_table(table: list[dict]) -> str:
    """The terminal's table: a status that would pass 100 characters is cut with '...'."""
    cells = [list(HEADS)] + [_cells(r) for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADS) - 1)]
    room = max(20, 100 - sum(widths) - 2 * (len(widths)))
    lines = []
    for row in cells:
        status = row[-1] if len(row[-1]) <= room else row[-1][:room - 3] + "..."
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + status)
    return "\n".join(lines)


def to_markdown(state: dict, table: list[dict], options) -> str:
    machine = next((c.get("machine") for c in state["candidates"].values() if c.get("machine")),
                   "?")
    front = pareto(table)
    lines = [f"# tledge tune: {options.data}, at most {options.max_latency_ms:g} ms", "",
             f"- latency: the int8 classify path's p50 on {machine} "
             f"({options.on or 'this machine'}), {options.threads} thread(s), random weights",
             f"- validation: tledge's recipe, QAT off, {options.epochs} epoch(s) per phase in "
             "the first round, doubled each round (successive halving), then exported: the "
             "int8 file's accuracy (the float model's balanced accuracy where the classes are "
             "imbalanced); a model that does not convert is never picked",
             *_round0(state), *_image_worth(state), "- *: on the Pareto front", "",
             "| candidate | ms p50 | MB | validation | epochs | weights | train s | status |",
             "|---|---:|---:|---:|---:|---|---:|---|"]
    for r in table:
        c = _cells(r)
        lines.append(f"| {c[0]}{' *' if r['candidate'] in front else ''} | {c[1]} | {c[2]} | "
                     f"{c[3]} | {r['epochs'] or '-'} | {r['weights'] or '-'} | {c[4]} | "
                     f"{c[5]} |")
    return "\n".join(lines) + "\n"


def val_images(state: dict) -> int | None:
    """The validation images a trained candidate was scored on (every candidate the same)."""
    return next((r["val_images"] for c in state["candidates"].values()
                 for r in c.get("rounds", []) if r.get("val_images")), None)


def _round0(state: dict) -> list[str]:
    r0 = state.get("round0") or {}
    if not r0.get("sized_by"):
        return []
    by = r0["sized_by"]
    return [f"- round 0 on {r0['limit']} images a class, of {r0['per_class']}: on all of them "
            f"it would have overrun half the time left ({by['candidate']}, the fastest, took "
            f"{by['seconds']:.0f} s); later rounds on all"]


def _image_worth(state: dict) -> list[str]:
    n = val_images(state)
    return [] if not n else [
        f"- {n} validation images: one image is {100 / n:.1f} points, and a score's two "
        f"standard errors up to +-{200 * (0.25 / n) ** 0.5:.0f} points: candidates a few images "
        "apart are within chance of each other (a tie goes to the lower validation loss)"]


def plot(table: list[dict], options, path: Path) -> None:
    plt = fileio.pyplot()

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    trained = [r for r in table if r["score"] is not None]
    if trained:
        ax.scatter([r["latency_ms"] for r in trained], [100 * r["score"] for r in trained],
                   color="C0", label="trained")
        for r in trained:
            ax.annotate(r["candidate"], (r["latency_ms"], 100 * r["score"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        front = sorted((r for r in trained if r["candidate"] in pareto(table)),
                       key=lambda r: r["latency_ms"])
        ax.plot([r["latency_ms"] for r in front], [100 * r["score"] for r in front], "C2-",
                label="Pareto front")
        best = next((r for r in table if r["status"] == "best"), None)
        if best is not None:
            ax.scatter([best["latency_ms"]], [100 * best["score"]], marker="*", s=250,
                       color="C3", zorder=3, label=f"best: {best['candidate']}")
    over = [r for r in table if r["score"] is None and r["latency_ms"] is not None]
    if over:
        low = min([100 * r["score"] for r in trained] or [0.0])
        ax.scatter([r["latency_ms"] for r in over], [low] * len(over), marker="x",
                   color="C7", label="not trained (over budget, or out of time)")
    ax.axvline(options.max_latency_ms, color="C3", linestyle="--",
               label=f"budget {options.max_latency_ms:g} ms")
    ax.set_xlabel(f"int8 classify latency p50, ms ({options.on or 'this machine'}, "
                  f"{options.threads} thread(s))")
    ax.set_ylabel("validation accuracy, %")
    ax.set_title(f"tledge tune on {options.data}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fileio.save_png(fig, path)


def best_config(state: dict, options, best: str):
    """The winner as a RunConfig: its backbone, width, size and weights, the full recipe on
    all the data (tune's --limit, which kept the search short, is not carried over)."""
    from tledge.core.config import DataOptions, ModelOptions, RunConfig

    c = state["candidates"][best]
    weights = c["rounds"][-1].get("weights") or "none"
    return RunConfig(data=DataOptions(source=options.data, image_size=int(c["image_size"])),
                     model=ModelOptions(backbone=c["backbone"], alpha=float(c["alpha"]),
                                        weights="none" if weights == "random" else weights))


def write_outputs(state: dict, options, best, echo: Callable[[str], None] = print) -> None:
    """tune.md, tune.png and best.yaml into the tune's folder, and the table and the next
    command on the terminal."""
    out = Path(options.out)
    table = rows(state, best.name)
    echo(format_table(table))
    fileio.write_text(out / "tune.md", to_markdown(state, table, options))
    plot(table, options, out / "tune.png")
    fileio.write_text(out / "best.yaml", best_config(state, options, best.name).to_yaml())
    entry = state["candidates"][best.name]
    n = val_images(state)
    echo(f"best: {best.name}, {entry['latency_ms']:.2f} ms, validation "
         f"{entry['rounds'][-1]['score']:.4f}"
         + (f" on {n} images (one image: {100 / n:.1f} points)" if n else "")
         + f"; table, chart and config in {out} (tune.md, tune.png, best.yaml)")
    echo(f"next: tledge train --config {out / 'best.yaml'} --data {options.data}")

