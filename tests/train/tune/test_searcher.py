"""A search resumed after its driver was killed: a trial that Optuna's saved state never suggested still runs."""
from __future__ import annotations

import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from raypipe.train.tune.searcher import ResumableOptunaSearch


def _searcher(cls):
    s = cls(seed=0)
    assert s.set_search_properties("val_f1", "max", {"C": tune.loguniform(0.01, 10.0)})
    return s


def test_results_of_a_trial_optuna_never_suggested_are_let_through(caplog):
    stock = _searcher(OptunaSearch)
    with pytest.raises(KeyError):  # what failed the resumed search (tests/e2e/test_tune.py, one run in a few)
        stock.on_trial_result("lost", {"val_f1": 0.9, "training_iteration": 1})

    s = _searcher(ResumableOptunaSearch)
    known = s.suggest("known")
    assert 0.01 <= known["C"] <= 10.0
    s.on_trial_result("lost", {"val_f1": 0.9, "training_iteration": 1})
    s.on_trial_result("lost", {"val_f1": 0.9, "training_iteration": 2})
    s.on_trial_complete("lost", {"val_f1": 0.9, "training_iteration": 2})
    assert sum("lost" in r.getMessage() for r in caplog.records) == 1  # said once, not at every result
    s.on_trial_result("known", {"val_f1": 0.8, "training_iteration": 1})
    s.on_trial_complete("known", {"val_f1": 0.8, "training_iteration": 1})
    told = s._ot_study.trials  # Optuna learned from the trial it suggested, and only from it
    assert [t.params["C"] for t in told] == [known["C"]] and told[0].value == pytest.approx(0.8)
    assert s.suggest("next") is not None  # the search goes on
