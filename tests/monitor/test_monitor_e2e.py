"""`raypipe monitor` on a real pipeline: a version trained on the built-in transactions data, windows
written as parquet and CSV files, checked through Ray Data on the session's Ray (the CLI in process).

The version is trained once for the module (12,000 rows, logistic regression).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

import raypipe
from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.progress import Progress
from raypipe.registry import Registry
from tests.conftest import small_spec
from tests.monitor.helpers import UNSHIFTED, monitor_cli

ROWS = 12_000


@pytest.fixture(scope="module")
def pipeline(ray_session, tmp_path_factory):
    d = tmp_path_factory.mktemp("monitor")
    spec = small_spec(d / "store", name="t-mon", rows=ROWS)
    result = raypipe.run(spec, progress=Progress(quiet=True))
    assert result.status == "ok" and result.alias == "champion"
    path = d / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _window(folder: Path, name: str, rows: int, seed: int, drift: float = 0.0, labels: bool = False,
            fmt: str = "parquet") -> Path:
    df = generate_transactions(rows, seed=seed, drift=drift)
    if not labels:
        df = df.drop(columns=["is_fraud"])
    path = folder / f"{name}.{fmt}"
    df.to_parquet(path, index=False) if fmt == "parquet" else df.to_csv(path, index=False)
    return path



def test_an_undrifted_window_exits_0(pipeline, tmp_path, capsys):
    code, summary, err = monitor_cli(capsys, str(pipeline), "--input", str(_window(tmp_path, "calm", 4000, seed=11)))
    assert code == 0, err[-3000:]
    assert summary["status"] == "ok" and summary["drifted"] == [] and summary["rows"] == 4000
    assert set(summary["columns"]) >= {"amount", "country", "hour"} and "transaction_id" not in summary["columns"]
    assert all({"statistic", "value", "threshold", "drifted"} <= set(c) for c in summary["columns"].values())
    assert summary["prediction_drift"]["drifted"] is False and summary["multivariate"]["drifted"] is False
    assert summary["performance"]["kind"] == "estimated"


def test_a_drifted_window_exits_5_naming_the_shifted_columns_and_writes_the_report(pipeline, tmp_path, capsys):
    report = tmp_path / "copy"
    window = _window(tmp_path, "shifted", 4000, seed=12, drift=0.5, fmt="csv")
    code, summary, err = monitor_cli(capsys, str(pipeline), "--input", str(window), "--report", str(report))
    assert code == 5, err[-3000:]
    assert {"amount", "avg_amount_30d"} <= set(summary["drifted"]) and not set(summary["drifted"]) & UNSHIFTED
    assert "drifted columns: " in err and "amount" in err
    assert summary["prediction_drift"]["drifted"] is True and summary["multivariate"]["drifted"] is True
    stored = Path(summary["report"])
    for folder in (stored, report):
        assert {"report.json", "drift.html"} <= {p.name for p in folder.iterdir()}
        assert (folder / "plots" / "avg_amount_30d.png").read_bytes()[:4] == b"\x89PNG"
    html = (report / "drift.html").read_text()
    assert "DRIFT" in html and "plots/avg_amount_30d.png" in html and "domain classifier" in html.lower()
    assert (stored / "_COMPLETE.json").exists()
    assert stored.parent.resolve() == (Path(yaml.safe_load(pipeline.read_text())["storage"]) / "monitor" / "t-mon").resolve()


def test_below_min_rows_the_answer_is_not_enough_data(pipeline, tmp_path, capsys):
    code, summary, err = monitor_cli(capsys, str(pipeline), "--input",
                                  str(_window(tmp_path, "small", 400, seed=13, drift=1.0)))
    assert code == 0, err[-3000:]
    assert summary["status"] == "not_enough_data" and summary["drifted"] == []
    assert {c["drifted"] for c in summary["columns"].values()} == {None}
    assert "not enough data" in err


def test_a_window_that_fails_validation_exits_3(pipeline, tmp_path, capsys):
    df = generate_transactions(2000, seed=14).drop(columns=["is_fraud"])
    df.drop(columns=["amount"]).to_parquet(tmp_path / "no_amount.parquet", index=False)
    code, _, err = monitor_cli(capsys, str(pipeline), "--input", str(tmp_path / "no_amount.parquet"))
    assert code == 3 and "column 'amount' is missing from the window" in err
    df["hour"] = "noon"  # the validate stage's row check: not a number, in every row
    df.to_parquet(tmp_path / "bad_hour.parquet", index=False)
    code, _, err = monitor_cli(capsys, str(pipeline), "--input", str(tmp_path / "bad_hour.parquet"))
    assert code == 3 and "2,000 of 2,000 rows (100.0%) are invalid" in err and "hour: not a number" in err


def test_usage_errors_exit_2(pipeline, tmp_path, capsys):
    window = str(_window(tmp_path, "w", 100, seed=15))
    assert monitor_cli(capsys, str(pipeline), "--input", window, "--version", "1", "--alias", "champion")[0] == 2
    assert monitor_cli(capsys, str(pipeline))[0] == 2  # --input is required
    assert monitor_cli(capsys, str(pipeline), "--input", window, "--version", "99")[0] == 2


def test_labels_give_measured_performance_and_the_estimate_without_them_is_within_0_03(pipeline, tmp_path):
    spec = yaml.safe_load(pipeline.read_text())
    # 40,000 rows (~1,100 frauds): the realised ROC-AUC of a 10,000-row window still wanders by ±0.02
    labelled = raypipe.monitor(spec, input=str(_window(tmp_path, "lab", 40_000, seed=16, labels=True)))
    unlabelled = raypipe.monitor(spec, input=str(_window(tmp_path, "unlab", 40_000, seed=16)))
    assert labelled.performance["kind"] == "measured" and labelled.performance["rows"] == 40_000
    assert set(labelled.performance["version_test"]) >= {"accuracy", "roc_auc"}
    est = unlabelled.performance
    assert est["kind"] == "estimated" and est["trustworthy"], est
    for metric in ("accuracy", "roc_auc"):
        assert est["metrics"][metric] == pytest.approx(labelled.performance["metrics"][metric], abs=0.03), metric


def test_a_version_without_a_drift_reference_names_the_fix(pipeline, tmp_path, capsys):
    spec = yaml.safe_load(pipeline.read_text())
    reg = Registry(spec["storage"], "t-mon")
    vs = reg.version_store(reg.alias("champion"))
    old = reg.register({f: vs.read_bytes(f) for f in vs.walk_files() if not f.startswith(("monitor/", "_"))
                        and f != "profile.json"}, meta={"threshold": 0.5})
    code, _, err = monitor_cli(capsys, str(pipeline), "--input", str(_window(tmp_path, "w", 2000, seed=17)),
                            "--version", str(old))
    assert code == 2 and "no drift reference" in err and "Re-run the pipeline" in err


def test_per_block_counts_merged_through_ray_data_equal_the_one_shot_counts(pipeline, tmp_path):
    import ray.data

    from raypipe.model.formats import trusted_factories
    from raypipe.monitor.reference import build_plan, load_reference
    from raypipe.monitor.window import block_counts, count_window

    spec = raypipe.load_spec(pipeline)
    reg = Registry.for_spec(spec)
    v = reg.alias("champion")
    ref = load_reference(reg, v)
    plan = build_plan(ref)
    model = {"uri": ref.model_uri, "key": reg.check_version(v), "features": ref.features, "schema": ref.schema,
             "trusted": list(trusted_factories(spec))}
    df = generate_transactions(5000, seed=18, drift=0.3)
    one, _, _ = block_counts(df, plan, model)
    ds = ray.data.from_pandas([df.iloc[i:i + 700] for i in range(0, 5000, 700)])
    assert ds.num_blocks() == 8
    merged, sample, labelled = count_window(ds, plan, model, {"columns": ["amount", "country"], "seed": 1,
                                                              "rows": 300, "fraction": 0.2})
    assert merged["rows"] == one["rows"] == 5000 and merged["answer"] == one["answer"]
    for c, part in one["columns"].items():
        for key in ("counts", "nulls", "unseen"):
            assert merged["columns"][c].get(key) == part.get(key), (c, key)
        if "sums" in part:
            assert merged["columns"][c]["sums"] == pytest.approx(part["sums"])
    assert merged["confidence"]["rows"] == one["confidence"]["rows"]
    assert merged["confidence"]["expected_correct"] == pytest.approx(one["confidence"]["expected_correct"])
    assert len(sample) == 300 and list(sample.columns) == ["amount", "country"]
    assert len(labelled) == 5000 and np.isfinite(labelled["s1"]).all()


def test_measured_performance_below_the_gate_exits_5_without_drift(pipeline, tmp_path, capsys):
    """Labels that disagree with the model (flipped): no column moved, but ROC-AUC falls under the gate's 0.6."""
    df = generate_transactions(3000, seed=19)
    df["is_fraud"] = 1 - df["is_fraud"]
    df.to_parquet(tmp_path / "flipped.parquet", index=False)
    code, summary, err = monitor_cli(capsys, str(pipeline), "--input", str(tmp_path / "flipped.parquet"))
    assert code == 5, err[-3000:]
    assert summary["status"] == "ok" and summary["drifted"] == []
    perf = summary["performance"]
    assert perf["kind"] == "measured" and perf["below_gate"] and perf["metrics"]["roc_auc"] < 0.6
    assert "measured performance below the gate: roc_auc >= 0.6" in err


def test_twenty_undrifted_windows_of_1000_rows_raise_no_column_or_prediction_alarm(pipeline):
    """The version's own predictions included (the block function in process, no Ray)."""
    from raypipe.model.formats import trusted_factories
    from raypipe.monitor.check import prediction_drift_of
    from raypipe.monitor.drift import decide_column
    from raypipe.monitor.reference import build_plan, load_reference
    from raypipe.monitor.window import block_counts

    spec = raypipe.load_spec(pipeline)
    reg = Registry.for_spec(spec)
    ref = load_reference(reg, reg.alias("champion"))
    plan = build_plan(ref)
    model = {"uri": ref.model_uri, "key": ref.manifest_sha256, "features": ref.features, "schema": ref.schema,
             "trusted": list(trusted_factories(spec))}
    cfg = spec.monitor.drift
    alarms, score_shift = 0, []
    for i in range(20):
        doc = block_counts(generate_transactions(1000, seed=900 + i), plan, model)[0]
        columns = [decide_column(c, plan["columns"][c], p, doc["valid"], cfg, True) for c, p in doc["columns"].items()]
        prediction = prediction_drift_of(plan, doc, cfg, True)
        score_shift.append(prediction["parts"]["score"]["value"])
        alarms += any(c["drifted"] for c in columns) or prediction["drifted"]
    assert alarms <= 1 and max(score_shift) < cfg.prediction_threshold


def test_the_report_draws_this_versions_performance_over_windows(pipeline, tmp_path):
    spec = yaml.safe_load(pipeline.read_text())
    first = raypipe.monitor(spec, input=str(_window(tmp_path, "h1", 2000, seed=21, labels=True)))
    second = raypipe.monitor(spec, input=str(_window(tmp_path, "h2", 2000, seed=22)))
    store = Path(second.report_dir)
    html = (store / "drift.html").read_text()
    assert "Performance over windows" in html and (store / "plots" / "performance.png").read_bytes()[:4] == b"\x89PNG"
    rows = html[html.index("Performance over windows"):]
    # oldest first, this window last; measured (labels) and estimated (none) as each window was
    assert rows.index(first.window_id) < rows.index(second.window_id)
    assert "measured" in rows[rows.index(first.window_id):rows.index(second.window_id)]
    assert "estimated" in rows[rows.index(second.window_id):]
