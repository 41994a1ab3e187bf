"""The profiler's measurement records."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class Record:
    """One measurement: an implementation of a mode on one shape.

    The fields without a default are the ones every JSON record has, in this
    order (SPEC section 5); the others follow them. ``impl == "floor"`` is the
    memory-bandwidth floor of the mode (bytes / streaming bandwidth).
    """

    impl: str
    mode: str
    batch: int
    frames: int
    mels: int
    dtype: str
    device: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    gbps: float
    #: Bytes the mode must move at least (see :func:`measure.floor_bytes`).
    floor_bytes: int = 0
    #: floor time / median time (1.0 for the floor record).
    floor_fraction: float | None = None
    #: Work ops of the traced step, nested function bodies included.
    ops_per_step: int | None = None
    speedup_vs_reference: float | None = None
    valid_fraction: float | None = None
    repeats: int = 0
    input_sets: int = 1
    bandwidth_gbps: float | None = None
    #: XLA-compiled implementations: work instructions of the step's HLO module
    #: and how many of them are custom calls (this library's: the fused
    #: kernels, and in ``xtts_step`` XTTSLoss's length check, which runs as a
    #: custom call with the reference too).
    xla_hlo_ops: int | None = None
    xla_custom_calls: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Fields every JSON record has, in this order (the fields without a default).
RECORD_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Record)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
