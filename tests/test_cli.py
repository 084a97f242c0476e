import pytest

from helpers import cli, one_line_error, tledge
from tledge.cli import main


def test_help_lists_every_command_and_options_have_help():
    result = cli("--help")
    assert result.exit_code == 0
    for command in main.commands:
        assert command in result.output
    listing = result.output.split("Commands:")[1]
    assert "..." not in listing, listing  # whole one-line descriptions, not cut ones
    train = cli("train", "--help").output
    sections = ["Data:", "Model:", "Phase 1: frozen:", "Phase 2: fine-tune:", "Phase 3: QAT:",
                "Every phase:", "Distribution:", "Run folder:"]
    at = [train.find(f"\n  {title}") for title in sections]
    assert -1 not in at and at == sorted(at), train  # train's options in sections, in order
    assert max(map(len, train.splitlines())) <= 80, train  # no 200-character choice line
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
    one_line_error(tledge(*args, timeout=300), message)


def test_train_refuses_an_existing_run_before_loading_data(tmp_path):
    (tmp_path / "model.keras").write_text("precious")
    one_line_error(cli("train", "--out", tmp_path), "--overwrite")
    assert (tmp_path / "model.keras").read_text() == "precious"


def test_verbose_shows_the_cause_under_the_one_line(tmp_path):
    """Issue 23: errors are raised `from` their cause, and -v prints the chain."""
    quiet = cli("train", "--config", tmp_path / "missing.yaml")
    loud = cli("-v", "train", "--config", tmp_path / "missing.yaml")
    for result in (quiet, loud):
        one_line_error(result, "missing.yaml", "does not exist")
    assert "caused by" not in quiet.output
    assert "  caused by FileNotFoundError: [Errno 2]" in loud.output, loud.output
    # -v lasts one command and never reaches the environment, which child processes inherit
    # (it once did, and let TensorFlow's start-up noise into later runs of the same worker)
    import os

    from tledge.core import quiet as quiet_module
    assert "TLEDGE_RAW_STDERR" not in os.environ
    cli("train", "--config", tmp_path / "missing.yaml")
    assert not quiet_module.raw()


@pytest.mark.parametrize("command, theirs, not_there", [
    ("bench", "--data then names a folder on the device", "--source"),
    ("camera", "--source then names the device's camera", "--data"),
])
def test_on_help_names_only_the_commands_own_paths(command, theirs, not_there):
    """Issue 41: both helps said "--data and --source then name the device's", and bench has
    no --source, camera no --data."""
    result = cli(command, "--help")
    text = " ".join(result.output.split())
    assert result.exit_code == 0 and theirs in text
    on_help = text[text.index("--on"):text.index("[DIR default")]
    assert not_there not in on_help
