import pytest

from tledge.core.config import DataOptions, RunConfig
from tledge.core.errors import TledgeError


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig().override(data={"source": "cifar10", "limit": 7},
                               train={"finetune": {"unfreeze": "block_13_expand"}, "seed": 3})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    back = RunConfig.from_yaml(path)
    assert back == cfg
    assert back.train.finetune.unfreeze == "block_13_expand"
    assert back.train.finetune.learning_rate == RunConfig().train.finetune.learning_rate


def test_override_ignores_unset_flags_and_never_mutates():
    base = RunConfig()
    cfg = base.override(data={"limit": None, "image_size": 128}, train={"frozen": {"epochs": 0}})
    assert cfg.data.image_size == 128 and cfg.data.limit is None
    assert cfg.train.frozen.epochs == 0
    assert base.data.image_size == 96 and base.train.frozen.epochs == 5


def test_unknown_key_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sorce: shapes\n")
    with pytest.raises(TledgeError, match="unknown key.*sorce.*in data"):
        RunConfig.from_yaml(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"val_split": 1.5}, "val-split"), ({"image_size": 8}, "image-size"), ({"limit": 1}, "limit")])
def test_invalid_values_name_the_flag(kwargs, message):
    with pytest.raises(TledgeError, match=message):
        DataOptions(**kwargs)


def test_bad_backbone_and_strategy():
    with pytest.raises(TledgeError, match="unknown backbone"):
        RunConfig().override(model={"backbone": "vgg"})
    with pytest.raises(TledgeError, match="unknown strategy"):
        RunConfig().override(train={"strategy": "tpu"})
