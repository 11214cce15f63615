"""Held-out validation positions: a seeded split, and the loss on them (forward only).

The validation patterns never enter an update (they are removed from the positions the
engines visit), so their loss measures how well the current object and probe predict
data they were not fitted to: a rising validation loss is overfitting (noise, or a wrong
model compensated by the object), and it is the objective of ``ptycli tune``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engines import common
from ..engines.variables import Evaluator
from ..errors import UsageError

BATCH = 32  # positions per forward call; bounds the memory of the validation pass
SPLIT_STREAM = 7919  # child stream of the run seed, so the split does not move the grouping RNG


def split(subset: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) sorted indices; ``round(fraction * len)`` positions held out."""
    subset = np.asarray(subset)
    if not 0.0 <= fraction < 1.0:
        raise UsageError(f"--validation-fraction {fraction}: expected 0 <= F < 1")
    n_val = round(fraction * len(subset))
    if fraction > 0 and n_val == 0:
        n_val = 1
    if n_val == 0:
        return subset, subset[:0]
    if n_val >= len(subset):
        raise UsageError(f"--validation-fraction {fraction}: leaves no training positions of {len(subset)}")
    rng = np.random.default_rng([int(seed), SPLIT_STREAM])
    pick = np.zeros(len(subset), dtype=bool)
    pick[rng.choice(len(subset), size=n_val, replace=False)] = True
    return subset[~pick], subset[pick]


class Validator:
    """``(state, stage) -> mean loss per validation position`` for the loop's hook.

    Evaluates the engines' own model (engines/variables.py ``Evaluator``: beam current,
    background, detector blur, upsampling, sub-scans, tilts before/after, near field)
    under the stage's noise model, loss only (no back-propagation), so it is comparable
    with the training loss. The context carries no communicator: every rank evaluates
    all held-out positions from the identical state, and no rank's sum is counted twice.
    """

    def __init__(self, idx: np.ndarray, read: Any, xp: Any, precision: str, n_e: float, inputs: Any):
        self.idx, self.read, self.xp, self.precision, self.n_e, self.inputs = idx, read, xp, precision, n_e, inputs

    def __call__(self, state: Any, stage: Any) -> float:
        ctx = common.make_context(state, self.xp, self.precision, stage.noise.model, stage.noise.eps,
                                  mask=self.inputs.mask, comp_masks=self.inputs.comp_masks, n_e=self.n_e)
        evaluator = Evaluator(stage, ctx, state)
        total = 0.0
        for a in range(0, len(self.idx), BATCH):
            chunk = np.asarray(self.idx[a:a + BATCH])
            # x = {}: no variable is differentiated, so the model stops after the loss; the
            # data loss excludes the regularisers, like the held-out loss should.
            data_loss, _, _ = evaluator.evaluate(state, {}, chunk, self.read(chunk, stage), state.iteration,
                                                 reg_fraction=0.0)
            total += float(data_loss)
        return total / max(len(self.idx), 1)
