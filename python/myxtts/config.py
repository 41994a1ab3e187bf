"""Configuration of :class:`myxtts.training.losses.XTTSLoss`.

The field names are the ones MyXTTS training configs already use
(``mel_loss_weight``, ``adaptive_weight_*``, ...), so an existing config can be
passed as ``XTTSLoss(config=XTTSLossConfig(**existing_settings))`` or the same
names can be given to ``XTTSLoss`` directly.

Every setting is validated when the config is created; a bad value raises
``ValueError`` naming the setting and the value.
"""

import dataclasses
import math

__all__ = ["XTTSLossConfig", "LOSS_TYPES", "NORMALIZATIONS", "IMPLEMENTATIONS"]

LOSS_TYPES = ("l1", "huber")
NORMALIZATIONS = ("per_sample", "global")
IMPLEMENTATIONS = ("fused", "reference")


@dataclasses.dataclass(frozen=True)
class XTTSLossConfig:
    """All settings of :class:`~myxtts.training.losses.XTTSLoss` (defaults = SPEC 4)."""

    # Loss terms.
    mel_loss_weight: float = 2.5
    stop_loss_weight: float = 1.0
    stop_positive_weight: float = 5.0
    stop_label_smoothing: float = 0.0
    stop_from_logits: bool = True
    mel_loss_type: str = "l1"
    mel_huber_delta: float = 1.0
    mel_normalization: str = "per_sample"

    # Stability monitoring.
    use_adaptive_weights: bool = True
    loss_smoothing_factor: float = 0.1
    max_loss_spike_threshold: float = 2.0
    gradient_norm_threshold: float = 5.0

    # Adaptive mel weight (SPEC 4.1).
    adaptive_weight_max_change_percent: float = 0.05
    adaptive_weight_cooling_period: int = 50
    adaptive_weight_min_stable_steps: int = 10
    adaptive_weight_min_warmup_steps: int = 100
    adaptive_weight_variance_threshold: float = 0.5
    adaptive_weight_min_weight: float = 1.0
    adaptive_weight_max_weight: float = 5.0
    adaptive_weight_loss_high_ratio: float = 1.1
    adaptive_weight_loss_low_ratio: float = 0.9
    adaptive_weight_gradient_growth_factor: float = 1.5
    adaptive_weight_max_weighted_loss: float = 1000.0

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self):
        """Raise ``ValueError`` naming the first invalid setting."""

        def num(name, *, lo=None, hi=None, lo_open=False, hi_open=False):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                # Accept NumPy scalars too.
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{name} must be a number, got {name}={value!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {name}={value!r}")
            if lo is not None and (value <= lo if lo_open else value < lo):
                rel = ">" if lo_open else ">="
                raise ValueError(f"{name} must be {rel} {lo}, got {name}={value!r}")
            if hi is not None and (value >= hi if hi_open else value > hi):
                rel = "<" if hi_open else "<="
                raise ValueError(f"{name} must be {rel} {hi}, got {name}={value!r}")

        def integer(name, lo=0):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value:
                raise ValueError(f"{name} must be an integer, got {name}={value!r}")
            if value < lo:
                raise ValueError(f"{name} must be >= {lo}, got {name}={value!r}")

        def choice(name, choices):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")

        def boolean(name):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {name}={value!r}")

        num("mel_loss_weight", lo=0.0)
        num("stop_loss_weight", lo=0.0)
        num("stop_positive_weight", lo=0.0, lo_open=True)
        num("stop_label_smoothing", lo=0.0, hi=1.0, hi_open=True)
        boolean("stop_from_logits")
        choice("mel_loss_type", LOSS_TYPES)
        num("mel_huber_delta", lo=0.0, lo_open=True)
        choice("mel_normalization", NORMALIZATIONS)
        boolean("use_adaptive_weights")
        num("loss_smoothing_factor", lo=0.0, hi=1.0, lo_open=True)
        num("max_loss_spike_threshold", lo=1.0, lo_open=True)
        num("gradient_norm_threshold", lo=0.0)
        num("adaptive_weight_max_change_percent", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        integer("adaptive_weight_cooling_period")
        integer("adaptive_weight_min_stable_steps")
        integer("adaptive_weight_min_warmup_steps")
        num("adaptive_weight_variance_threshold", lo=0.0, lo_open=True)
        num("adaptive_weight_min_weight", lo=0.0, lo_open=True)
        num("adaptive_weight_max_weight", lo=0.0, lo_open=True)
        self._check_ordered("adaptive_weight_min_weight", "adaptive_weight_max_weight")
        num("adaptive_weight_loss_high_ratio", lo=0.0, lo_open=True)
        num("adaptive_weight_loss_low_ratio", lo=0.0, lo_open=True)
        self._check_ordered("adaptive_weight_loss_low_ratio", "adaptive_weight_loss_high_ratio")
        num("adaptive_weight_gradient_growth_factor", lo=0.0, lo_open=True)
        num("adaptive_weight_max_weighted_loss", lo=0.0, lo_open=True)
        if self.use_adaptive_weights:
            self.check_base_weight_in_bounds()

    def _check_ordered(self, low, high):
        """ValueError unless setting ``low`` <= setting ``high``."""
        lo, hi = getattr(self, low), getattr(self, high)
        if lo > hi:
            raise ValueError(f"{low} must be <= {high}, got {low}={lo!r} and {high}={hi!r}")

    def check_base_weight_in_bounds(self):
        """With adaptation on, the base mel weight must lie within the weight bounds."""
        lo, hi = self.adaptive_weight_min_weight, self.adaptive_weight_max_weight
        if not lo <= self.mel_loss_weight <= hi:
            raise ValueError(
                f"mel_loss_weight={self.mel_loss_weight!r} is outside the adaptive weight bounds "
                f"[adaptive_weight_min_weight={lo!r}, adaptive_weight_max_weight={hi!r}]; "
                "change the weight or the bounds, or pass use_adaptive_weights=False"
            )

    # --------------------------------------------------------------- helpers
    def replace(self, **changes):
        """A copy with some settings changed (validated)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown XTTSLoss setting(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
