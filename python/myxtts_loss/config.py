"""Settings of :class:`myxtts_loss.XTTSLoss` (one frozen, validated dataclass).

The field names are the ones MyXTTS uses: the 17 keyword arguments of the
original ``XTTSLoss`` constructor (``mel_loss_weight`` ... ``contrastive_margin``,
in its order: :data:`MYXTTS_ARGS`) and the ``adaptive_weight_*``
names of its training config, plus the settings of this project's terms.

Every setting is validated when the config is created: a wrong type or a
value out of range raises ``ValueError`` naming the setting and the value
(``True`` is not a number, ``10.0`` is not an integer setting, ``None`` is
refused everywhere).
"""

import dataclasses
import math
import numbers

from myxtts_ops import kernels as op_kernels
from myxtts_ops import types as op_types

__all__ = [
    "XTTSLossConfig",
    "LOSS_TYPES",
    "NORMALIZATIONS",
    "IMPLEMENTATIONS",
    "MYXTTS_TRAINER_ARGS",
    "MYXTTS_ARGS",
]

LOSS_TYPES = op_types.LOSS_TYPES
#: per_sample / global: the fused op's normalisations; batch: per-sample mean,
#: then the mean over all B samples (zero-length samples add 0), as MyXTTS does.
NORMALIZATIONS = op_types.NORMALIZATIONS + ("batch",)
IMPLEMENTATIONS = ("fused", "reference")

#: The 13 keyword arguments the MyXTTS trainer passes (contract section 1).
MYXTTS_TRAINER_ARGS = (
    "mel_loss_weight",
    "stop_loss_weight",
    "attention_loss_weight",
    "duration_loss_weight",
    "pitch_loss_weight",
    "energy_loss_weight",
    "prosody_pitch_loss_weight",
    "prosody_energy_loss_weight",
    "speaking_rate_loss_weight",
    "use_adaptive_weights",
    "loss_smoothing_factor",
    "max_loss_spike_threshold",
    "gradient_norm_threshold",
)
#: The original constructor's 17 settings, in its positional order (``name`` is the 18th).
MYXTTS_ARGS = (
    "mel_loss_weight",
    "stop_loss_weight",
    "attention_loss_weight",
    "duration_loss_weight",
    "pitch_loss_weight",
    "energy_loss_weight",
    "prosody_pitch_loss_weight",
    "prosody_energy_loss_weight",
    "speaking_rate_loss_weight",
    "voice_similarity_loss_weight",
    "diffusion_loss_weight",
    "use_adaptive_weights",
    "loss_smoothing_factor",
    "max_loss_spike_threshold",
    "gradient_norm_threshold",
    "contrastive_temperature",
    "contrastive_margin",
)
#: The per-term weights among them (each a non-negative number).
TERM_WEIGHT_ARGS = tuple(name for name in MYXTTS_ARGS if name.endswith("_loss_weight"))

# Integer settings are compared with int64 step counters in the graph.
_MAX_INT_SETTING = 2**62
#: The largest finite float32 (numpy.finfo(numpy.float32).max): real settings
#: and term weights beyond it become inf in the float32 graph.
FLOAT32_MAX = 3.4028234663852886e38
# Real settings enter the graph as float32, except these (the fused op takes
# its Huber threshold as a float64).
_FLOAT64_SETTINGS = frozenset({"mel_huber_delta"})


@dataclasses.dataclass(frozen=True)
class XTTSLossConfig:
    """All settings of :class:`~myxtts_loss.XTTSLoss` (defaults: SPEC 4 and the MyXTTS contract)."""

    # Term weights (MyXTTS constructor defaults).
    mel_loss_weight: float = 2.5
    stop_loss_weight: float = 1.0
    attention_loss_weight: float = 0.1
    duration_loss_weight: float = 0.1
    pitch_loss_weight: float = 0.1
    energy_loss_weight: float = 0.1
    prosody_pitch_loss_weight: float = 0.05
    prosody_energy_loss_weight: float = 0.05
    speaking_rate_loss_weight: float = 0.05
    voice_similarity_loss_weight: float = 1.0
    diffusion_loss_weight: float = 1.0
    contrastive_temperature: float = 0.1
    contrastive_margin: float = 0.2

    # Mel term (fused op). mel_label_smoothing > 0 adds deterministic target
    # noise N(0, (s * std)^2), std over the valid finite target elements,
    # drawn with a stateless RNG from (mel_noise_seed, step_count).
    mel_loss_type: str = "l1"
    mel_huber_delta: float = 1.0
    mel_normalization: str = "per_sample"
    mel_label_smoothing: float = 0.0
    mel_noise_seed: int = 0

    # Stop term: probabilities by default (MyXTTS's sigmoid head).
    stop_positive_weight: float = 5.0
    stop_label_smoothing: float = 0.1
    stop_from_logits: bool = False

    # Stability monitoring.
    use_adaptive_weights: bool = True
    loss_smoothing_factor: float = 0.1
    max_loss_spike_threshold: float = 2.0
    gradient_norm_threshold: float = 5.0
    # The rate of the rule's spike reference (an average of the returned
    # totals). Its own setting, so loss_smoothing_factor=0 ("no smoothing")
    # does not freeze the reference and with it every later step's gate.
    spike_reference_rate: float = 0.1

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
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(
                    f"{name} must be a real number, got {name}={value!r} ({type(value).__name__})"
                )
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {name}={value!r}")
            if abs(value) > FLOAT32_MAX and name not in _FLOAT64_SETTINGS:
                # It becomes inf in the float32 graph (a weight of 1e39 would
                # make every total 0).
                raise ValueError(
                    f"{name} must be finite in float32 (|x| <= {FLOAT32_MAX:.8g}), "
                    f"got {name}={value!r}"
                )
            if lo is not None and (value <= lo if lo_open else value < lo):
                rel = ">" if lo_open else ">="
                raise ValueError(f"{name} must be {rel} {lo}, got {name}={value!r}")
            if hi is not None and (value >= hi if hi_open else value > hi):
                rel = "<" if hi_open else "<="
                raise ValueError(f"{name} must be {rel} {hi}, got {name}={value!r}")
            # Stored as a Python float (an int weight must not make int variables).
            object.__setattr__(self, name, value)

        def integer(name, lo=0):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(
                    f"{name} must be an integer, got {name}={value!r} ({type(value).__name__})"
                )
            value = int(value)
            if not lo <= value <= _MAX_INT_SETTING:
                raise ValueError(f"{name} must be in [{lo}, 2**62], got {name}={value!r}")
            object.__setattr__(self, name, value)

        def choice(name, choices):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")

        def boolean(name):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool, got {name}={value!r}")

        for name in TERM_WEIGHT_ARGS:
            num(name, lo=0.0)
        num("contrastive_temperature", lo=0.0, lo_open=True)
        num("contrastive_margin")
        choice("mel_loss_type", LOSS_TYPES)
        num("mel_huber_delta")
        try:  # the op's own rule (csrc/kernels/mel_loss_checks.h), from the kernels module
            op_kernels.check_huber_delta(self.mel_huber_delta)
        except ValueError as err:
            raise ValueError(f"mel_{err}") from None
        choice("mel_normalization", NORMALIZATIONS)
        num("mel_label_smoothing", lo=0.0, hi=1.0)
        integer("mel_noise_seed", lo=0)
        num("stop_positive_weight", lo=0.0, lo_open=True)
        num("stop_label_smoothing", lo=0.0, hi=1.0, hi_open=True)
        boolean("stop_from_logits")
        boolean("use_adaptive_weights")
        num("loss_smoothing_factor", lo=0.0, hi=1.0)  # 0: no smoothing (contract section 4)
        num("max_loss_spike_threshold", lo=1.0, lo_open=True)
        num("spike_reference_rate", lo=0.0, hi=1.0, lo_open=True)
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
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(unknown_settings_message(unknown))
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls):
        return tuple(f.name for f in dataclasses.fields(cls))


def unknown_settings_message(unknown):
    """The error text for unknown setting names (with close matches)."""
    import difflib

    names = XTTSLossConfig.field_names()
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.75)
        parts.append(f"{name!s} (did you mean {close[0]}?)" if close else str(name))
    return f"unknown XTTSLoss setting(s): {', '.join(parts)}; known settings: {', '.join(names)}"
