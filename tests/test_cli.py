import subprocess
import sys

import pytest
from click.testing import CliRunner

from tledge.cli import main


def test_help_lists_every_command_and_options_have_help():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in main.commands:
        assert command in result.output
    for command in main.commands.values():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"{command.name} {param.opts} has no help text"


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "/no/such/folder", "--out", "{tmp}/r"], "does not exist"),
    (["train", "--val-split", "2", "--out", "{tmp}/r"], "val-split"),
    (["train", "--config", "/no/such.yaml", "--out", "{tmp}/r"], "does not exist"),
    (["export", "{tmp}"], "not a tledge run folder"),
    (["predict", "{tmp}/none.tflite", "x.jpg"], "does not exist"),
    (["predict", "{tmp}/model.tflite", "x.jpg"], "not a TFLite model"),
    (["evaluate", "{tmp}/model.tflite", "--data", "shapes"], "not a TFLite model"),
])
def test_bad_input_is_one_line_without_traceback(args, message, tmp_path):
    (tmp_path / "model.tflite").write_text("this is text, not a flatbuffer")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "tledge.cli", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]


def test_train_refuses_an_existing_run_before_loading_data(tmp_path):
    (tmp_path / "model.keras").write_text("precious")
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "--overwrite" in result.output
    assert (tmp_path / "model.keras").read_text() == "precious"
