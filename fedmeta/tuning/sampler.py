"""Optuna's TPE sampler, seeded per trial: a resumed tune proposes what an uninterrupted one would.

TPE draws its candidates from one random state that advances with every trial. A tune stopped and
resumed starts a new sampler, whose state cannot be the one the uninterrupted study would have
reached, so the trials after the stop (and the chosen config) would depend on when it stopped. Here
the state is set at the start of every trial from the seed and the number of trials finished
before it (a trial interrupted by the stop does not count: it runs again), so the n-th trial's
candidates depend only on the seed and the n-1 trials before it.
"""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from fedmeta.tuning.protocol import INTERRUPTED

__all__ = ["TrialSeededTPE", "counted_trials"]


def counted_trials(study: optuna.Study) -> int:
    """Trials finished, not counting those a stop interrupted (they run again)."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and t.user_attrs.get("error") != INTERRUPTED)


class TrialSeededTPE(optuna.samplers.TPESampler):
    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self._seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        tpe, startup = np.random.SeedSequence([self._seed, counted_trials(study)]).generate_state(2)
        self._rng.rng.seed(int(tpe))  # the TPE's own draws
        self._random_sampler._rng.rng.seed(int(startup))  # the random start-up trials'
        super().before_trial(study, trial)
