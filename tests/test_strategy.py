"""MirroredStrategy on one CPU split into two logical devices: the multi-GPU code path, here."""

import subprocess
import sys
import textwrap

import pytest

from helpers import free_ports, tledge

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, sys.argv[2])
    from helpers import tiny_config
    from tledge.training.train import train
    for augment in (False, True):  # feature-cache path and plain path
        config = tiny_config(strategy="mirrored").override(data={"augment": augment})
        if augment:  # the fine-tune phase under the strategy ran in the first run
            config = config.override(train={"finetune": {"epochs": 0}})
        result = train(config, sys.argv[1] + str(augment), echo=print)
        print("REPLICAS", tf.distribute.get_strategy().num_replicas_in_sync,
              "PHASES", [p.name for p in result.phases])
""")


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    from pathlib import Path
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run"),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("strategy: MirroredStrategy over 2 devices") == 2, proc.stdout
    assert proc.stdout.count("PHASES ['frozen', 'finetune']") == 1, proc.stdout
    assert proc.stdout.count("PHASES ['frozen']") == 1, proc.stdout
    assert (tmp_path / "runFalse" / "model.keras").is_file()


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_two_workers_on_localhost_train_one_run_folder(tmp_path):
    """MultiWorkerMirroredStrategy: two processes on 127.0.0.1, as two hosts would run it.
    Only the chief writes the run folder; the other worker leaves nothing there."""
    import json

    from helpers import tiny_config

    config = tmp_path / "config.yaml"
    config.write_text(tiny_config().override(
        data={"shapes_per_class": 12}, train={"strategy": "multi-worker"}).to_yaml())
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    run, backups = tmp_path / "run", tmp_path / "backups"
    args = ["train", "--config", str(config), "--out", str(run), "--backup-dir", str(backups)]
    procs = [tledge(*args, background=True,
                    env={"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                  "task": {"type": "worker", "index": i}})})
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, outs):
        assert proc.returncode == 0, stderr[-3000:]
    chief, other = outs[0][0], outs[1][0]
    assert "MultiWorkerMirroredStrategy, worker 0 of 2, 2 replicas" in chief
    assert "[worker 1] strategy: MultiWorkerMirroredStrategy, worker 1 of 2" in other
    assert "run saved in" in chief
    # 66 training images: 33 a worker, two full batches of 16 each, every batch split into
    # two per-replica pieces of 8: 4 steps an epoch, 64 images (not Keras' count of 2 batches)
    assert chief.count("4/4 - ") == 2, chief
    # the run folder is the one a single machine writes; no lock, backup or worker file left
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.yaml", "labels.txt", "history.json", "metrics.json", "training_curves.png",
         "model.keras"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert metrics["phases_completed"] == ["frozen", "finetune"]
    assert not backups.exists() or not any(backups.iterdir())


def test_multi_worker_without_tf_config_is_a_one_line_error(tmp_path):
    for env, message in (({"TF_CONFIG": ""}, "needs TF_CONFIG"),
                         ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not a cluster description"),
                         ({"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, '
                                        '"task": {"type": "worker", "index": 3}}'},
                          "is not in its cluster")):
        proc = tledge("train", "--strategy", "multi-worker", "--out", tmp_path / "r", env=env,
                      timeout=120)
        stderr = proc.stderr
        assert proc.returncode == 1, stderr
        assert message in stderr and "Traceback" not in stderr
        assert len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "r").exists()


def _lonely_worker(tmp_path, *extra):
    """The chief of a two-worker cluster whose second worker never starts."""
    import json

    config = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]},
                         "task": {"type": "worker", "index": 0}})
    return tledge("train", "--data", "shapes", "--image-size", "32", "--alpha", "0.35",
                  "--weights", "none", "--epochs-frozen", "1", "--epochs-finetune", "0",
                  "--no-qat", "--limit", "8", "--strategy", "multi-worker", "--out",
                  tmp_path / "run", *extra, env={"TF_CONFIG": config, "PYTHONUNBUFFERED": "1"},
                  background=True)


def test_a_missing_worker_is_waited_for_a_bounded_time(tmp_path):
    """TensorFlow waits for ever for a worker that never starts; tledge says what it waits for,
    and after --cluster-timeout ends with one Error: line, the run folder released."""
    import time

    proc = _lonely_worker(tmp_path, "--cluster-timeout", "3")
    start = time.time()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - start < 60
    assert "waiting up to 3 s for the cluster's 2 workers" in stdout
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "did not all start within 3 s" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr and not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_end_the_wait_for_the_cluster_at_once(tmp_path, sig):
    """SIGTERM (kill, systemctl stop) went to TensorFlow's preemption handler while its wait
    blocked in C++, and was ignored until --cluster-timeout: the peers are now waited for from
    Python first."""
    import signal
    import time

    proc = _lonely_worker(tmp_path)  # the default bound: 300 s
    lock = tmp_path / "run" / ".tledge.lock"
    for line in proc.stdout:  # printed as the wait begins
        if "waiting up to 300 s for the cluster" in line:
            break
    assert lock.exists()
    time.sleep(2)  # well into the wait
    proc.send_signal(getattr(signal, sig))
    started = time.time()
    proc.communicate(timeout=20)
    assert proc.returncode != 0 and time.time() - started < 10
    deadline = time.time() + 5  # the watchdog releases the folder within 0.2 s
    while (tmp_path / "run").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not lock.exists() and not (tmp_path / "run").exists()


def test_a_restarted_phase_resumes_from_its_backup(tmp_path):
    """BackupAndRestore: a phase killed after its 2nd epoch runs only its 3rd when restarted."""
    import numpy as np
    import tf_keras as keras

    from tledge.core.config import PhaseHParams
    from tledge.data.pipeline import batches
    from tledge.training.fitting import compile_model, fit_phase

    x = np.random.default_rng(0).integers(0, 255, (64, 4, 4, 3)).astype(np.uint8)
    y = (x.mean(axis=(1, 2, 3)) > 127).astype(np.int32)
    ds = batches(x, y, 16, shuffle=True, seed=0)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    compile_model(model, 1e-2)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("worker lost")

    hp = PhaseHParams(epochs=3, learning_rate=1e-2)
    real_fit = model.fit
    model.fit = lambda *a, **k: real_fit(*a, **{**k, "callbacks": k["callbacks"] + [Crash()]})
    with pytest.raises(RuntimeError, match="worker lost"):
        fit_phase(model, model, ds, ds, hp, None, "frozen", backup=tmp_path)
    saved = model.get_weights()
    assert (tmp_path / "frozen" / "chief" / "checkpoint").is_file()
    ran = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            ran.append(epoch + 1)

    model.fit = lambda *a, **k: real_fit(*a, **{**k, "callbacks": k["callbacks"] + [Count()]})
    model.set_weights([np.zeros_like(w) for w in saved])  # a fresh process's weights
    result = fit_phase(model, model, ds, ds, hp, None, "frozen", backup=tmp_path)
    assert ran == [3]  # only epoch 3 ran
    assert len(result.history["loss"]) == 3  # the phase's history whole, epochs 1-2 kept
    assert not (tmp_path / "frozen").exists()  # deleted once the phase finished
    assert not (tmp_path / "frozen.log").exists()


@pytest.mark.e2e  # its own CI step (make test-e2e): see tests/README.md
def test_mixed_precision_model_trains_with_float32_output(caplog):
    """The mixed_float16 code path on a CPU (float16 compute is slow there, but it runs): the
    model computes in float16 and keeps its softmax in float32; the run's own switch refuses it
    on a CPU with a warning and restores the global policy."""
    import logging

    import numpy as np
    import tf_keras as keras

    from helpers import tiny_config
    from tledge.models import build_classifier
    from tledge.training.fitting import compile_model
    from tledge.training.distribution import precision_policy

    with caplog.at_level(logging.WARNING), precision_policy(True) as on:
        assert on is False
    assert "no GPU is visible" in caplog.text
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(tiny_config().model, 3, 32)
        compile_model(model, 1e-3)
        x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype(np.float32)
        model.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.compute_dtype == "float16"
        assert model.output.dtype == "float32"
        assert np.isfinite(model.predict(x, verbose=0)).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"
