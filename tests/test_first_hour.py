"""Issue 41's first hour: what a new user reads on the terminal, checked as they read it
(stdout and stderr lines, help text, the table's width). The training log's own lines (phase
headers, "Epoch 1/1", no unlabelled Keras lines, no "INFO:") are checked where a real train
runs: tests/test_faults.py::test_two_trains_into_one_folder_never_mix."""

import json
import logging

import numpy as np
from PIL import Image

from helpers import MODELS, cli, one_line_error, tledge

INT8 = MODELS / "colour_int8.tflite"
FP32 = MODELS / "colour_fp32.tflite"


def _pictures(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return folder


def test_progress_is_plain_and_warnings_say_so():
    from tledge.cli import _Plain

    def line(level, text):
        return _Plain().format(logging.LogRecord("tledge", level, __file__, 1, text, None, None))

    assert line(logging.INFO, "phase frozen: features once") == "phase frozen: features once"
    assert line(logging.WARNING, "the classes are imbalanced") == \
        "WARNING: the classes are imbalanced"


def test_skipped_files_are_named_once_and_export_does_not_warn_again(tmp_path, caplog):
    from tledge.data.folder import load_folder

    for name in ("a", "b"):
        _pictures(tmp_path / name)
    for junk in ("a/notes.txt", "b/Thumbs.db", "b/scan.pdf"):
        (tmp_path / junk).write_text("not an image")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with caplog.at_level(logging.INFO, logger="tledge"):
        load_folder(tmp_path, 16, None, 0)
    warned = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    for name in ("broken.png (unreadable)", "notes.txt", "Thumbs.db", "scan.pdf"):
        assert name in warned[0].getMessage(), warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tledge"):
        load_folder(tmp_path, 16, None, 0, again=True)  # export reading the run's data
    again = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(again) == 1 and again[0].levelno == logging.INFO
    assert again[0].getMessage().startswith("data: as in training, skipped 4 file(s)")


def test_bench_table_fits_100_columns_and_the_chart_shows_accuracy(tmp_path):
    data = tmp_path / "data"
    for colour, rgb in (("red", (230, 20, 20)), ("green", (20, 230, 20)),
                        ("blue", (20, 20, 230)), ("yellow", (230, 230, 20))):
        (data / colour).mkdir(parents=True)
        Image.new("RGB", (32, 32), rgb).save(data / colour / "0.png")
    chart, plain = tmp_path / "bench.png", tmp_path / "plain.png"
    proc = tledge("bench", INT8, FP32, "--threads", "1", "--runs", "3", "--warmup", "0",
                  "--data", data, "--chart", chart, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = proc.stdout[proc.stdout.index("model "):].splitlines()
    assert table[0].split()[:3] == ["model", "format", "thr"]
    assert all(len(line) <= 100 for line in table), max(table, key=len)
    assert "colour_int8.tflite" in proc.stdout and "acc" in table[0]
    assert tledge("bench", INT8, "--threads", "1", "--runs", "3", "--warmup", "0",
                  "--chart", plain, timeout=300).returncode == 0
    # the accuracy panel beside the latency bars makes the chart wider
    assert Image.open(chart).size[0] > Image.open(plain).size[0] * 1.2


def test_help_names_only_the_commands_own_options():
    bench, camera = cli("bench", "--help").output, cli("camera", "--help").output
    assert "--data and --source" not in bench and "--data and --source" not in camera
    assert "--source" not in bench.replace("--source-", "")
    assert "--data " not in camera


def test_deploy_without_a_host_says_the_device_is_missing(tmp_path):
    run = tmp_path / "models" / "fashion"
    run.mkdir(parents=True)
    one_line_error(cli("deploy", run), "no device given", "pi@raspberrypi.local")


def test_predict_names_the_run_folder_for_a_keras_file(tmp_path):
    keras_file = tmp_path / "run" / "model.keras"
    keras_file.parent.mkdir()
    keras_file.write_bytes(b"PK\x03\x04 a Keras zip")
    one_line_error(cli("predict", keras_file, INT8), "is a Keras model file",
                   f"pass its run folder ({keras_file.parent}")


def test_predict_takes_a_folder_and_writes_json_lines(tmp_path):
    folder = _pictures(tmp_path / "pics", 3)
    _pictures(folder / "sub", 2)
    (folder / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(folder / ".hidden" / "x.png")
    (folder / "notes.txt").write_text("not an image")
    result = cli("predict", INT8, folder, "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(rows) == 5 and all(len(r["top_k"]) == 2 for r in rows)
    assert {r["top_k"][0]["label"] for r in rows} <= {"red", "green", "blue", "yellow"}
    assert not any(".hidden" in r["image"] for r in rows)
    (tmp_path / "empty").mkdir()
    one_line_error(cli("predict", INT8, tmp_path / "empty"), "holds no image file")


def test_export_table_says_better_or_worse_plainly():
    from tledge.export.card import format_table
    from tledge.export.verify import FormatResult

    fields = FormatResult.__dataclass_fields__
    base = {name: None for name in fields}
    base.update(format="int8", source="qat", size_bytes=2_700_000, accuracy=0.957,
                drop_points=-2.0, agreement=0.99, max_prob_diff=0.05, passed=True)
    text = format_table(0.937, [FormatResult(**base)])
    assert "max|dp|" not in text and "drop" not in text.splitlines()[0]
    assert "vs float" in text.splitlines()[0] and "+2.00" in text.splitlines()[2]
    assert "negative: the file is worse" in text
    base.update(drop_points=0.0)  # as good as float: "+0.00", not "-0.00"
    assert "+0.00" in format_table(0.937, [FormatResult(**base)]).splitlines()[2]


def test_evaluate_says_which_split_it_scored():
    from tledge.measure.evaluate import format_report

    report = {"model": "model_int8.tflite", "accuracy": 0.9, "balanced_accuracy": 0.9,
              "macro_f1": 0.9, "images": 10, "per_class": [], "data": "shapes", "split": "test"}
    assert "on 10 images (the test split of shapes)" in format_report(report)
