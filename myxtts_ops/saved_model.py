"""Loading SavedModels whose graphs contain the fused op.

``tf.saved_model.load`` needs the op library registered in the process first;
without it TensorFlow fails with "Op type not registered
'MyxttsOps>MaskedMelLoss'", which does not say what to do. Use::

    import myxtts_ops.saved_model
    model = myxtts_ops.saved_model.load(path)

or call ``myxtts_ops.load_ops()`` before ``tf.saved_model.load(path)``.
"""

import re

__all__ = ["MissingOpError", "load", "explain"]

_OP_NAME = re.compile(r"MyxttsOps>\w+")


class MissingOpError(RuntimeError):
    """A SavedModel uses a myxtts-ops op that is not registered in this process."""


def explain(err):
    """A :class:`MissingOpError` with guidance for a TF error about an
    unregistered ``MyxttsOps>`` op, or None when ``err`` is something else."""
    import tensorflow as tf

    message = getattr(err, "message", None) or str(err)
    found = _OP_NAME.search(message)
    if found is None:
        return None
    # The op registered with other inputs than the graph's node: another version's graph.
    other_signature = "NodeDef expected inputs" in message and "do not match" in message
    if (
        "not registered" not in message
        and not other_signature
        and not isinstance(err, tf.errors.NotFoundError)
    ):
        return None
    name = found.group(0)
    from myxtts_ops import _loader

    loaded = _loader._library is not None
    if other_signature:
        hint = (
            f"The SavedModel's graph uses {name!r} with other inputs than this version of "
            "myxtts-ops defines: it was written by a different version. Install the version "
            "that saved it, or re-export the model with this one."
        )
    elif loaded:
        hint = (
            f"The myxtts-ops op library is loaded but does not register {name!r}: the "
            "SavedModel was written by a different version of myxtts-ops. Install the "
            "version that saved it, or re-export the model with this one."
        )
    else:
        hint = (
            f"The SavedModel uses the custom op {name!r} from myxtts-ops, which is not "
            "registered in this process. Call `myxtts_ops.load_ops()` before "
            "`tf.saved_model.load(...)`, or load with `myxtts_ops.saved_model.load(path)`."
        )
    return MissingOpError(f"{hint}\nTensorFlow said: {message}")


def load(export_dir, *args, **kwargs):
    """``tf.saved_model.load`` after registering the myxtts-ops op library.

    Arguments are passed on to ``tf.saved_model.load``. Raises
    ``myxtts_ops.OpLibraryError`` when the library cannot be loaded, and
    :class:`MissingOpError` (a ``RuntimeError``) when the SavedModel needs a
    ``MyxttsOps>`` op this build does not have.
    """
    import tensorflow as tf

    from myxtts_ops import ops

    ops.load_ops()
    try:
        return tf.saved_model.load(export_dir, *args, **kwargs)
    except (tf.errors.NotFoundError, RuntimeError, ValueError) as err:
        better = explain(err)
        if better is None:
            raise
        raise better from err
