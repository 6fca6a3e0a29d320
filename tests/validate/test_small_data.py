"""The small-data path (in the driver, or one Ray task per stage) and the distributed path (Ray Data
executions) give the same outputs on messy data, and a pipeline run counts the Ray Data executions it does.

Quarantine counts and reasons, the profile (its quantile sketches included), the fitted features and
every metric must agree exactly: the small path runs the same per-block functions on the blocks Ray
Data would read. The execution counts bound what each path may do (the old ingest did 3, evaluate 4).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
import raypipe.datasets
from raypipe import executions
from raypipe.datasets import read_parquet
from raypipe.progress import Progress
from tests.conftest import small_spec

quiet = Progress(quiet=True)


@pytest.fixture(scope="module")
def messy_csv(tmp_path_factory):
    """Two csv files: stray text in a number and a boolean column, missing labels, a duplicate row."""
    folder = tmp_path_factory.mktemp("messy")
    rng = np.random.default_rng(5)
    n = 6000
    x = rng.normal(size=n)
    df = pd.DataFrame({"id": np.arange(n), "x": x.round(5), "k": rng.integers(0, 9, n),
                       "flag": rng.choice(["yes", "no"], n), "c": rng.choice(["u", "v", "w", None], n),
                       "y": np.where(x + rng.normal(0, .5, n) > 0, "a", "b")}).astype({"x": object, "flag": object})
    df.loc[[10, 4000], "x"] = ["n/a?", "12 EUR"]
    df.loc[[20, 5000], "flag"] = "maybe"
    df.loc[[30, 31, 4500], "y"] = ""
    df.iloc[:3000].to_csv(folder / "a.csv", index=False)
    df.iloc[3000:].to_csv(folder / "b.csv", index=False)
    return folder


def _run(tmp_path, folder, name, small_data="auto", force=None):
    spec = small_spec(tmp_path / name, name=f"t-small-{name}",
                      data={"source": {"type": "csv", "path": str(folder)}, "target": "y", "id_columns": ["id"]},
                      evaluate={"slices": ["c"], "gate": {"min": {"roc_auc": 0.6}}},
                      ray={"small_data": small_data},
                      validate={"reference": "none"})  # "big" runs again on "tasks"' storage: no reference check
    with executions.recording() as seen:
        result = raypipe.run(spec, until="evaluate", force=force, progress=quiet)
    out = result.outputs
    val = out["validate"]
    quarantined = pd.concat([read_parquet(val.store, f"quarantine/{s}").to_pandas()
                             for s, c in val.outputs.counts.items() if c["quarantined"]])
    metrics = out["evaluate"].store.read_json("metrics.json")
    for key in ("run_id", "pipeline"):  # differ by construction
        metrics.pop(key)
    return {"counts": val.outputs.counts, "reasons": sorted(zip(quarantined["id"].astype(int), quarantined["__reason"])),
            "profile": val.store.read_json("profile.json"), "report": val.store.read_json("report.json")["splits"],
            "features": out["features"].store.read_json("features.json"), "metrics": metrics,
            "executions": executions.per_stage(seen),
            # datasets.task_file_name: validate's files are named after the Ray task that wrote them, or "driver"
            "writers": {"driver" if "-driver-" in f else "task" for f in val.store.walk_files("valid")},
            # ingest's split files, named by their rows' numbers (one file per input block and split)
            "splits": sorted(f.split("-")[0] for f in out["ingest"].store.walk_files("splits")),
            "fit": out["train"].store.read_json("train_report.json")["path"]}


def test_small_and_distributed_paths_agree_on_messy_data(ray_session, tmp_path, messy_csv, monkeypatch):
    import raypipe.evaluate.scoring as scoring

    monkeypatch.setattr(scoring, "MAX_BATCH_ROWS", 700)  # evaluate scores each ~2,000-row block in several batches
    monkeypatch.setattr(scoring, "MIN_BATCH_ROWS", 700)
    small = _run(tmp_path, messy_csv, "small")  # ray.small_data auto: the test session's Ray is this one machine
    tasks = _run(tmp_path, messy_csv, "tasks", small_data="tasks")
    monkeypatch.setattr(raypipe.datasets, "SMALL_DATA_BYTES", 0)  # every stage after ingest takes the distributed
    big = _run(tmp_path, messy_csv, "tasks", small_data="tasks", force="validate")  # path, on tasks' ingest

    assert small["writers"] == {"driver"} and tasks["writers"] == {"task"} and big["writers"] == {"task"}
    assert (small["fit"], tasks["fit"], big["fit"]) == ("driver", "task", "task")
    # ingest read the small input one block per file in the driver, and in Ray: the same split files
    assert small["splits"] == tasks["splits"] and len(small["splits"]) == 6
    for key in ("reasons", "counts", "report", "profile", "features", "metrics"):
        assert small[key] == tasks[key] == big[key], key
    assert len(small["reasons"]) == 7
    assert {r for _, r in small["reasons"]} == {"x: not a number: 'n/a?'", "x: not a number: '12 EUR'",
                                                "flag: not a boolean: 'maybe'", "y: target is missing"}
    assert sum(c["input"] for c in small["counts"].values()) == 6000
    assert small["metrics"]["slices"]["c"]["values"]  # slices were scored

    # The executions each path does (the old code: ingest 3, evaluate 4 on this input); in the driver, none.
    # Ingest reads the csv files with a plain task each (tests/ingest/test_per_file.py).
    assert "ingest" not in tasks["executions"] and "ingest" not in big["executions"] and small["executions"] == {}
    # validate (typing the csv text, its checks) and the features' fit run a plain task per file; the sample
    # refine_schema reads is the first file's rows, read in the driver
    assert {s: big["executions"].get(s, 0) for s in ("validate", "features", "train", "evaluate")} == {
        "validate": 0, "features": 0, "train": 1, "evaluate": 1}
    assert not {"validate", "features", "train", "evaluate"} & set(tasks["executions"])


def test_recording_names_the_stage_and_what_ran(ray_session):
    import ray.data

    with executions.recording() as seen:
        ray.data.range(10).map_batches(lambda b: b).materialize()
    with executions.recording() as none_here:
        pass
    assert len(seen) == 1 and seen[0].stage == "" and "MapBatches" in seen[0].plan and seen[0].seconds is not None
    assert executions.per_stage(seen) == {"other": 1} and none_here == []


def test_pca_features_fit_alike_on_the_small_and_distributed_paths(ray_session, tmp_path, messy_csv, monkeypatch):
    """The distributed features stage: a task per file for the operators' statistics, then PCA's Ray Data pass."""
    from raypipe.model.features.pipeline import FeaturePipeline

    def fit(force=None):
        spec = small_spec(tmp_path / "pca", name="t-small-pca",
                          data={"source": {"type": "csv", "path": str(messy_csv)}, "target": "y", "id_columns": ["id"]},
                          features={"pca": {"components": 3}}, ray={"small_data": "tasks"},
                          validate={"reference": "none"})
        with executions.recording() as seen:
            out = raypipe.run(spec, until="features", force=force, progress=quiet).outputs
        return out["features"].store.read_json("features.json"), executions.per_stage(seen), out["validate"]

    small, _, val = fit()
    monkeypatch.setattr(raypipe.datasets, "SMALL_DATA_BYTES", 0)
    big, seen, _ = fit(force="features")
    assert seen.get("features") == 1  # PCA's pass; the operators' statistics came from plain tasks
    rows = read_parquet(val.store, val.outputs.splits["test"]).to_pandas()
    a, b = (FeaturePipeline.from_dict(d).transform(rows) for d in (small, big))
    assert a.shape == (len(rows), 3) and np.allclose(a, b, rtol=1e-6, atol=1e-6)
