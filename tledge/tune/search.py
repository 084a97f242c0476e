"""``tledge tune``: the most accurate model that meets a latency budget, measured on the device.

Latency first: every candidate's int8 file is built (random weights: latency does not depend
on them, only on the graph, its shapes and the kernels they select) and timed where the model
will run, the classify path's p50 at the threads given; a candidate over the budget is dropped
with its figure and never trained. Then accuracy, by successive halving: every candidate that
fits trains briefly (``epochs`` of the frozen phase and of fine-tune, QAT off; on fewer images
a class where that round would take over half the time left), the better half trains again for
twice as long, and so on until one is left or ``--time-budget`` is spent.

Everything tune learns is written to ``DIR/tune.json`` after each step: a tune run again with
the same options goes on where it stopped (Ctrl-C, a device that went away).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from tledge.core import fileio
from tledge.core.errors import TledgeError
from tledge.tune.options import TuneOptions, parse_duration  # noqa: F401 (the CLI's)
from tledge.tune.space import Candidate, load_space

STATE = "tune.json"


class State:
    """DIR/tune.json: every candidate's figures, written after each step."""

    def __init__(self, options: TuneOptions, candidates: list[Candidate]):
        self.path = Path(options.out) / STATE
        self.data = {"identity": options.identity(), "candidates": {}}
        if self.path.is_file():
            import json

            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError) as e:
                raise TledgeError(f"{self.path} cannot be read ({e}): pass another --out, or "
                                  "delete it to tune from the start") from e
            if saved.get("identity") != self.data["identity"]:
                raise TledgeError(f"{options.out} holds a tune of other options "
                                  f"({saved.get('identity')}): pass another --out, or delete "
                                  f"{self.path} to start again")
            self.data["candidates"] = saved.get("candidates", {})
        for c in candidates:
            self.data["candidates"].setdefault(c.name, {**asdict(c), "rounds": []})
        self.candidates = candidates

    def __getitem__(self, candidate: Candidate) -> dict:
        return self.data["candidates"][candidate.name]

    def save(self, **extra) -> None:
        self.data.update(extra)
        fileio.write_json(self.path, self.data)


def tune(options: TuneOptions, echo: Callable[[str], None] = print,
         measure: Optional[Callable] = None, train_one: Optional[Callable] = None) -> dict:
    """Runs the tune into ``options.out``: latency of every candidate, then accuracy of those
    that fit, then the table, chart and best.yaml.

    Args:
      options: the tune's TuneOptions.
      echo: progress lines.
      measure: ``measure(candidates, options, echo) -> {name: {latency_ms, size_bytes,
        machine}}`` (default: build the int8 files and bench them, here or on the device).
      train_one: ``train_one(candidate, epochs, options) -> {score, accuracy, monitor,
        seconds, weights}`` (default: tledge's recipe, QAT off).

    Returns:
      tune.json's content, with ``best`` (the winner's name).

    Raises:
      TledgeError: bad options or space, no candidate under the budget, the device gone.
    """
    from tledge.tune.stages import measure_latency, train_candidate

    start = time.monotonic()
    out = Path(options.out)
    fileio.check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    candidates = load_space(options.space)
    state = State(options, candidates)
    state.save(max_latency_ms=options.max_latency_ms, status="measuring latency")
    _latency_stage(state, options, measure or measure_latency, echo)
    fitting = _apply_budget(state, options)
    echo(f"{len(fitting)} of {len(candidates)} candidate(s) within {options.max_latency_ms:g} ms"
         f"; training them by successive halving within the time budget "
         f"({_minutes(options.time_budget_s - (time.monotonic() - start))} left)")
    deadline = start + options.time_budget_s
    train_one = train_one or train_candidate
    first = _round0_options(state, fitting, options, train_one, deadline, echo)
    best = _halving(state, fitting, options, train_one, deadline, echo, first)
    state.save(best=best.name, status="complete")
    from tledge.tune.report import write_outputs

    write_outputs(state.data, options, best, echo)
    return state.data


def _latency_stage(state: State, options: TuneOptions, measure, echo) -> None:
    todo = [c for c in state.candidates if state[c].get("latency_ms") is None]
    if not todo:
        echo(f"latency: all {len(state.candidates)} candidates measured already ({STATE})")
        return
    echo(f"latency: building and timing {len(todo)} int8 file(s) on "
         f"{options.on or 'this machine'} at {options.threads} thread(s)")
    try:
        measured = measure(todo, options, echo)
    except TledgeError as e:
        state.save(status="stopped: latency not measured")
        raise TledgeError(f"{e} (the files built so far are kept in {options.out}: run the same "
                          "command again to go on)") from e
    for c in todo:
        if c.name in measured:
            state[c].update(measured[c.name])
    state.save()


def _apply_budget(state: State, options: TuneOptions) -> list[Candidate]:
    timed = [c for c in state.candidates if state[c].get("latency_ms") is not None]
    fitting = []
    for c in timed:
        entry = state[c]
        if entry["latency_ms"] > options.max_latency_ms:
            entry["dropped"] = (f"over the budget: {entry['latency_ms']:.2f} ms > "
                                f"{options.max_latency_ms:g} ms")
        else:  # within this budget (a resumed tune may give another)
            if str(entry.get("dropped", "")).startswith("over the budget"):
                del entry["dropped"]
            fitting.append(c)
    state.save()
    if not fitting:
        fastest = min(timed, key=lambda c: state[c]["latency_ms"])
        raise TledgeError(f"no candidate meets --max-latency-ms {options.max_latency_ms:g}: the "
                          f"fastest, {fastest.name}, takes {state[fastest]['latency_ms']:.2f} ms "
                          f"p50 on {state[fastest].get('machine', '?')} at {options.threads} "
                          "thread(s); raise the budget or add smaller candidates (--space)")
    return sorted(fitting, key=lambda c: state[c]["latency_ms"])


ROUND0_SHARE = 0.5  # of the time left when training starts: round 0, every candidate once
ROUND0_MIN_IMAGES = 30  # a class, at least, in round 0


def _round0_options(state: State, fitting: list, options: TuneOptions, train_one,
                    deadline: float, echo) -> TuneOptions:
    """The options round 0 trains with: every candidate that fits the latency budget trains
    once, so round 0 must fit in ROUND0_SHARE of the time left. The fastest candidate trains
    first; another's time is taken as its fixed costs (building, exporting) plus its phases'
    time scaled by latency (the work of a step) and images. Where that overruns, round 0's
    images a class are cut to fit (later rounds take them all) and the fastest trains again on
    them. Decided once, kept in tune.json."""
    from tledge.tune.stages import images_per_class

    per_class = images_per_class(options.data, options.limit)
    saved = state.data.get("round0")
    if saved and saved.get("per_class") == per_class:
        return replace(options, limit=saved["limit"])
    fastest = fitting[0]
    if any(state[c]["rounds"] for c in fitting[1:]) or len(fitting) < 2:
        return options
    if not state[fastest]["rounds"]:
        echo(f"[round 0, 1/{len(fitting)}] {fastest.name} "
             f"({state[fastest]['latency_ms']:.2f} ms): {options.epochs} epoch(s) per phase, "
             "the first, to size round 0 to the time budget")
        _record(state, fastest, 0, options.epochs, per_class, train_one(
            fastest, options.epochs, options), echo)
    first = state[fastest]["rounds"][0]
    work = sum(state[c]["latency_ms"] for c in fitting) / state[fastest]["latency_ms"]
    growing = min(first.get("phase_seconds", first["seconds"]), first["seconds"])
    fixed = len(fitting) * (first["seconds"] - growing)
    needed = fixed + growing * work
    room = ROUND0_SHARE * (deadline - time.monotonic())
    limit = int(per_class * (room - fixed) / max(growing * work, 1e-9))
    if limit >= per_class or per_class <= ROUND0_MIN_IMAGES:
        state.save(round0={"per_class": per_class, "limit": options.limit})
        return options
    limit = max(ROUND0_MIN_IMAGES, limit)
    echo(f"round 0: {len(fitting)} candidates on {per_class} images a class would take about "
         f"{_minutes(needed)}, over half the time left: each trains on {limit} a class first "
         "(later rounds on all)")
    state[fastest]["rounds"] = []  # trained again on as many images as the others
    state[fastest].pop("dropped", None)
    state.save(round0={"per_class": per_class, "limit": limit,
                       "sized_by": {"candidate": fastest.name, **first}})
    return replace(options, limit=limit)


def _halving(state: State, fitting: list, options: TuneOptions, train_one, deadline: float,
             echo, first: Optional[TuneOptions] = None) -> Candidate:
    """Successive halving: every round trains its candidates for twice the epochs of the
    round before (round 0 with ``first``'s images a class), and keeps the better half; a
    round's result in tune.json is not trained again. Stops at one candidate, or when the time
    budget would be overrun."""
    from tledge.tune.stages import images_per_class

    survivors, round_, stopped = list(fitting), 0, False
    every = images_per_class(options.data, options.limit)  # a folder is scanned once
    while survivors and not stopped:
        epochs = options.epochs * 2 ** round_
        these = first if first is not None and round_ == 0 else options
        images = min(every, these.limit or every)
        for i, c in enumerate(survivors):
            entry = state[c]
            if any(r["round"] == round_ for r in entry["rounds"]):
                continue
            left = deadline - time.monotonic()
            needed = _expected_seconds(state, survivors, round_, images)
            if left <= 0 or (needed is not None and needed > left):
                echo(f"time budget: {_minutes(max(left, 0))} left, a round-{round_} training "
                     f"takes about {_minutes(needed or 0)}: stopping here")
                stopped = True
                break
            echo(f"[round {round_}, {i + 1}/{len(survivors)}] {c.name} "
                 f"({entry['latency_ms']:.2f} ms): {epochs} epoch(s) per phase, "
                 f"{_minutes(left)} left")
            _record(state, c, round_, epochs, images, train_one(c, epochs, these), echo)
        done = [c for c in survivors if _score(state, c, round_) is not None
                and not state[c]["rounds"][-1].get("int8_error")]
        if len(done) <= 1 or stopped:
            break
        ranked = sorted(done, key=lambda c: (-_score(state, c, round_),
                                             _loss(state[c]["rounds"][-1]),
                                             state[c]["latency_ms"]))
        keep = ranked[:math.ceil(len(ranked) / 2)]
        for c in ranked[len(keep):]:
            state[c]["dropped"] = f"halved after round {round_} (the better half went on)"
        state.save()
        if len(keep) == 1:  # decided: the last one left needs no longer training to win
            break
        survivors, round_ = keep, round_ + 1
    trained = [c for c in fitting if state[c]["rounds"]
               and not state[c]["rounds"][-1].get("int8_error")]
    if not trained:
        failed = [c for c in fitting if state[c]["rounds"]]
        raise TledgeError(
            f"none of the {len(failed)} candidate(s) trained converted to int8 (see "
            f"{STATE}): {state[failed[0]]['dropped']}" if failed else
            "the time budget ran out before any candidate trained: give --time-budget more "
            "time (the latencies are kept in tune.json)")
    best = max(trained, key=lambda c: (max(r["round"] for r in state[c]["rounds"]),
                                       state[c]["rounds"][-1]["score"],
                                       -_loss(state[c]["rounds"][-1]),
                                       -state[c]["latency_ms"]))
    return best


def _loss(result: dict) -> float:
    """A training's validation loss at its kept epoch, which breaks a tie on the score: on a
    few hundred images accuracies tie often, the loss seldom (none recorded: last)."""
    loss = result.get("val_loss")
    return math.inf if loss is None or not math.isfinite(loss) else float(loss)


def _record(state: State, c: Candidate, round_: int, epochs: int, images: int, result: dict,
            echo) -> None:
    """A training's result into tune.json, and its line."""
    entry = state[c]
    entry["rounds"].append({"round": round_, "epochs": epochs, "images_per_class": images,
                            **result})
    entry["trained_seconds"] = round(sum(r["seconds"] for r in entry["rounds"]), 1)
    if result.get("int8_error"):
        entry["dropped"] = f"int8 conversion failed: {result['int8_error']}"
    state.save(status=f"training: round {round_}")
    echo(f"  {c.name}: validation {result['monitor'].replace('_', ' ')} "
         f"{result['score']:.4f}" + (" (int8)" if "int8_accuracy" in result else "")
         + f" in {result['seconds']:.0f} s"
         + (f"; {entry['dropped']}" if result.get("int8_error") else ""))


def _score(state: State, c: Candidate, round_: int) -> Optional[float]:
    found = [r["score"] for r in state[c]["rounds"] if r["round"] == round_]
    return found[-1] if found else None


def _expected_seconds(state: State, survivors: list, round_: int,
                      images: int) -> Optional[float]:
    """How long a training of this round takes: the median of this round's so far, else
    the last round's, times two (the epochs) and the ratio of images a class."""
    same = [r["seconds"] for c in survivors for r in state[c]["rounds"] if r["round"] == round_]
    if same:
        return float(np.median(same))
    before = [(r["seconds"], r.get("images_per_class") or images)
              for c in survivors for r in state[c]["rounds"] if r["round"] == round_ - 1]
    if not before:
        return None
    return 2.0 * float(np.median([s * images / n for s, n in before]))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
