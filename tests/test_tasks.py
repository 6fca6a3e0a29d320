"""What differs per task, in one table: decisions, both answer shapes, label encoding."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.tasks import TASKS


def test_binary_decision_uses_the_threshold_and_multiclass_the_argmax() -> None:
    binary = np.array([[0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    assert TASKS["classification"].decide(binary, 0.4).tolist() == [0, 1, 1]
    assert TASKS["classification"].decide(binary, 0.9).tolist() == [0, 0, 0]
    three = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    assert TASKS["classification"].decide(three, 0.99).tolist() == [2, 0]  # no threshold for 3 classes


def test_other_tasks_decide_from_their_one_score() -> None:
    col = np.array([[2.5], [-1.0], [0.4]])
    assert TASKS["regression"].decide(col).tolist() == [2.5, -1.0, 0.4]
    assert TASKS["clustering"].decide(np.array([[3.0], [0.0]])).dtype == np.int64
    assert TASKS["anomaly"].decide(col, 0.4).tolist() == [1, 0, 1]


@pytest.mark.parametrize("task, scores, classes", [
    ("classification", np.array([[0.9, 0.1], [0.3, 0.7]]), ["no", "yes"]),
    ("regression", np.array([[1.5], [2.5]]), None),
    ("clustering", np.array([[0.0], [4.0]]), None),
    ("anomaly", np.array([[0.1], [0.9]]), None),
])
def test_records_and_columns_give_the_same_answer(task, scores, classes) -> None:
    t = TASKS[task]
    decided = t.decide(scores, 0.5)
    records = pd.json_normalize(t.records(decided, scores, classes, "string"))
    columns = pd.DataFrame(t.columns(decided, scores, classes))
    if classes:  # records nest the scores by class, columns name them score_<class>
        columns = columns.rename(columns={f"score_{c}": f"scores.{c}" for c in classes})
    pd.testing.assert_frame_equal(records.sort_index(axis=1), columns.sort_index(axis=1), check_dtype=False)


def test_class_labels_encode_the_same_whatever_the_dtype() -> None:
    classes = ["0", "1"]
    as_ints = TASKS["classification"].encode_labels(pd.Series([1, 0, 1]), classes)
    as_floats_with_gap = TASKS["classification"].encode_labels(pd.Series([1.0, None, 0.0]), classes)
    as_text = TASKS["classification"].encode_labels(pd.Series(["1", "0", "7"]), classes)
    assert as_ints.tolist() == [1, 0, 1] and as_floats_with_gap.tolist() == [1, -1, 0] and as_text.tolist() == [1, 0, -1]
    assert TASKS["anomaly"].encode_labels(pd.Series([True, False, 1, 0]), None).tolist() == [1, 0, 1, 0]
    assert TASKS["regression"].encode_labels(pd.Series(["2.5", "x"]), None).tolist()[0] == 2.5


def test_the_spec_accepts_exactly_the_tasks_in_the_table() -> None:
    base = {"name": "t", "data": {"source": {"type": "builtin", "name": "iris"}, "target": "target"},
            "model": {"kind": "sklearn:sklearn.cluster:KMeans"}}
    for name in TASKS:
        if TASKS[name].policy:  # a policy learns from an environment with an RLlib algorithm, not from a label
            doc = {"name": "t", "data": {"task": name, "env": {"id": "CartPole-v1"}}, "model": {"kind": "rllib:PPO"},
                   "train": {"iterations": 1}}
        else:
            doc = {**base, "data": {**base["data"], "task": name}}
        assert raypipe.load_spec(doc).data.task == name
    with pytest.raises(raypipe.SpecError, match="data.task"):
        raypipe.load_spec({**base, "data": {**base["data"], "task": "ranking"}})
