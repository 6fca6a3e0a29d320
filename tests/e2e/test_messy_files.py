"""A messy exported CSV through the whole pipeline (issue 19): a few unparsable numbers, NA tokens and empty
target cells are quarantined or read as missing, and the model is as good as one trained on the clean rows.

The data: 600 rows where a linear model separates "yes" from "no" well; the numeric column ``income`` holds 4
values that are no numbers (``n/a?``, ``1e999x`` ...), ``debt`` some empty and ``NA`` cells (missing, imputed),
and the string target ``label`` 3 empty and 2 ``NA`` cells (no label: quarantined, never a class).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from tests.conftest import small_spec

ROWS = 600
BAD_INCOME = {10: "n/a?", 50: "1e999x", 90: "twelve", 130: "3.4.5"}
NO_LABEL = {300: "", 301: "", 302: "", 303: "NA", 304: "NA"}
MISSING_DEBT = {200: "", 201: "NA", 202: "N/A", 203: "null", 204: "?", 205: "-"}


def messy_frame(seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the messy table as text cells, the clean numeric table it came from)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, 3))
    logit = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 1.5 * x[:, 2]
    label = np.where(logit + rng.logistic(scale=0.4, size=ROWS) > 0, "yes", "no")
    clean = pd.DataFrame({"id": np.arange(ROWS), "income": x[:, 0].round(4), "debt": x[:, 1].round(4),
                          "tenure": x[:, 2].round(4), "region": rng.choice(["north", "south", "east"], ROWS),
                          "label": label})
    messy = clean.astype(str)
    for rows, col in ((BAD_INCOME, "income"), (NO_LABEL, "label"), (MISSING_DEBT, "debt")):
        for i, v in rows.items():
            messy.loc[i, col] = v
    return messy, clean


@pytest.fixture(scope="module")
def messy_csv(tmp_path_factory):
    messy, clean = messy_frame()
    path = tmp_path_factory.mktemp("messy") / "customers.csv"
    messy.to_csv(path, index=False)
    return path, clean


def _clean_rows_auc(clean: pd.DataFrame) -> float:
    """A LogisticRegression on the rows raypipe should keep, scored on a held-out third."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    keep = clean.drop(index=list(BAD_INCOME) + list(NO_LABEL) + list(MISSING_DEBT))
    x, y = keep[["income", "debt", "tenure"]].to_numpy(), (keep["label"] == "yes").to_numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    model = LogisticRegression(max_iter=500).fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, model.predict_proba(x_te)[:, 1]))


def test_messy_csv_numeric_column_quarantines_the_few_bad_values(ray_session, tmp_path, messy_csv):
    path, clean = messy_csv
    spec = small_spec(tmp_path / "store", name="t-messy", data={
        "source": {"type": "csv", "path": str(path)}, "target": "label", "id_columns": ["id"]},
        evaluate={"gate": {"min": {"roc_auc": 0.5}}})
    result = raypipe.run(spec, progress=Progress(quiet=True))
    val = result.outputs["validate"]
    schema = val.store.read_json("schema.json")
    assert schema["columns"]["income"]["type"] == "number"  # by majority, not by the first bad value
    assert schema["columns"]["debt"]["type"] == "number" and schema["columns"]["tenure"]["type"] == "number"
    assert schema["columns"]["label"]["type"] == "string" and schema["target"]["classes"] == ["no", "yes"]
    assert schema["features"]["numeric"] == ["income", "debt", "tenure"]
    assert schema["features"]["categorical"] == ["region"]

    counts = val.outputs.counts
    quarantined = pd.concat(read_parquet(val.store, f"quarantine/{s}").to_pandas()
                            for s, c in counts.items() if c["quarantined"])
    reasons = dict(zip(quarantined["id"].astype(int), quarantined["__reason"]))
    expected = {i: f"income: not a number: {v!r}" for i, v in BAD_INCOME.items()}
    expected.update({i: "label: target is missing" for i in NO_LABEL})
    assert reasons == expected
    assert val.outputs.quarantined == len(BAD_INCOME) + len(NO_LABEL)

    valid = pd.concat(read_parquet(val.store, f"valid/{s}").to_pandas() for s in val.outputs.splits)
    assert len(valid) == ROWS - len(expected)
    assert set(valid["label"]) == {"yes", "no"}  # no "" class, no "NA" class
    assert pd.api.types.is_float_dtype(valid["debt"]) and valid["debt"].isna().sum() == len(MISSING_DEBT)

    report = val.store.read_json("report.json")
    assert report["inference"]["income"]["type"] == "number"
    assert report["inference"]["income"]["unparsed"] == len(BAD_INCOME)
    examples = report["inference"]["income"]["examples"]
    assert len(examples) == 3 and set(examples) <= set(BAD_INCOME.values())
    assert sum(r["unparsed"].get("income", 0) for r in report["splits"].values()) == len(BAD_INCOME)
    assert report["splits"]["train"]["reasons"].get("income: not a number", 0) >= 1
    assert "not a number" in val.store.read_bytes("report.html").decode()

    auc, reference = result.metrics["roc_auc"], _clean_rows_auc(clean)
    print(f"raypipe test roc_auc {auc:.4f}; LogisticRegression on the clean rows {reference:.4f}")
    assert auc >= reference - 0.03
