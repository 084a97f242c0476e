"""How much of a model XNNPACK takes (tledge.runtime.delegation), and the rewrite that lets it
take a post-training int8 MobileNetV3 whole (tledge.quantize.graph_rewrite).
No TensorFlow: the model is
the committed tests/models/hard_swish_int8.tflite (made by tests/models/make_models.py)."""

from pathlib import Path

import numpy as np
import pytest

from tledge.quantize.graph_rewrite import can_split, plan, split_int8_hard_swish
from tledge.runtime import Classifier, all_tensors_interpreter, get_backend
from tledge.runtime.delegation import Delegation, delegation, delegation_of_nodes

HARD_SWISH = Path(__file__).parent / "models" / "hard_swish_int8.tflite"


def _node(op, inputs, outputs):
    return {"op_name": op, "inputs": inputs, "outputs": outputs}


def test_one_partition_and_the_ops_at_its_edges():
    # 0 -QUANTIZE-> 1 -CONV-> 2 -CONV-> 3 -SOFTMAX-> 4; the two convs delegated as node 4
    nodes = [_node("QUANTIZE", [0], [1]), _node("CONV_2D", [1, 10], [2]),
             _node("CONV_2D", [2, 11], [3]), _node("SOFTMAX", [3], [4]),
             _node("DELEGATE", [1], [3])]
    d = delegation_of_nodes(nodes, {4})
    assert d == Delegation(1, 4, {"QUANTIZE": 1, "SOFTMAX": 1})
    assert not d.full and "1 partition; on reference kernels: 1 QUANTIZE, 1 SOFTMAX" == d.summary()


def test_an_op_between_two_partitions_is_found():
    # CONV (delegated) -> HARD_SWISH (not) -> CONV (delegated)
    nodes = [_node("CONV_2D", [0, 10], [1]), _node("HARD_SWISH", [1], [2]),
             _node("CONV_2D", [2, 11], [3]), _node("DELEGATE", [0], [1]),
             _node("DELEGATE", [2], [3])]
    d = delegation_of_nodes(nodes, {3})
    assert d.partitions == 2 and d.undelegated == {"HARD_SWISH": 1}


def test_nothing_delegated_lists_every_op_and_all_delegated_lists_none():
    nodes = [_node("CONV_2D", [0, 10], [1]), _node("MEAN", [1, 11], [2])]
    assert delegation_of_nodes(nodes, {2}).undelegated == {"CONV_2D": 1, "MEAN": 1}
    d = delegation_of_nodes(nodes + [_node("DELEGATE", [0], [2])], {2})
    assert d.full and d.summary() == "1 partition, all 2 ops delegated"


def _interpreter(model: bytes, preserve: bool = False):
    if preserve:  # the runtime's own, which silences LiteRT's "for debugging" warning
        return all_tensors_interpreter(model)
    interpreter = get_backend().interpreter_cls(model_content=model, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def test_int8_hard_swish_splits_the_graph_and_the_rewrite_joins_it():
    raw = HARD_SWISH.read_bytes()
    before = delegation(_interpreter(raw))
    assert before.partitions == 3 and before.undelegated.get("HARD_SWISH") == 2

    new, split, kept = split_int8_hard_swish(raw)
    assert (split, kept) == (2, 0)
    after = delegation(_interpreter(new))
    assert after.partitions == 1 and "HARD_SWISH" not in after.undelegated
    assert split_int8_hard_swish(new) == (new, 0, 0)  # nothing left to rewrite


def test_the_rewritten_graph_computes_what_the_old_one_did():
    """The first HARD_SWISH output (same tensor index in both graphs) within one quantization
    step of the reference kernel's on seeded colour fields, the second (whose input carries the
    first's rounding) within two and one on average; the class scores within 2/256."""
    import cv2

    raw = HARD_SWISH.read_bytes()
    new, _, _ = split_int8_hard_swish(raw)
    old_i, new_i = _interpreter(raw, preserve=True), _interpreter(new, preserve=True)
    outputs = [d["outputs"][0] for d in old_i._get_ops_details() if d["op_name"] == "HARD_SWISH"]
    assert len(outputs) == 2
    rng = np.random.default_rng(7)
    for _ in range(16):
        image = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (32, 32))[None]
        for interpreter in (old_i, new_i):
            interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
            interpreter.invoke()
        for bound, t in enumerate(outputs, start=1):
            steps = np.abs(old_i.get_tensor(t).astype(int) - new_i.get_tensor(t).astype(int))
            assert steps.max() <= bound and steps.mean() < 0.25, (t, steps.max(), steps.mean())
        out = old_i.get_output_details()[0]["index"]
        assert np.abs(old_i.get_tensor(out).astype(int) - new_i.get_tensor(out).astype(int)) \
            .max() <= 2


def test_the_rewritten_file_runs_as_a_classifier(tmp_path):
    new, _, _ = split_int8_hard_swish(HARD_SWISH.read_bytes())
    path = tmp_path / "model_int8.tflite"
    path.write_bytes(new)
    clf = Classifier(path, threads=1)
    classes = clf.classify(np.full((48, 64, 3), 128, np.uint8), top_k=3)
    assert len(classes) == 3 and abs(sum(c.score for c in classes) - 1) < 0.02


@pytest.mark.parametrize("x_scale, y_scale, how", [
    (0.02, 0.012, "split"), (0.004, 0.002, "split"),
    # tiny activations (an untrained network): XNNPACK refuses the ADD (its input scale under
    # 2^-10 of its output's, 6/255), and x / 2 is hard-swish to within y's rounding
    (9.2e-6, 4.6e-6, "linear"),
    # neither: an input range wide enough to reach the curve, with a fine output step
    (2e-5, 1e-9, None)])
def test_each_hard_swish_gets_a_form_xnnpack_takes(x_scale, y_scale, how):
    assert plan(x_scale, 0, y_scale) == how
    if how == "linear":  # the dropped x^2 / 6 stays under half a step of y
        x = x_scale * np.arange(-128, 128)
        exact = x * np.clip(x + 3, 0, 6) / 6
        assert np.abs(exact - x / 2).max() <= y_scale / 2
    assert can_split(x_scale, y_scale) is (how == "split")


def test_bench_says_how_much_the_delegate_took(tmp_path):
    """In the table, the JSON, the CSV and the chart: partitions and the op types left."""
    import json

    from tledge.measure import bench, benchreport

    split = tmp_path / "model_int8.tflite"
    split.write_bytes(split_int8_hard_swish(HARD_SWISH.read_bytes())[0])
    report = bench.bench([str(HARD_SWISH), str(split)],
                         bench.BenchOptions(threads=(1,), runs=3, warmup=0), echo=lambda s: None)
    benchreport.write_outputs(report, tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.md",
                              tmp_path / "b.png", echo=lambda s: None)
    old, new = json.loads((tmp_path / "b.json").read_text())["results"]
    assert old["delegation"]["partitions"] == 3 and old["delegation"]["undelegated"][
        "HARD_SWISH"] == 2
    assert new["delegation"]["partitions"] == 1 and "HARD_SWISH" not in new["delegation"][
        "undelegated"]
    table = benchreport.format_table(report)
    assert "XNNPACK" in table and "2 HARD_SWISH" in table
    assert "2 HARD_SWISH" in (tmp_path / "b.md").read_text()
    assert "xnnpack_partitions" in (tmp_path / "b.csv").read_text()
    assert (tmp_path / "b.png").stat().st_size > 0
