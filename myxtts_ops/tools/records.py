"""The profiler's measurement records."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional


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
    floor_fraction: Optional[float] = None
    #: Work ops of the traced step, nested function bodies included.
    ops_per_step: Optional[int] = None
    speedup_vs_reference: Optional[float] = None
    valid_fraction: Optional[float] = None
    repeats: int = 0
    input_sets: int = 1
    bandwidth_gbps: Optional[float] = None
    #: XLA-compiled implementations: work instructions of the step's HLO module
    #: and how many of them are custom calls (the fused kernels inside XLA).
    xla_hlo_ops: Optional[int] = None
    xla_custom_calls: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Record":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: Fields every JSON record has, in this order (the fields without a default).
RECORD_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Record)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
