"""Property-based tests (Hypothesis): whatever values and files a user or a script throws at the
config and the command line, tledge answers with a valid config or one line, never a traceback.
"""

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tledge.cli import main
from tledge.core.config import (DataOptions, FineTuneHParams, ModelOptions, PhaseHParams,
                                QATHParams, RunConfig, TrainOptions)
from tledge.core.errors import TledgeError

FUZZ = settings(max_examples=int(os.environ.get("TLEDGE_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["0.5", "abc", "", "nan", "-1", "1e400", "all", "shapes", "imagenet",
                     "none", "cosine", "mirrored", "\x00"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def section(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return st.dictionaries(st.sampled_from(names + ["bogus"]), values, max_size=4)


train_section = st.fixed_dictionaries({}, optional={
    "frozen": section(PhaseHParams) | values, "finetune": section(FineTuneHParams) | values,
    "qat": section(QATHParams) | values, "seed": values, "early_stop": values,
    "strategy": values, "mixed_precision": values, "feature_cache": values, "init_from": values,
})
configs = st.one_of(
    st.fixed_dictionaries({}, optional={"data": section(DataOptions) | values,
                                        "model": section(ModelOptions) | values,
                                        "train": train_section | values}),
    values)


def _valid_or_one_line(build):
    try:
        return build()
    except TledgeError as e:
        message = str(e)
        assert message and "\n" not in message, message
        return None


@FUZZ
@given(configs)
def test_any_mapping_is_a_valid_config_or_one_line(data):
    config = _valid_or_one_line(lambda: RunConfig.from_dict(data))
    if config is not None:  # what was accepted survives its own YAML round trip unchanged
        assert RunConfig.from_dict(config.to_dict()) == config
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(config.to_yaml())
            assert RunConfig.from_yaml(path) == config


@FUZZ
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 configs.map(lambda d: __import__("yaml").safe_dump(d).encode())))
def test_any_file_given_as_config_is_a_config_or_one_line(content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_bytes(content)
        _valid_or_one_line(lambda: RunConfig.from_yaml(path))


numbers_as_text = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e999", "abc", "", "1,2", "0x10",
                     "3.5", "all", "0,0", "-2,4", "x"]))

TRAIN_OPTIONS = ["--image-size", "--val-split", "--limit", "--batch-size", "--alpha",
                 "--head-units", "--dropout", "--epochs-frozen", "--lr", "--epochs-finetune",
                 "--lr-finetune", "--unfreeze", "--epochs-qat", "--lr-qat", "--early-stop",
                 "--seed", "--backbone", "--strategy", "--lr-schedule", "--weights"]


@FUZZ
@given(st.dictionaries(st.sampled_from(TRAIN_OPTIONS), numbers_as_text, max_size=5))
def test_train_options_give_a_valid_config_or_one_line(monkeypatch, options):
    seen = []
    monkeypatch.setattr("tledge.training.train.train",
                        lambda config, out, **kw: seen.append(config))
    # the config is the subject: TensorFlow's import (seconds, the slow tier's) is not
    monkeypatch.setattr("tledge.cli.require_training_stack", lambda what: None)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", "--weights", "none"]
        for flag, value in options.items():
            args += [flag, value]
        result = CliRunner().invoke(main, args + ["--out", str(Path(tmp) / "run")])
    assert result.exit_code in (0, 1, 2), (args, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, repr(result.exception))
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        (config,) = seen
        assert RunConfig.from_dict(config.to_dict()) == config  # every value passed the checks
    else:
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, result.output


COMMANDS = {
    "export": (["export", "{tmp}/run"], ["--calibration", "--max-drop", "--eval-limit"]),
    "predict": (["predict", "{tmp}/m.tflite", "{tmp}/x.png"], ["--top-k", "--threads"]),
    "evaluate": (["evaluate", "{tmp}/m.tflite", "--data", "shapes"],
                 ["--limit", "--threads"]),
    "bench": (["bench", "{tmp}/m.tflite"], ["--threads", "--runs", "--warmup", "--limit"]),
    "camera": (["camera", "--model", "{tmp}/m.tflite", "--headless"],
               ["--threads", "--top-k", "--max-frames", "--duration", "--capture-size"]),
}


@FUZZ
@given(st.sampled_from(sorted(COMMANDS)), st.data())
def test_other_commands_answer_bad_values_in_one_line(command, data):
    base, flags = COMMANDS[command]
    chosen = data.draw(st.dictionaries(st.sampled_from(flags), numbers_as_text, max_size=3))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "run").mkdir()
        (Path(tmp) / "m.tflite").write_bytes(b"not a model")
        args = [a.replace("{tmp}", tmp) for a in base]
        for flag, value in chosen.items():
            args += [flag, value]
        result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2), (args, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, repr(result.exception))
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output


@pytest.mark.parametrize("cls", [DataOptions, ModelOptions, PhaseHParams, FineTuneHParams,
                                 QATHParams, TrainOptions])
def test_defaults_are_valid_and_every_field_is_checked(cls):
    """The defaults pass the checks that run on every construction, and those checks look at
    every field: a value no field takes (an arbitrary object) is refused in each. The
    defaults, written to YAML and read back through the same checks, are the defaults again."""
    import yaml

    from tledge.core.config import _build

    default = cls()
    for f in dataclasses.fields(cls):
        with pytest.raises(TledgeError):
            dataclasses.replace(default, **{f.name: object()})
    back = _build(cls, yaml.safe_load(yaml.safe_dump(dataclasses.asdict(default))), "")
    assert back == default
