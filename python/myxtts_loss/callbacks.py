"""Logging helpers for :class:`~myxtts_loss.XTTSLoss`.

* :func:`write_loss_summaries` writes every metric and latest loss as a
  TensorBoard scalar summary (works eagerly and inside ``tf.function``; uses
  the default summary writer; written with ``tf.summary.write`` and scalar
  metadata, so the ``tensorboard`` package is not needed to write them).
* :class:`XTTSLossMonitor` is a Keras callback that adds the adaptive-weight
  state to the epoch logs (so it lands in ``History`` and in the TensorBoard
  callback) and optionally writes summaries every ``every_n_steps`` batches.
  It reads the variables on the host only at those points.
* :class:`XTTSLossValidation` is a Keras callback that makes validation and
  ``evaluate`` batches leave the loss's training state alone where the model
  passes the loss no ``training`` flag (a plain ``keras.Model`` compiled with
  it; :class:`~myxtts_loss.XTTSModel` needs none).
* :class:`XTTSLossBackup` is a Keras callback that backs up and restores the
  loss's state next to ``keras.callbacks.BackupAndRestore`` (which saves only
  the model and the optimizer), so an interrupted ``fit`` resumes with the
  same adaptive-weight state as if it had never stopped.
"""

import os
import shutil

import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

__all__ = [
    "write_loss_summaries",
    "XTTSLossMonitor",
    "XTTSLossValidation",
    "XTTSLossBackup",
    "loss_scalars",
]


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
    STABILITY_LOG_KEYS = ("nonfinite_steps", "all_nonfinite_mel_steps", "smoothed_total_loss")

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
        # Reading the metrics eagerly also warns (once) when whole mel batches were non-finite.
        stability = self.loss_fn.get_stability_metrics()
        for key in self.STABILITY_LOG_KEYS:
            logs[f"{self.prefix}_{key}"] = float(stability[key].numpy())
        if self._writer is not None:
            self._writer.flush()


class XTTSLossValidation(keras.callbacks.Callback):
    """Keras callback: validation and ``evaluate`` calls leave the loss's training state alone.

    A plain ``keras.Model`` compiled with an :class:`~myxtts_loss.XTTSLoss`
    calls it the same way in training and validation (Keras passes a loss no
    ``training`` flag), so each validation batch would move the adaptive
    weight's warm-up, cooling and statistics (contract defect 12). This
    callback turns ``loss_fn.update_state_on_call`` off from
    ``on_test_begin`` to ``on_test_end``; Keras traces its evaluation step
    inside that window, so the compiled step makes validation calls::

        model.compile(optimizer="adam", loss=loss_fn)
        model.fit(ds, validation_data=val_ds, callbacks=[XTTSLossValidation(loss_fn)])
        model.evaluate(val_ds, callbacks=[XTTSLossValidation(loss_fn)])

    Pass it to every ``fit``/``evaluate`` of that model: the switch is read
    when a step is traced, and an evaluation step first traced without it
    keeps making training calls. (:class:`~myxtts_loss.XTTSModel` passes
    ``training=False`` itself.)
    """

    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn = loss_fn
        self._previous = None

    def on_test_begin(self, logs=None):
        self._previous = self.loss_fn.update_state_on_call
        self.loss_fn.update_state_on_call = False

    def on_test_end(self, logs=None):
        if self._previous is not None:
            self.loss_fn.update_state_on_call = self._previous
            self._previous = None


class XTTSLossBackup(keras.callbacks.Callback):
    """Back up an :class:`XTTSLoss`'s state for fault-tolerant ``fit`` (with BackupAndRestore).

    ``keras.callbacks.BackupAndRestore`` saves the model weights, the optimizer
    and the epoch, not the loss: after a resume the adaptive weight, the
    running statistics and every counter would start again from scratch. Pass
    this callback right after it, with the same ``save_freq``::

        backup_dir = "/tmp/backup"
        callbacks = [
            keras.callbacks.BackupAndRestore(backup_dir),
            XTTSLossBackup(loss_fn, backup_dir),
        ]
        model.fit(ds, epochs=10, callbacks=callbacks)   # run it again after a failure

    It writes ``tf.train.Checkpoint(loss=loss_fn)`` (every variable of the loss)
    under ``backup_dir/xtts_loss`` whenever BackupAndRestore saves (every
    epoch, or every ``save_freq`` batches), restores the latest one in
    ``on_train_begin``, and removes it in ``on_train_end`` when
    ``delete_checkpoint`` (as BackupAndRestore does with its own files).
    """

    SUBDIR = "xtts_loss"

    def __init__(self, loss_fn, backup_dir, save_freq="epoch", delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"backup_dir must be a directory path, got backup_dir={backup_dir!r}")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise ValueError(
                f"save_freq must be 'epoch' or a positive int, got save_freq={save_freq!r}"
            )
        self.loss_fn = loss_fn
        self.directory = os.path.join(os.fspath(backup_dir), self.SUBDIR)
        self.save_freq = save_freq
        self.delete_checkpoint = bool(delete_checkpoint)
        self._checkpoint = tf.train.Checkpoint(loss=loss_fn)
        self._manager = None
        self._batches_since_save = 0

    def _get_manager(self):
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(
                self._checkpoint, self.directory, max_to_keep=2
            )
        return self._manager

    def restore(self):
        """Restore the latest backup into the loss; returns its path or None."""
        latest = tf.train.latest_checkpoint(self.directory)
        if latest is None:
            return None
        self._checkpoint.restore(latest).assert_existing_objects_matched()
        return latest

    def save(self):
        return self._get_manager().save()

    def on_train_begin(self, logs=None):
        self._batches_since_save = 0
        self.restore()

    def on_train_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch":
            return
        self._batches_since_save += 1
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        if self.save_freq == "epoch":
            self.save()

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.isdir(self.directory):
            shutil.rmtree(self.directory, ignore_errors=True)
        self._manager = None
