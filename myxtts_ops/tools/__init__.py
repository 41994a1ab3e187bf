"""The tools layer: what uses both the op (:mod:`myxtts_ops`) and the loss side.

``profiler`` (with ``workloads``, ``timing``, ``records``, ``measure``),
``report``, ``demo`` and ``cli`` (the ``myxtts-ops`` command). Imports run one
way: kernels -> op -> loss -> tools; nothing outside this package imports it
(``myxtts_ops.__main__``, the ``python -m myxtts_ops`` entry point, is part of
this layer). The loss side is imported in one place: :mod:`.loss_side`.
Importing this package imports neither TensorFlow nor the loss side.
"""
