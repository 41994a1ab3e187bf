"""Types and choices shared by the fused op (``myxtts_ops.ops``), the pure-TF
reference, the CUDA helpers and the loss side. TensorFlow-free."""

import collections

#: Accepted ``loss_type`` values (the TF op's ``loss_type`` attribute).
LOSS_TYPES = ("l1", "huber")
#: Accepted ``normalization`` values (the TF op's ``normalization`` attribute).
NORMALIZATIONS = ("per_sample", "global")

#: Outputs of ``masked_mel_loss`` (fused op and reference alike).
#:
#: * ``loss`` -- scalar, float32 (float64 for float64 inputs)
#: * ``per_sample`` -- ``[B]``, same dtype as ``loss``
#: * ``nonfinite_count`` -- int64 scalar: valid elements whose element loss is
#:   not finite (a NaN/Inf input, or a difference whose loss overflows)
#: * ``state`` -- float64 ``[STATE_SIZE]``: the updated running statistics
MaskedMelLossOutput = collections.namedtuple(
    "MaskedMelLossOutput", ["loss", "per_sample", "nonfinite_count", "state"]
)

#: Outputs of ``masked_mel_loss(..., return_counts=True)``: those of
#: :data:`MaskedMelLossOutput` and what a caller that reduces over the batch
#: itself (XTTSLoss, across replicas) needs, both int64 scalars:
#:
#: * ``active_count`` -- samples with at least one counted element
#: * ``valid_count`` -- elements before the lengths, finite or not
#:   (``valid_count - nonfinite_count`` elements were counted)
MaskedMelLossCounts = collections.namedtuple(
    "MaskedMelLossCounts", MaskedMelLossOutput._fields + ("active_count", "valid_count")
)
