"""What ``tledge bench`` measured, as a table, Markdown, CSV, JSON and a latency chart.

A report may hold rows from more than one machine (``tledge bench --on HOST --compare-local``):
each such row names its machine in ``on``, and the table, CSV and chart gain that column.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np

from tledge.core import fileio
from tledge.core.errors import TledgeError

STAT_FIELDS = ("p50", "p90", "p99", "mean", "std")

# (header, what the column holds)
COLUMNS = [("model", "name"), ("format", ""), ("thr", "threads"), ("size MB", ""),
           ("load ms", ""), ("1st ms", "first inference"), ("invoke p50", ""),
           ("classify p50", ""), ("p90", ""), ("p99", ""), ("img/s", ""), ("overhead", ""),
           ("mem MB", "peak RSS"), ("acc", "accuracy"), ("min runtime", ""),
           ("XNNPACK", "partitions the delegate made"),
           ("reference kernels", "op types the delegate left")]


def columns(report: dict) -> list[tuple[str, str]]:
    """The table's columns: with an ``on`` column first when rows come from several machines."""
    return ([("on", "machine")] if _machines(report) else []) + COLUMNS


def _machines(report: dict) -> bool:
    return any("on" in r for r in report["results"])


def delegation_cells(row: dict) -> tuple[str, str]:
    """(partitions, the op types left to the reference kernels with their counts); "-" for a
    Keras row or a backend that does not list its nodes."""
    d = row.get("delegation")
    if not d:
        return "-", "-"
    left = ", ".join(f"{n} {op}" for op, n in sorted(d["undelegated"].items(),
                                                      key=lambda kv: (-kv[1], kv[0])))
    return str(d["partitions"]), left or "none"


def table_rows(report: dict) -> list[list[str]]:
    out = []
    for r in report["results"]:
        acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.4f}"
        out.append(([r.get("on", "")] if _machines(report) else []) + [
                    r["name"], r["format"] + (" (gpu)" if r["device"] == "gpu" else ""),
                    "-" if r["threads"] is None else str(r["threads"]),
                    f"{r['size_bytes'] / 1e6:.2f}", f"{r['load_ms']:.0f}", f"{r['first_ms']:.1f}",
                    f"{r['invoke']['p50']:.2f}", f"{r['classify']['p50']:.2f}",
                    f"{r['classify']['p90']:.2f}", f"{r['classify']['p99']:.2f}",
                    f"{r['throughput_ips']:.1f}", f"{r['classify_overhead_pct']:+.1f}%",
                    f"{r['memory_mb']:.0f}", acc, r.get("min_runtime") or "-",
                    *delegation_cells(r)])
    return out


# The terminal's table: the columns that choose a model, within 100 characters; the rest
# (load, first inference, p99, img/s, overhead, minimum runtime) in --markdown, --csv, --json.
TERMINAL = {"on": "on", "model": "model", "format": "format", "thr": "thr", "size MB": "MB",
            "invoke p50": "invoke", "classify p50": "classify", "p90": "p90", "mem MB": "mem MB",
            "acc": "acc", "XNNPACK": "XNNPACK"}


def format_table(report: dict) -> str:
    """The table bench prints: each column as wide as its widest cell (a model's name is never
    cut), then a line per model the delegate split, naming the op types it left."""
    heads = [h for h, _ in columns(report)]
    keep = [i for i, h in enumerate(heads) if h in TERMINAL]
    rows = [[row[i] for i in keep] for row in table_rows(report)]
    heads = [TERMINAL[heads[i]] for i in keep]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.append("MB: file size. Latency in ms: p50 of invoke() alone and of the classify path "
                 "(resize +\nquantize + invoke + top-k), p90 of the classify path. mem: peak RSS."
                 " XNNPACK: the partitions it made\n(1: the whole graph). --markdown, --csv and "
                 "--json add load time, first inference, p99, img/s,\noverhead and the minimum "
                 "runtime.")
    for r in report["results"]:
        partitions, left = delegation_cells(r)
        if partitions not in ("-", "1"):
            lines.append(f"{r['name']} ({r['format']}): {partitions} XNNPACK partitions; left "
                         f"to the reference kernels: {left}")
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    m = report["machine"]
    head = [h for h, _ in columns(report)]
    lines = [f"# tledge bench: {m['machine_id']}", "",
             f"- machine: {m.get('board', m['cpu'])}, {m['cores']} cores, {m['arch']}, {m['os']}",
             f"- Python {m['python']}; backends: "
             f"{', '.join(sorted({r['backend'] for r in report['results']})) or '-'}",
             f"- {report['options']['runs']} timed runs after {report['options']['warmup']} "
             f"warm-up, batch 1, seeded 640x480 frames handed over as the camera's capture thread "
             "hands them (just converted from BGR, not timed); latencies in ms, percentiles of "
             "the full classify path (resize + quantize + invoke + top-k); 'overhead' is "
             "classify p50 over bare invoke() p50, the two timed alternately",
             "- XNNPACK: the partitions the delegate cut the graph into (1: it took the graph "
             "whole); reference kernels: the op types it left (an int8 file's uint8 QUANTIZE "
             "at each end and its SOFTMAX always are, and cost little; an op between two "
             "partitions is what makes a file slow)",
             f"- measured {report['time']}", ""]
    if report.get("compared_with"):  # bench --on HOST --compare-local
        c = report["compared_with"]
        lines[3:3] = [f"- beside it, rows measured on {c['machine_id']}: "
                      f"{c.get('board', c['cpu'])}, {c['cores']} cores, {c['arch']} (column on)"]
    lines += [f"> WARNING: {w}" for w in report["warnings"]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    return "\n".join(lines) + "\n"


def to_csv(report: dict) -> str:
    buf = io.StringIO()
    fields = (["on"] if _machines(report) else []) + [
        "name", "model", "format", "device", "backend", "threads", "size_bytes", "load_ms",
        "first_ms"] + [f"invoke_{s}" for s in STAT_FIELDS] + \
             [f"classify_{s}" for s in STAT_FIELDS] + \
             ["throughput_ips", "classify_overhead_pct", "memory_mb", "peak_rss_mb", "accuracy",
              "min_runtime"]
    fields += ["xnnpack_partitions", "reference_kernel_ops"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in report["results"]:
        flat = {k: r.get(k) for k in fields}
        flat["xnnpack_partitions"], flat["reference_kernel_ops"] = delegation_cells(r)
        for kind in ("invoke", "classify"):
            for s in STAT_FIELDS:
                flat[f"{kind}_{s}"] = r[kind][s]
        writer.writerow(flat)
    return buf.getvalue()


def plot(report: dict, path: Path) -> None:
    """Latency per model (bar: p50, whisker: p90) and, where bench had --data, accuracy beside
    it on the same rows."""
    plt = fileio.pyplot()

    rows = report["results"]
    labels = [(f"{r['on']}: " if "on" in r else "") + f"{r['name']}\n{r['format']}"
              + (f" x{r['threads']}" if r["threads"] else f" ({r['device']})")
              + (f" [{delegation_cells(r)[0]} partitions]" if delegation_cells(r)[0] not in
                 ("-", "1") else "") for r in rows]
    split = sorted({f"{r['name']} {r['format']}: {delegation_cells(r)[1]}" for r in rows
                    if delegation_cells(r)[0] not in ("-", "1")})
    p50 = [r["classify"]["p50"] for r in rows]
    err = [[0.0] * len(rows), [r["classify"]["p90"] - r["classify"]["p50"] for r in rows]]
    colours = [{"fp32": "C0", "fp16": "C1", "dynamic": "C2", "int8": "C3",
                "keras-float": "C7"}.get(r["format"], "C4") for r in rows]
    accuracy = [r.get("accuracy") for r in rows]
    with_accuracy = any(a is not None for a in accuracy)
    fig, axes = plt.subplots(1, 2 if with_accuracy else 1, sharey=True, squeeze=False,
                             figsize=(12 if with_accuracy else 9, 0.45 * len(rows) + 1.5),
                             layout="constrained", width_ratios=[3, 2] if with_accuracy else None)
    ax = axes[0][0]
    y = np.arange(len(rows))
    ax.barh(y, p50, xerr=err, color=colours, capsize=3)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("classify latency, ms (bar: p50, whisker: p90)")
    fig.suptitle(f"tledge bench on {report['machine']['machine_id']}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if split:  # why a bar is long: the delegate did not take the whole graph
        ax.set_xlabel(ax.get_xlabel() + "\nnot fully delegated to XNNPACK, left to the "
                      "reference kernels:\n" + "\n".join(split), fontsize=8)
    if with_accuracy:
        acc_ax = axes[0][1]
        known = [100.0 * a if a is not None else 0.0 for a in accuracy]
        acc_ax.barh(y, known, color=colours)
        low = max(0.0, min(100.0 * a for a in accuracy if a is not None) - 10.0)
        for yi, a in zip(y, accuracy):  # the figure inside its bar's end ("-": not measured)
            acc_ax.text(low if a is None else 100.0 * a, yi, " -" if a is None else
                        f"{100.0 * a:.2f}% ", ha="left" if a is None else "right",
                        va="center", fontsize=7, color="black" if a is None else "white")
        acc_ax.set_xlim(low, 100.0)
        acc_ax.set_xlabel("accuracy on --data, %")
        acc_ax.grid(axis="x", alpha=0.3)
    fileio.save_png(fig, path)


def write_outputs(report: dict, json_path=None, csv_path=None, md_path=None,
                  chart_path=None, echo: Callable[[str], None] = print) -> list[Path]:
    """Write every output asked for. One that fails (a disk filled up during the run) does not
    cost the others: each is tried, and the failures are reported together at the end."""
    jobs = [(json_path, lambda p: fileio.write_json(p, report)),
            (csv_path, lambda p: fileio.write_text(p, to_csv(report))),
            (md_path, lambda p: fileio.write_text(p, to_markdown(report))),
            (chart_path, lambda p: plot(report, Path(p)))]
    written, failed = [], []
    for path, write in jobs:
        if not path:
            continue
        try:
            write(path)
        except OSError as e:
            failed.append(f"{path} ({e.strerror or type(e).__name__})")
            continue
        written.append(Path(path))
        echo(f"wrote {path}")
    if failed:
        raise TledgeError(f"could not write {', '.join(failed)}; the measurements are in the "
                          "table above" + (" and in " + ", ".join(map(str, written))
                                           if written else ""))
    return written
