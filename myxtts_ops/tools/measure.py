"""Measurement helpers shared by the profiler, ``benchmarks/`` and the tests.

One home for the arithmetic every timing script needs (as Liger-Kernel's
``benchmark/scripts/utils.py`` is for its benchmarks): percentiles of a list of
durations, the bytes a loss step must move at least (the memory floor), and
counting the work ops of a traced TensorFlow graph or an XLA HLO module.

Imports only NumPy: usable on the GPU machine, which has no TensorFlow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

#: Bytes per element of each input dtype.
DTYPE_SIZES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

#: What each mode must move at least, in ``[B, T, M]`` tensor passes:
#: (reads over the valid frames, writes over the whole tensor per gradient).
#: The forward reads y_true and y_pred where frames are valid; the backward
#: reads them again and writes each requested gradient over the whole tensor
#: (padding gets zeros). xtts_step is dominated by the mel term.
MODE_PASSES = {
    "forward": (2, 0),
    "backward": (2, 1),
    "forward_backward": (4, 1),
    "xtts_step": (4, 1),
}

#: Graph op types that are bookkeeping, not work (not counted by :func:`count_ops`).
NON_WORK_OPS = frozenset(
    {
        "Placeholder",
        "Const",
        "NoOp",
        "Identity",
        "IdentityN",
        "PartitionedCall",
        "StatefulPartitionedCall",
        "_Arg",
        "_Retval",
    }
)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def percentiles_ms(times_s: Sequence[float]) -> tuple[float, float, float]:
    """(median, p20, p80) in milliseconds of a list of durations in seconds."""
    arr = np.asarray(times_s, dtype=np.float64) * 1e3
    p20, p50, p80 = np.percentile(arr, [20.0, 50.0, 80.0])
    return float(p50), float(p20), float(p80)


def floor_bytes(
    mode: str,
    batch: int,
    frames: int,
    mels: int,
    dtype: str,
    valid_fraction: float = 1.0,
    gradients: int = 1,
) -> int:
    """Bytes ``mode`` must move at least for one ``[batch, frames, mels]`` step
    whose lengths cover ``valid_fraction`` of the frames.

    ``gradients``: how many ``[B, T, M]`` gradients the backward writes (1 when
    only d/dy_pred is asked for, as in a training step; 2 for the raw kernels,
    which write d/dy_true and d/dy_pred).
    """
    if mode not in MODE_PASSES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODE_PASSES)}")
    valid_reads, writes_per_gradient = MODE_PASSES[mode]
    tensor_bytes = batch * frames * mels * DTYPE_SIZES[dtype]
    passes = valid_reads * valid_fraction + writes_per_gradient * gradients
    return int(round(passes * tensor_bytes))


def count_ops(concrete_function, nested: bool = True) -> int:
    """Work ops of a traced ``tf.function`` (a ConcreteFunction), per call.

    ``nested``: also count the bodies of the functions it calls (cond
    branches, while bodies). Ops in :data:`NON_WORK_OPS` are not counted.
    """
    graph_def = concrete_function.graph.as_graph_def()
    nodes = list(graph_def.node)
    if nested:
        for fdef in graph_def.library.function:
            nodes.extend(fdef.node_def)
    return sum(1 for node in nodes if node.op not in NON_WORK_OPS)


# An HLO instruction line: "  %name = type opcode(...)" or "  ROOT %name = ...".
_HLO_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*\S.*?\s([a-z][\w\-]*)\(")
#: HLO opcodes that are plumbing, not work.
HLO_NON_WORK = frozenset({"parameter", "constant", "tuple", "get-tuple-element", "copy", "bitcast"})


def hlo_opcodes(hlo_text: str) -> Iterable[str]:
    """The opcode of every instruction in an HLO module's text."""
    for line in hlo_text.splitlines():
        match = _HLO_INSTRUCTION.match(line)
        if match:
            yield match.group(1)


def hlo_stats(hlo_text: str) -> tuple[int, int]:
    """(work instructions, custom calls) of an HLO module's text."""
    ops = [op for op in hlo_opcodes(hlo_text) if op not in HLO_NON_WORK]
    return len(ops), sum(1 for op in ops if op == "custom-call")
