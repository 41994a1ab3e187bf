"""``from myxtts.training.losses import XTTSLoss`` -- re-exports :mod:`myxtts_loss`.

The implementation lives in the top-level package ``myxtts_loss`` (which a
MyXTTS checkout's own ``myxtts`` package cannot shadow); this module keeps the
seed's import path and the original module's names working.
"""

from myxtts_loss.loss import GRADIENT_NORM_HISTORY, ConcurrentCallError, XTTSLoss
from myxtts_loss.terms import (
    ContrastiveSpeakerLoss,
    attention_loss,
    compute_mel_statistics,
    create_stop_targets,
    diffusion_loss,
    duration_loss,
    energy_loss,
    mel_loss,
    pitch_loss,
    speaking_rate_loss,
    stop_token_loss,
)

__all__ = ["XTTSLoss", "create_stop_targets", "mel_loss", "stop_token_loss"]
_ALSO = (
    GRADIENT_NORM_HISTORY,
    ConcurrentCallError,
    ContrastiveSpeakerLoss,
    attention_loss,
    compute_mel_statistics,
    diffusion_loss,
    duration_loss,
    energy_loss,
    pitch_loss,
    speaking_rate_loss,
)
