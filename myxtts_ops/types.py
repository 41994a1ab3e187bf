"""Types shared by the fused op (``myxtts_ops.ops``) and the pure-TF reference."""

import collections

#: Outputs of ``masked_mel_loss`` (fused op and reference alike).
#:
#: * ``loss`` -- scalar, float32 (float64 for float64 inputs)
#: * ``per_sample`` -- ``[B]``, same dtype as ``loss``
#: * ``nonfinite_count`` -- int64 scalar: valid elements that are not finite
#: * ``state`` -- float64 ``[STATE_SIZE]``: the updated running statistics
MaskedMelLossOutput = collections.namedtuple(
    "MaskedMelLossOutput", ["loss", "per_sample", "nonfinite_count", "state"]
)
