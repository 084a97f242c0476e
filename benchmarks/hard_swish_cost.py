"""What int8 hard-swish costs a MobileNetV3 whose activations have a trained network's scale.

    python benchmarks/hard_swish_cost.py [--backbone mobilenet_v3_small] [--runs 300] [--qat]

`make bench`'s MobileNetV3 files have random weights: their activations are tiny, and most of
their hard-swish ops take the rewrite's one-MUL form (tledge/quantize/graph_rewrite.py,
"linear") where
a trained network's take three ops (ADD+RELU6, MUL by 1/6, MUL). This builds the same backbone
with each BatchNorm's statistics set from a batch of `shapes` images (momentum 0, one forward
pass in training mode: every layer then sees unit-scale inputs, as in a trained network),
converts it to fp32 and to tledge's post-training int8, and times, in one process, alternating
bare invoke() calls at 1 thread: fp32, int8, and int8 with the MUL by 1/6 dropped (wrong
numbers, right cost: what folding that constant into the next layers' weights could save).
With --qat, also the int8 file of the QAT model made from it (tledge.training.qat:
hard-swish as quantized
ADD and MUL layers, ranges calibrated on `shapes` images, no training): QAT's int8 file against
the same fp32 file, in the same loop.
"""

from __future__ import annotations

import time

import click
import numpy as np

from tledge.core.quiet import quiet_tensorflow_logs
quiet_tensorflow_logs()


def drop_sixth(model: bytes) -> bytes:
    """The int8 file without its hard-swish MUL-by-1/6 ops (h read as t)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    graph = m.subgraphs[0]
    remap, ops = {}, []
    for op in graph.operators:
        if any(graph.tensors[i].name.endswith(b"/sixth") for i in op.inputs):
            remap[int(op.outputs[0])] = int(op.inputs[0])
            continue
        ops.append(op)
    for op in ops:
        op.inputs = np.array([remap.get(int(i), int(i)) for i in op.inputs], np.int32)
    graph.operators = ops
    builder = flatbuffers.Builder(0)
    builder.Finish(m.Pack(builder), b"TFL3")
    return bytes(builder.Output())


@click.command()
@click.option("--backbone", default="mobilenet_v3_small", show_default=True)
@click.option("--runs", default=300, show_default=True)
@click.option("--qat", is_flag=True, help="Also time the QAT model's int8 file.")
def main(backbone: str, runs: int, qat: bool) -> None:
    from tledge.quantize import graph_rewrite
    from tledge.measure.bench import machine_info
    from tledge.core.config import RunConfig
    from tledge.quantize.conversion import QuantizationConfig, convert
    from tledge.data.shapes import generate
    from tledge.models import build_classifier
    from tledge.core.quiet import import_tensorflow
    from tledge.runtime import get_backend

    import_tensorflow()
    import tf_keras as keras

    plans = []
    plan = graph_rewrite.plan
    graph_rewrite.plan = lambda *a: plans.append(plan(*a)) or plans[-1]
    keras.utils.set_random_seed(0)
    config = RunConfig().override(data={"image_size": 224},
                                  model={"backbone": backbone, "weights": "none"})
    model = build_classifier(config.model, 6, 224)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(generate(6, 224, seed=0)[0].astype(np.float32), training=True)
    files = {"fp32": convert(model, QuantizationConfig.for_float32()),
             "int8": convert(model, QuantizationConfig.for_int8(generate(17, 224, seed=1)[0]))}
    if "split" in plans:  # a backbone without hard-swish has no MUL by 1/6 to drop
        files["int8 without the 1/6 MUL"] = drop_sixth(files["int8"])
    if qat:
        from tledge.data.pipeline import batches
        from tledge.training.qat import calibrate_ranges, make_qat_model

        x, y = generate(6, 224, seed=1)[:2]
        qat_model = make_qat_model(model)
        calibrate_ranges(qat_model, batches(x, y, 8).repeat().take(4))
        files["int8 from QAT"] = convert(qat_model, QuantizationConfig.for_int8(x[:16],
                                                                                from_qat=True))
    cls = get_backend().interpreter_cls
    interpreters = {}
    for name, raw in files.items():
        it = cls(model_content=raw, num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        interpreters[name] = it
    times: dict = {name: [] for name in files}
    for _ in range(20):
        for it in interpreters.values():
            it.invoke()
    for _ in range(runs):
        for name, it in interpreters.items():
            start = time.perf_counter()
            it.invoke()
            times[name].append(1000 * (time.perf_counter() - start))
    click.echo(f"{backbone} 224, BatchNorm statistics from data; machine "
               f"{machine_info()[0]['machine_id']}; hard-swish rewrites: "
               f"{ {p: plans.count(p) for p in sorted(set(plans), key=str)} }")
    base = np.median(times["fp32"])
    from tledge.runtime.delegation import delegation

    for name, ms in times.items():
        click.echo(f"  {name:<26} p50 {np.median(ms):6.3f} ms   {np.median(ms) / base:4.2f}x fp32"
                   f"   {delegation(interpreters[name]).partitions} XNNPACK partition(s)")


if __name__ == "__main__":
    main()
