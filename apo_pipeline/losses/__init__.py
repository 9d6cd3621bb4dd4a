"""Preference-optimization losses on per-sequence log-probs: `preference_loss(name, ...)`.

Importing the loss modules registers them; `list_losses()` names them all and `loss_spec(name)`
gives one loss's options and defaults. Formulas and sources: docs/algorithms.md.
"""

from apo_pipeline.losses import classification, multi_negative, pairwise, reference_free  # noqa: F401  (register)
from apo_pipeline.losses.base import LossOutput, LossSpec
from apo_pipeline.losses.dispatch import list_losses, loss_spec, preference_loss

__all__ = ["LossOutput", "LossSpec", "list_losses", "loss_spec", "preference_loss"]
