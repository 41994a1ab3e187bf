"""myxtts: MyXTTS training components built on the myxtts-ops fused mel loss.

``from myxtts.training.losses import XTTSLoss`` is the main entry point;
``myxtts.config.XTTSLossConfig`` holds its settings.
"""

__version__ = "0.1.0"

__all__ = ["config", "training"]
