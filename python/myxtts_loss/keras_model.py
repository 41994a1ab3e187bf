"""Keras integration for MyXTTS dict outputs.

Keras' ``compile(loss=...)`` applies a single loss to *each* model output
separately, pairing ``y`` and ``y_pred`` by structure. MyXTTS models return a
dict (``mel_output``, ``stop_tokens``, ...) whose keys differ from the
targets' (``mel_target``, ``mel_lengths``, ``stop_target``), and XTTSLoss
needs all of them at once. :class:`XTTSModelMixin` overrides
``Model.compute_loss`` (the documented Keras 3 extension point) so that, when
the compiled loss is an :class:`~myxtts_loss.XTTSLoss`, it receives
the whole ``y`` and ``y_pred`` (dicts or plain tensors) plus
``training=False`` during ``evaluate`` (validation does not move the adaptive
state). Regularisation losses (``model.losses``) are added as usual. Its
``compile`` also wires the optimizer to feed gradient norms to the loss
(:func:`~myxtts_loss.gradient_norm.feed_gradient_norm`), unless
``feed_gradient_norms=False``.

Usage::

    model = XTTSModel(inputs, {"mel_output": mel, "stop_tokens": stop})   # functional
    model.compile(optimizer="adam", loss=XTTSLoss(), jit_compile=False)
    model.fit(dataset_of((x, {"mel_target": ..., "mel_lengths": ..., "stop_target": ...})))

or ``class MyDecoder(XTTSModelMixin, keras.Model): ...`` for subclassed models.
"""

import keras
import tensorflow as tf

from myxtts_loss.gradient_norm import feed_gradient_norm
from myxtts_loss.loss import XTTSLoss

__all__ = ["XTTSModelMixin", "XTTSModel"]


class XTTSModelMixin:
    """Mix into a ``keras.Model`` (before it in the bases) to train with an XTTSLoss."""

    def compile(self, *args, feed_gradient_norms=True, **kwargs):
        super().compile(*args, **kwargs)
        self._feeds_gradient_norms = bool(feed_gradient_norms)
        loss_fn = self.xtts_loss
        if (
            loss_fn is not None
            and feed_gradient_norms
            and getattr(self, "optimizer", None) is not None
        ):
            feed_gradient_norm(self.optimizer, loss_fn)

    # keras.saving: Keras skips compile() when it loads a model whose compile()
    # is overridden unless the model restores it itself; these two do.
    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and not getattr(self, "_feeds_gradient_norms", True):
            config = dict(config, feed_gradient_norms=False)
        return config

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # so its saved variables load

    @property
    def xtts_loss(self):
        """The compiled XTTSLoss, or None."""
        loss = getattr(self, "loss", None)
        return loss if isinstance(loss, XTTSLoss) else None

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss_fn = self.xtts_loss
        if loss_fn is None:
            return super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        total = tf.cast(loss_fn(y, y_pred, sample_weight, training=training), tf.float32)
        losses = [total]
        for extra in self.losses:
            losses.append(self._aggregate_additional_loss(extra))
        return tf.add_n(losses) if len(losses) > 1 else total


@keras.saving.register_keras_serializable(package="myxtts_loss")
class XTTSModel(XTTSModelMixin, keras.Model):
    """``keras.Model`` (functional or subclassed) that trains with an XTTSLoss; see module doc."""
