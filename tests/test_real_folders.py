"""Real folders (issue 36): imbalance seen and weighed, the better phase kept, small validation
sets honest at the export gate, mistakes shown. The fast tests here need no TensorFlow; the
one run that trains is marked slow."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from helpers import COLOURS, LABELS, cli


# ----------------------------------------------------------------- imbalance, in numbers

def test_class_balance_weighs_rare_classes_and_picks_balanced_accuracy():
    from tledge.training.fitting import class_balance

    train_y = np.repeat([0, 1, 2], [90, 30, 10])
    val_y = np.repeat([0, 1, 2], [9, 3, 1])
    auto = class_balance(train_y, val_y, 3)
    assert auto.train_counts == (90, 30, 10) and auto.val_counts == (9, 3, 1)
    assert auto.ratio == 9.0 and auto.imbalanced and auto.monitor == "balanced_accuracy"
    # balanced: n / (classes x n_c), every class weighs the same in the loss; auto: its root
    full = {0: 130 / 270, 1: 130 / 90, 2: 130 / 30}
    assert class_balance(train_y, val_y, 3, "balanced").class_weight == pytest.approx(full)
    assert auto.class_weight == pytest.approx({c: w ** 0.5 for c, w in full.items()})
    # ... until QAT, the last phase, which weighs them in full (deferred re-weighting)
    assert class_balance(train_y, val_y, 3, final=True).class_weight == pytest.approx(full)
    assert class_balance(train_y, val_y, 3, "none", final=True).class_weight is None
    assert class_balance(train_y, val_y, 3, "none").class_weight is None
    even = class_balance(np.repeat([0, 1, 2], 20), np.repeat([0, 1, 2], 2), 3)
    assert not even.imbalanced and even.class_weight is None and even.monitor == "accuracy"
    assert class_balance(np.repeat([0, 1], 20), np.repeat([0, 1], 2), 2,
                         "balanced").class_weight == {0: 1.0, 1: 1.0}


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    from tledge.training.fitting import balanced_accuracy

    y = np.array([0] * 8 + [1] * 2)
    pred = np.zeros(10, int)  # always the common class: 80% accurate, 50% balanced
    assert balanced_accuracy(y, pred, 3) == pytest.approx(0.5)


# ----------------------------------------------------------------- the phase rule

def test_the_paired_test_weighs_an_image_as_the_figure_does():
    """30 images of a common class, 3 of a rare one: in balanced accuracy a rare image is worth
    ten common ones, and the test on the images where two models disagree weighs them so."""
    from tledge.core.stats import mcnemar_p, paired_worse_p

    labels = np.repeat([0, 1], [30, 3])
    old = np.ones(33, bool)
    five_common = old.copy()
    five_common[:5] = False
    assert paired_worse_p(old, five_common, labels, balanced=False) == mcnemar_p(5, 0)
    assert paired_worse_p(old, five_common, labels, balanced=True) == mcnemar_p(5, 0)
    # five common images lost, one rare image won: worse by accuracy, better balanced
    old_missed_rare = old.copy()
    old_missed_rare[30] = False
    assert paired_worse_p(old_missed_rare, five_common, labels, balanced=False) == \
        pytest.approx(mcnemar_p(5, 1)) == pytest.approx(7 / 64)
    assert paired_worse_p(old_missed_rare, five_common, labels, balanced=True) > 0.5
    # every rare image and six common ones lost: chance gives it 1/8 x 1/64 of the time
    lost = old.copy()
    lost[[0, 1, 2, 3, 4, 5, 30, 31, 32]] = False
    p = paired_worse_p(old, lost, labels, balanced=True)
    assert p == pytest.approx(1 / 512, abs=0.001)
    assert paired_worse_p(old, lost, labels, balanced=True) == p  # seeded: the same answer
    assert paired_worse_p(old, old, labels, balanced=True) == 1.0


@pytest.mark.parametrize("score, wrong, kept, p", [(1.0, 0, True, None), (0.95, 1, True, 0.5),
                                                   (0.4, 12, False, 1 / 4096)])
def test_a_phase_below_its_start_is_kept_unless_worse_beyond_chance(score, wrong, kept, p):
    from tledge.training.fitting import PhaseResult
    from tledge.training.keeprule import judge

    labels = np.arange(20) % 2
    phase = PhaseResult("finetune", val_accuracy=score)
    new = np.where(np.arange(20) < wrong, 1 - labels, labels)
    assert judge(phase, labels, new, labels) is kept
    assert phase.kept is kept
    assert phase.worse_p == (None if p is None else pytest.approx(p))


# ----------------------------------------------------------------- the export gate

@pytest.mark.parametrize("worse, better, p", [(0, 0, 1.0), (1, 0, 0.5), (2, 0, 0.25),
                                               (10, 0, 1 / 1024), (5, 5, 638 / 1024)])
def test_mcnemar_exact_p(worse, better, p):
    from tledge.core.stats import mcnemar_p

    assert mcnemar_p(worse, better) == pytest.approx(p)


def _result(drop, images, worse, better):
    from tledge.core.stats import SIGNIFICANCE, mcnemar_p
    from tledge.export.verify import FormatResult

    p = mcnemar_p(worse, better)
    return FormatResult("int8", "", 1, "qat", 0.8, 0.9, 0.1, 0.01, drop_points=drop,
                        passed=drop <= 1.0 or p >= SIGNIFICANCE, quantization={},
                        images=images, worse=worse, better=better, p_value=p)


def test_the_gate_never_fails_a_file_on_two_images_and_says_so():
    """27 validation images: two images are 7.41 points, which chance gives one time in four."""
    from tledge.export.verify import gate_note

    small = _result(7.41, 27, 2, 0)
    assert small.passed and small.within_chance
    note = gate_note(small, 1.0)
    assert "27 validation images, one image being 3.7 points" in note
    assert "p = 0.25" in note and "more validation images" in note


def test_the_gate_fails_a_file_worse_beyond_chance():
    from tledge.export.verify import gate_note

    big = _result(3.0, 1000, 32, 2)  # 30 more wrong of 1000: p ~ 1e-7
    assert not big.passed and gate_note(big, 1.0) is None
    assert _result(0.5, 1000, 7, 2).passed  # within the gate: passes whatever p says


def _imbalanced_verify(colour_tflite, tmp_path, balanced: bool):
    """The committed int8 colour classifier against a perfect float model on 300 common images
    it gets right and 6 of the rare class (yellow) it gets wrong (red pictures filed as yellow):
    1.96 points of plain accuracy, 25 of balanced accuracy, all six going against the file
    (p = 1/64)."""
    import contextlib

    from tledge.data import ImageSet
    from tledge.export.verify import Verifier

    rng = np.random.default_rng(0)
    y = np.concatenate([np.repeat([0, 1, 2], 100), np.full(6, 3)]).astype(np.int32)
    shown = np.where(y == 3, 0, y)  # the rare images are red pictures
    x = np.clip(COLOURS[shown][:, None, None, :] + rng.normal(0, 10, (len(y), 32, 32, 3)),
                0, 255).astype(np.uint8)
    reference = np.eye(4, dtype=np.float32)[y]
    with contextlib.ExitStack() as staged:
        verifier = Verifier(reference, ImageSet(x, y), LABELS, "colours", tmp_path, staged,
                            max_drop=2.0, echo=print, balanced=balanced)
        _, result = verifier.verify("int8", colour_tflite["int8"].read_bytes(), "qat")
    return verifier, result


@pytest.mark.slow  # the file's metadata is written with TensorFlow's flatbuffer schema
def test_the_gate_compares_balanced_accuracy_where_the_classes_are_imbalanced(colour_tflite,
                                                                             tmp_path):
    """An int8 file that loses a rare class loses little plain accuracy: where the run's
    classes are imbalanced the gate compares balanced accuracy, as the phases were picked."""
    from tledge.export.card import format_table

    plain, passed = _imbalanced_verify(colour_tflite, tmp_path, balanced=False)
    assert passed.drop_points == pytest.approx(100 * 6 / 306) and passed.passed
    assert passed.figure == "accuracy" and passed.balanced_accuracy == pytest.approx(0.75)
    weighed, failed = _imbalanced_verify(colour_tflite, tmp_path, balanced=True)
    assert (failed.worse, failed.better) == (6, 0) and failed.p_value == pytest.approx(1 / 64)
    assert failed.drop_points == pytest.approx(25.0) and not failed.passed
    assert failed.figure == "balanced accuracy" and weighed.float_balanced == 1.0
    assert weighed.image_points == pytest.approx(100 / (4 * 6))  # one yellow image: 4.2 points
    table = format_table(weighed.float_acc, [failed], weighed.float_balanced, weighed.figure)
    assert "balanced" in table.splitlines()[0] and "-25.00" in table.splitlines()[2]
    assert "balanced accuracy points against the float model" in table


def test_the_gate_note_weighs_an_image_as_the_figure_does():
    from dataclasses import replace

    from tledge.export.verify import gate_note

    small = replace(_result(7.41, 27, 2, 0), figure="balanced accuracy", image_points=11.1)
    note = gate_note(small, 1.0)
    assert "points of balanced accuracy" in note and "rarest class being 11.1 points" in note
    assert "McNemar, images weighed by class" in note


# ----------------------------------------------------------------- mistakes in pictures

@pytest.fixture
def colour_folder(tmp_path):
    """Five pictures of each colour, and one red picture filed under blue (a mistake the
    model must make)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "colours"
    for label, colour in zip(LABELS, COLOURS):
        (root / label).mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(colour + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.png")
    Image.fromarray(np.full((32, 32, 3), COLOURS[0], np.uint8)).save(
        root / "blue" / "actually_red.png")
    return root


def test_evaluate_writes_every_prediction_and_a_sheet_of_its_mistakes(colour_tflite,
                                                                     colour_folder, tmp_path):
    out = tmp_path / "report"
    result = cli("evaluate", str(colour_tflite["int8"]), "--data", str(colour_folder),
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21 and {"file", "true", "predicted", "score", "correct",
                                "top3"} <= set(rows[0])
    wrong = [r for r in rows if r["correct"] == "0"]
    assert any(r["file"] == "blue/actually_red.png" and r["true"] == "blue" and
               r["predicted"] == "red" for r in wrong)
    assert len(rows[0]["top3"].split(";")) == 3
    report = json.loads((out / "evaluation.json").read_text())
    assert 0 < report["balanced_accuracy"] <= 1 and 0 < report["macro_f1"] <= 1
    assert all("f1" in row for row in report["per_class"])
    sheet = Image.open(out / "mistakes.png")
    assert sheet.width >= 150 and sheet.height >= 150
    lines = result.output.splitlines()
    assert "balanced accuracy" in lines[0] and "macro F1" in lines[0]
    table = lines[2:6]  # worst F1 first
    f1s = [float(line.split()[3]) for line in table]
    assert f1s == sorted(f1s) and table[0].split()[0] in ("blue", "red")
    assert "mistakes.png" in result.output


# ----------------------------------------------------------------- runs that did not finish

def test_evaluate_refuses_a_run_another_process_is_training(colour_folder, tmp_path):
    """It scored the half-trained model and wrote its report into the locked folder."""
    import socket
    import subprocess

    from helpers import one_line_error, stub_run
    from tledge.core import rundir

    run = stub_run(tmp_path / "run")
    trainer = subprocess.Popen(["sleep", "60"])
    try:
        (run / rundir.LOCK).write_text(json.dumps(
            {"pid": trainer.pid, "host": socket.gethostname(), "command": "tledge train",
             "started": "2026-12-06T10:00:00"}))
        before = sorted(p.name for p in run.iterdir())
        one_line_error(cli("evaluate", str(run), "--data", str(colour_folder)),
                       "in use by another tledge process")
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        trainer.kill()
        trainer.wait()


@pytest.mark.parametrize("status, done, said", [
    ("interrupted during qat", ["frozen", "finetune"], True),
    ("failed during qat: the loss became NaN", ["frozen", "finetune"], True),
    ("complete", ["frozen", "finetune", "qat"], False),
])
def test_export_knows_a_run_whose_qat_did_not_finish(tmp_path, status, done, said):
    from helpers import stub_run
    from tledge.core import fileio, rundir
    from tledge.export import _qat_unfinished

    run = stub_run(tmp_path / "run")
    fileio.write_json(run / rundir.METRICS, {"status": status, "phases_completed": done})
    found = _qat_unfinished(run)
    assert (found is not None) == said and (not said or status[:20] in found)
