"""Logging helpers for :class:`~myxtts.training.losses.XTTSLoss`.

* :func:`write_loss_summaries` writes every metric and latest loss as a
  TensorBoard scalar summary (works eagerly and inside ``tf.function``; uses
  the default summary writer; written with ``tf.summary.write`` and scalar
  metadata, so the ``tensorboard`` package is not needed to write them).
* :class:`XTTSLossMonitor` is a Keras callback that adds the adaptive-weight
  state to the epoch logs (so it lands in ``History`` and in the TensorBoard
  callback) and optionally writes summaries every ``every_n_steps`` batches.
  It reads the variables on the host only at those points.
"""

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

__all__ = ["write_loss_summaries", "XTTSLossMonitor", "loss_scalars"]


def loss_scalars(loss_fn):
    """Every metric and latest loss of ``loss_fn`` as ``{name: scalar tensor}``."""
    out = {}
    for key, value in loss_fn.get_stability_metrics().items():
        out[f"stability/{key}"] = value
    for key, value in loss_fn.get_adaptive_weight_metrics().items():
        out[f"adaptive/{key}"] = value
    for key, value in loss_fn.get_losses().items():
        out[f"losses/{key}"] = value
    return out


def _scalar_metadata():
    # What tensorboard's tf.summary.scalar writes: the "scalars" plugin, data class SCALAR.
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return metadata


def write_loss_summaries(loss_fn, step, prefix="xtts"):
    """A scalar summary for every value of :func:`loss_scalars` at ``step``.

    Returns True when a default summary writer was there to write to.
    """
    metadata = _scalar_metadata()
    written = tf.constant(False)
    for key, value in loss_scalars(loss_fn).items():
        written = tf.summary.write(
            f"{prefix}/{key}", tf.cast(value, tf.float32), step=step, metadata=metadata
        )
    return written


class XTTSLossMonitor(keras.callbacks.Callback):
    """Keras callback: adaptive-weight state in the epoch logs (+ optional summaries)."""

    LOG_KEYS = ("current_mel_weight", "weight_changes", "consecutive_stable_steps")

    def __init__(self, loss_fn, log_dir=None, every_n_steps=100, prefix="xtts"):
        super().__init__()
        self.loss_fn = loss_fn
        self.every_n_steps = int(every_n_steps)
        self.prefix = prefix
        self._writer = tf.summary.create_file_writer(log_dir) if log_dir else None

    def on_train_batch_end(self, batch, logs=None):
        if self._writer is None or self.every_n_steps <= 0:
            return
        step = int(self.loss_fn.step_count.numpy())
        if step % self.every_n_steps == 0:
            with self._writer.as_default():
                write_loss_summaries(self.loss_fn, step, self.prefix)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        adaptive = self.loss_fn.get_adaptive_weight_metrics()
        for key in self.LOG_KEYS:
            logs[f"{self.prefix}_{key}"] = float(adaptive[key].numpy())
        stability = self.loss_fn.get_stability_metrics()
        logs[f"{self.prefix}_nonfinite_steps"] = float(stability["nonfinite_steps"].numpy())
        if self._writer is not None:
            self._writer.flush()
