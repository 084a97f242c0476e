"""How much of a model the XNNPACK delegate took, read from the interpreter itself.

After ``allocate_tensors()`` every backend (LiteRT, tflite_runtime, tf.lite) has applied its
default CPU delegate, XNNPACK. The delegate replaces each connected run of ops it supports with
one ``DELEGATE`` node (a partition); the ops it refused stay on TFLite's reference kernels, and
every boundary between a partition and such an op costs a hand-over. One partition and no op
left means the delegate took the whole graph; several partitions are the signature of a slow
file (a post-training int8 MobileNetV3 with its int8 HARD_SWISH ops: 19 partitions, 2-3x slower
than its fp32 file on x86).

``interpreter._get_ops_details()`` lists every node of the graph: the model's own operators
(also the ones a delegate replaced, which keep their entries) followed by one ``DELEGATE`` node
per partition. Which of the model's operators still run is not listed, so it is derived from
tensors: an operator that runs outside the delegate produces a tensor that a partition consumes
(a ``DELEGATE`` node's input), a graph output, or a tensor another such operator consumes; and
never a tensor a partition produces. Numpy only: what a Raspberry Pi imports.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

DELEGATE = "DELEGATE"


@dataclass(frozen=True)
class Delegation:
    """What the delegate took of one model.

    Attributes:
      partitions: DELEGATE nodes (0: nothing delegated, 1: one partition).
      ops: the model's operators.
      undelegated: op type -> how many of it run on the reference kernels.
    """

    partitions: int
    ops: int
    undelegated: dict = field(default_factory=dict)

    @property
    def full(self) -> bool:
        """The delegate took every operator in one partition.

        Returns:
          True when nothing is left to the reference kernels.
        """
        return self.partitions == 1 and not self.undelegated

    def summary(self) -> str:
        """One short phrase: "1 partition, all ops" or "19 partitions; left: 18 HARD_SWISH".

        Returns:
          The phrase.
        """
        plural = "s" if self.partitions != 1 else ""
        if not self.undelegated:
            return f"{self.partitions} partition{plural}, all {self.ops} ops delegated"
        left = ", ".join(f"{n} {op}" for op, n in sorted(self.undelegated.items(),
                                                          key=lambda kv: (-kv[1], kv[0])))
        return f"{self.partitions} partition{plural}; on reference kernels: {left}"

    def to_dict(self) -> dict:
        """The delegation for JSON (bench, the model card).

        Returns:
          {"partitions", "ops", "undelegated", "fully_delegated"}.
        """
        return {"partitions": self.partitions, "ops": self.ops,
                "undelegated": dict(self.undelegated), "fully_delegated": self.full}


def delegation(interpreter) -> Optional[Delegation]:
    """The delegation of an interpreter whose tensors are allocated; None where the backend
    does not list its nodes (``_get_ops_details`` is a private API of every backend).

    Args:
      interpreter: a backend's Interpreter, tensors allocated.

    Returns:
      Delegation (partitions, op types left to the reference kernels), or None.
    """
    try:
        nodes = interpreter._get_ops_details()
        outputs = {int(d["index"]) for d in interpreter.get_output_details()}
    except (AttributeError, RuntimeError, ValueError, KeyError):
        return None
    return delegation_of_nodes(nodes, outputs)


def delegation_of_nodes(nodes: list[dict], graph_outputs: set[int]) -> Delegation:
    """The derivation of :func:`delegation` on a node list (``op_name``, ``inputs``,
    ``outputs`` per node), separate so it can be checked on hand-made graphs.

    Args:
      nodes: the interpreter's ops in execution order.
      graph_outputs: tensor indices of the graph's outputs.

    Returns:
      The Delegation.
    """
    delegates = [n for n in nodes if n["op_name"] == DELEGATE]
    ops = [n for n in nodes if n["op_name"] != DELEGATE]
    produced_by_delegate = {int(t) for n in delegates for t in n["outputs"]}
    consumed_by_delegate = {int(t) for n in delegates for t in n["inputs"]}
    candidates = [n for n in ops
                  if not produced_by_delegate.intersection(int(t) for t in n["outputs"])]
    # Work backwards from what a partition or the caller consumes.
    wanted = consumed_by_delegate | set(graph_outputs)
    running: set[int] = set()  # positions in candidates
    changed = True
    while changed:
        changed = False
        for i, node in enumerate(candidates):
            if i not in running and wanted.intersection(int(t) for t in node["outputs"]):
                running.add(i)
                wanted.update(int(t) for t in node["inputs"] if int(t) >= 0)
                changed = True
    return Delegation(len(delegates), len(ops),
                      dict(Counter(candidates[i]["op_name"] for i in sorted(running))))
