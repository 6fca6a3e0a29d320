"""Optuna behind Tune, resumable after a driver killed at any moment.

Tune saves the experiment's trials and its searcher's state at separate moments. A driver
killed between the two leaves a trial in the saved experiment that the saved searcher never
suggested: ``Tuner.restore`` launches it again, and its first result made ``OptunaSearch``
fail with a ``KeyError`` on the trial id, failing the resumed search (the same race as
ray-project/ray#19113 for scikit-optimize). Here such a trial is still run and ranked by
Tune; Optuna, which never asked for it, just does not learn from it.
"""
from __future__ import annotations

import logging
from typing import Any

from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that lets through the results of trials it did not suggest."""

    def _unknown(self, trial_id: str) -> bool:
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return False
        warned = self.__dict__.setdefault("_not_suggested", set())  # a restored searcher may predate the attribute
        if trial_id not in warned:  # once per trial, not at each of its results
            warned.add(trial_id)
            log.warning("tune: trial %s was launched before the interrupted search saved Optuna's state; it runs "
                        "and is ranked, but Optuna does not learn from it", trial_id)
        return True

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if not self._unknown(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if self._unknown(trial_id):
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)
