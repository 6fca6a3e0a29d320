"""The evaluation gate: min/max rules, overfitting gap, slice gap, champion comparison."""
from __future__ import annotations

import pytest

from raypipe.evaluate.gate import verdict
from raypipe.spec import GateSection


def gate(**kw) -> GateSection:
    return GateSection.model_validate(kw)


def _check(result, prefix):
    found = [c for c in result["checks"] if c["check"].startswith(prefix) or prefix in c["check"]]
    assert len(found) == 1, (prefix, result["checks"])
    return found[0]


def test_empty_gate_passes():
    r = verdict(gate(), "classification", {"f1": 0.1})
    assert r == {"passed": True, "checks": [], "failures": []}


def test_min_and_max_rules_pass():
    g = gate(min={"f1": 0.8, "roc_auc": 0.9}, max={"log_loss": 0.5})
    r = verdict(g, "classification", {"f1": 0.85, "roc_auc": 0.9, "log_loss": 0.3})
    assert r["passed"] is True and r["failures"] == []
    c = _check(r, "f1 >= 0.8")
    assert c == {"check": "f1 >= 0.8", "value": 0.85, "limit": 0.8, "passed": True}
    assert _check(r, "roc_auc >= 0.9")["passed"] is True  # the bound is inclusive
    assert _check(r, "log_loss <= 0.5") == {"check": "log_loss <= 0.5", "value": 0.3, "limit": 0.5, "passed": True}


def test_min_and_max_rules_fail():
    g = gate(min={"f1": 0.8}, max={"log_loss": 0.5})
    r = verdict(g, "classification", {"f1": 0.7, "log_loss": 0.65})
    assert r["passed"] is False
    assert _check(r, "f1 >= 0.8")["passed"] is False
    assert _check(r, "log_loss <= 0.5")["passed"] is False
    assert len(r["failures"]) == 2
    assert any(f.startswith("f1 >= 0.8") and "0.7000" in f for f in r["failures"])
    assert any(f.startswith("log_loss <= 0.5") and "0.6500" in f for f in r["failures"])


def test_max_rule_inclusive_on_regression():
    r = verdict(gate(max={"rmse": 2.0}), "regression", {"rmse": 2.0})
    assert r["passed"] is True
    r = verdict(gate(max={"rmse": 2.0}), "regression", {"rmse": 2.0001})
    assert r["passed"] is False


@pytest.mark.parametrize("rule", [{"min": {"pr_auc": 0.5}}, {"max": {"brier": 0.2}}])
def test_missing_metric_fails_with_none(rule):
    r = verdict(gate(**rule), "classification", {"f1": 0.9, "pr_auc": None})
    assert r["passed"] is False
    (c,) = r["checks"]
    assert c["value"] is None and c["passed"] is False
    (f,) = r["failures"]
    assert c["check"] in f and "n/a" in f


# --- overfitting ----------------------------------------------------------------------
def test_overfit_gap_uses_validation_when_given():
    g = gate(max_overfit_gap=0.1)
    train, val, test = {"f1": 0.95}, {"f1": 0.9}, {"f1": 0.6}
    r = verdict(g, "classification", test, train=train, held_out=val)
    c = _check(r, "train vs validation f1 gap")
    assert c["value"] == pytest.approx(0.05) and c["limit"] == 0.1
    assert c["passed"] is True and r["passed"] is True


def test_overfit_gap_falls_back_to_test():
    g = gate(max_overfit_gap=0.1)
    r = verdict(g, "classification", {"f1": 0.6}, train={"f1": 0.95}, held_out=None)
    c = _check(r, "gap <= 0.1")
    assert c["value"] == pytest.approx(0.35)
    assert c["passed"] is False and r["passed"] is False
    assert any("f1 gap" in f and "0.3500" in f for f in r["failures"])


def test_overfit_gap_fails_when_validation_is_worse():
    g = gate(max_overfit_gap=0.1)
    r = verdict(g, "classification", {"f1": 0.94}, train={"f1": 0.95}, held_out={"f1": 0.7})
    c = _check(r, "gap <= 0.1")
    assert c["value"] == pytest.approx(0.25) and c["passed"] is False


def test_overfit_gap_lower_is_better_metric():
    g = gate(max_overfit_gap=0.5)
    r = verdict(g, "regression", {"rmse": 1.1}, train={"rmse": 1.0}, held_out={"rmse": 3.0})
    c = _check(r, "train vs validation rmse gap")
    assert c["value"] == pytest.approx(2.0)
    assert c["passed"] is False and r["passed"] is False
    assert any("2.0000" in f for f in r["failures"])
    # train worse than validation: a negative gap, which passes
    r = verdict(g, "regression", {"rmse": 1.1}, train={"rmse": 3.0}, held_out={"rmse": 1.0})
    c = _check(r, "rmse gap")
    assert c["value"] == pytest.approx(-2.0) and c["passed"] is True


def test_overfit_gap_skipped_without_train_and_fails_on_missing_metric():
    g = gate(max_overfit_gap=0.1)
    assert verdict(g, "classification", {"f1": 0.6})["checks"] == []
    r = verdict(g, "classification", {"f1": 0.6}, train={"accuracy": 0.9}, held_out={"f1": 0.6})
    (c,) = r["checks"]
    assert c["value"] is None and c["passed"] is False


# --- slices ---------------------------------------------------------------------------
def test_slice_gap():
    g = gate(max_slice_gap={"max": 0.2})
    slices = {
        "region": {"metric": "f1", "gap": 0.3, "best": "n", "worst": "s", "values": {}},
        "age": {"metric": "f1", "gap": None, "best": None, "worst": None, "values": {}},
        "plan": {"metric": "f1", "gap": 0.15, "best": "a", "worst": "b", "values": {}},
    }
    r = verdict(g, "classification", {"f1": 0.9}, slices=slices)
    assert len(r["checks"]) == 3
    region = _check(r, "'region'")
    assert region["value"] == pytest.approx(0.3) and region["limit"] == 0.2 and region["passed"] is False
    assert region["check"].startswith("f1 gap across 'region' slices <= 0.2")
    age = _check(r, "'age'")
    assert age["value"] is None and age["passed"] is True
    assert _check(r, "'plan'")["passed"] is True
    assert r["passed"] is False
    (f,) = r["failures"]
    assert "'region'" in f and "0.3000" in f


def test_slice_gap_without_slices_passes():
    r = verdict(gate(max_slice_gap={"max": 0.1}), "classification", {"f1": 0.9}, slices=None)
    assert r["passed"] is True and r["checks"] == []


# --- champion -------------------------------------------------------------------------
@pytest.mark.parametrize("cand,passed", [(0.85, True), (0.845, True), (0.835, False), (0.80, False)])
def test_vs_champion_higher_is_better(cand, passed):
    g = gate(vs_champion={"metric": "f1", "min_delta": 0.01})
    r = verdict(g, "classification", {"f1": cand}, champion={"f1": 0.83, "version": 3})
    c = _check(r, "vs champion")
    assert c["value"] == pytest.approx(cand - 0.83)
    assert c["limit"] == 0.01
    assert "v3" in c["check"] and c["check"].startswith("f1 vs champion")
    assert c["passed"] is passed
    assert r["passed"] is c["passed"]


@pytest.mark.parametrize("cand,delta,passed", [(1.0, 0.1, True), (1.15, 0.1, False), (1.3, 0.0, False),
                                               (1.3, -0.2, True)])
def test_vs_champion_lower_is_better(cand, delta, passed):
    g = gate(vs_champion={"metric": "rmse", "min_delta": delta})
    r = verdict(g, "regression", {"rmse": cand}, champion={"rmse": 1.2, "version": 7})
    c = _check(r, "vs champion")
    assert c["value"] == pytest.approx(1.2 - cand)  # positive = candidate better (lower rmse)
    assert c["passed"] is passed
    if not passed:
        (f,) = r["failures"]
        assert "rmse vs champion v7" in f and f"{1.2 - cand:.4f}" in f


def test_no_champion_no_check():
    g = gate(vs_champion={"metric": "f1", "min_delta": 0.5})
    r = verdict(g, "classification", {"f1": 0.5}, champion=None)
    assert r["checks"] == [] and r["passed"] is True


def test_champion_missing_metric_fails():
    g = gate(vs_champion={"metric": "f1"})
    r = verdict(g, "classification", {"f1": 0.9}, champion={"accuracy": 0.8, "version": 1})
    (c,) = r["checks"]
    assert c["value"] is None and c["passed"] is False


# --- overall --------------------------------------------------------------------------
def _full_gate():
    return gate(min={"f1": 0.7}, max={"log_loss": 0.6}, max_overfit_gap=0.1,
                max_slice_gap={"max": 0.2}, vs_champion={"metric": "f1", "min_delta": 0.0})


def _inputs(**over):
    kw = dict(test={"f1": 0.8, "log_loss": 0.4}, train={"f1": 0.85}, held_out={"f1": 0.8},
              champion={"f1": 0.75, "version": 2},
              slices={"c": {"metric": "f1", "gap": 0.1, "values": {}, "best": "a", "worst": "b"}})
    kw.update(over)
    return kw


def test_passed_is_and_of_all_checks():
    r = verdict(_full_gate(), "classification", **_inputs())
    assert len(r["checks"]) == 5
    assert all(c["passed"] for c in r["checks"]) and r["passed"] is True and r["failures"] == []
    failing = [
        _inputs(test={"f1": 0.65, "log_loss": 0.4}),  # min f1 (and champion)
        _inputs(test={"f1": 0.8, "log_loss": 0.7}),   # max log_loss
        _inputs(train={"f1": 0.99}),                  # overfit gap
        _inputs(slices={"c": {"metric": "f1", "gap": 0.5, "values": {}, "best": "a", "worst": "b"}}),
        _inputs(champion={"f1": 0.81, "version": 2}),  # worse than the champion
    ]
    for kw in failing:
        r = verdict(_full_gate(), "classification", **kw)
        assert r["passed"] is False
        assert r["passed"] is all(c["passed"] for c in r["checks"])
        assert len(r["failures"]) == sum(not c["passed"] for c in r["checks"]) >= 1
        for c in r["checks"]:
            if not c["passed"]:
                assert any(f.startswith(c["check"] + ": got ") for f in r["failures"])


# --- baselines ------------------------------------------------------------------------
def _baselines(trivial: dict, linear: dict | None = None, kind: str = "classification") -> dict:
    names = {"classification": ("DummyClassifier", "LogisticRegression"), "regression": ("DummyRegressor", "Ridge")}[kind]
    out = {"trivial": {"model": names[0], "test": trivial}}
    out["linear"] = {"model": names[1], "test": linear} if linear is not None else {"model": names[1], "skipped": "too wide"}
    return out


def test_worse_than_the_trivial_baseline_fails_by_default():
    b = _baselines({"balanced_accuracy": 0.5, "accuracy": 0.97})
    r = verdict(gate(), "classification", {"balanced_accuracy": 0.48, "accuracy": 0.98}, baselines=b)
    c = _check(r, "balanced_accuracy >= trivial baseline (DummyClassifier)")
    assert c["value"] == 0.48 and c["limit"] == 0.5 and not c["passed"] and r["passed"] is False
    # Accuracy below the majority class's is no reason on its own: a recall-tuned threshold may trade it away.
    r = verdict(gate(), "classification", {"balanced_accuracy": 0.76, "accuracy": 0.96}, baselines=b)
    assert r["passed"] is True


def test_regression_must_reach_r2_zero_even_if_the_mean_scores_below_it():
    b = _baselines({"r2": -0.01, "rmse": 79.0}, kind="regression")
    r = verdict(gate(), "regression", {"r2": -0.005, "rmse": 78.9}, baselines=b)
    c = _check(r, "r2 >= trivial baseline (DummyRegressor)")
    assert c["limit"] == 0.0 and not c["passed"]  # better than the train mean, still worse than the test mean
    assert verdict(gate(), "regression", {"r2": 0.0}, baselines=b)["passed"] is True


def test_trivial_check_can_be_turned_off_and_is_skipped_without_baselines():
    b = _baselines({"r2": -0.01}, kind="regression")
    r = verdict(gate(beat_trivial_baseline=False), "regression", {"r2": -3.48}, baselines=b)
    assert r == {"passed": True, "checks": [], "failures": []}
    assert verdict(gate(), "clustering", {"silhouette": 0.1}, baselines=None)["checks"] == []


def test_min_lift_over_the_linear_baseline_in_the_main_metric():
    b = _baselines({"f1": 0.0, "balanced_accuracy": 0.5}, {"f1": 0.60})
    r = verdict(gate(min_lift_over_baseline=0.05), "classification", {"f1": 0.62, "balanced_accuracy": 0.8},
                baselines=b)
    c = _check(r, "f1 lift over linear baseline (LogisticRegression) >= +0.05")
    assert c["value"] == pytest.approx(0.02) and c["passed"] is False
    assert any("lift over linear baseline" in f and "0.0200" in f for f in r["failures"])
    # rmse: lower is better, so the lift is the reduction.
    b = _baselines({"r2": -0.01, "rmse": 80.0}, {"rmse": 58.0}, kind="regression")
    r = verdict(gate(min_lift_over_baseline=2.0), "regression", {"r2": 0.5, "rmse": 55.0}, baselines=b)
    assert _check(r, "rmse lift over linear baseline (Ridge)")["value"] == pytest.approx(3.0) and r["passed"]


def test_min_lift_fails_when_the_linear_baseline_was_skipped():
    b = _baselines({"f1": 0.0, "balanced_accuracy": 0.5})
    r = verdict(gate(min_lift_over_baseline=0.0), "classification", {"f1": 0.9, "balanced_accuracy": 0.9}, baselines=b)
    c = _check(r, "lift over linear baseline")
    assert c["value"] is None and c["passed"] is False


def test_min_lift_is_refused_for_unsupervised_tasks():
    import raypipe

    with pytest.raises(raypipe.SpecError, match="min_lift_over_baseline: task 'clustering' has no baseline"):
        raypipe.load_spec({"name": "c", "data": {"source": {"type": "builtin", "name": "iris"}, "task": "clustering"},
                           "model": {"kind": "sklearn:sklearn.cluster:KMeans"},
                           "evaluate": {"gate": {"min_lift_over_baseline": 0.1}}})
