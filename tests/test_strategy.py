"""MirroredStrategy on one CPU split into two logical devices: the multi-GPU code path, here."""

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_config
    from tledge.train import train
    for augment in (False, True):  # feature-cache path and plain path
        config = tiny_config(strategy="mirrored").override(data={"augment": augment})
        result = train(config, sys.argv[1] + str(augment), echo=print)
        print("REPLICAS", tf.distribute.get_strategy().num_replicas_in_sync,
              "PHASES", [p.name for p in result.phases])
""")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    from pathlib import Path
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("strategy: MirroredStrategy over 2 devices") == 2, proc.stdout
    assert proc.stdout.count("PHASES ['frozen', 'finetune']") == 2
    assert (tmp_path / "runFalse" / "model.keras").is_file()
