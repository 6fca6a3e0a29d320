import pandas as pd
import pytest

from raypipe.train.balance import factors, resample, resample_batch


def _frame(n_pos: int, n_neg: int) -> pd.DataFrame:
    return pd.DataFrame({"x": range(n_pos + n_neg), "y": [1] * n_pos + [0] * n_neg})


def test_factors():
    assert factors({"0": 900, "1": 100}, "oversample") == {"0": 1.0, "1": 9.0}
    assert factors({"0": 900, "1": 100}, "undersample") == {"0": 100 / 900, "1": 1.0}
    with pytest.raises(ValueError, match="features.balance"):
        factors({"0": 1}, "smote")


@pytest.mark.parametrize("how", ["oversample", "undersample"])
def test_resample_batch_balances_and_is_deterministic(how):
    df = _frame(200, 1800)
    f = factors({"1": 200, "0": 1800}, how)
    out = resample_batch(df.copy(), "y", f, seed=1)
    counts = out["y"].value_counts()
    assert abs(counts[1] - counts[0]) / counts.sum() < 0.05
    assert out.equals(resample_batch(df.copy(), "y", f, seed=1))
    if how == "oversample":  # every original row survives
        assert set(out["x"]) == set(df["x"])
    else:  # the minority class is kept whole
        assert (out["y"] == 1).sum() == 200


def test_resample_dataset_same_for_any_block_layout(ray_session):
    import ray.data

    df = _frame(150, 1350)
    one, rep = resample(ray.data.from_pandas([df]), "y", "oversample", seed=3)
    many, _ = resample(ray.data.from_pandas([df.iloc[:500], df.iloc[500:900], df.iloc[900:]]), "y", "oversample", seed=3)
    a = one.to_pandas().sort_values(["x"]).reset_index(drop=True)
    b = many.to_pandas().sort_values(["x"]).reset_index(drop=True)
    assert a.equals(b)
    assert rep["before"] == {"0": 1350, "1": 150}
    assert (a["y"] == 1).sum() == 1350  # factor 9 is whole: exact
