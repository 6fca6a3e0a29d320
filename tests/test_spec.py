"""Unit tests for ``raypipe.spec``: loading, defaults, error messages, path resolution."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import json
import re

import pytest
import yaml

from raypipe.errors import SpecError
from raypipe.spec import Spec, demo_spec_path, load_spec

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
# a minimal pipeline: only name and data
name: mini
data:
  source:
    type: builtin
    name: transactions
    rows: 1000
    seed: 3
  target: is_fraud
  task: classification
"""


def minimal() -> dict[str, Any]:
    return yaml.safe_load(MINIMAL)


def write(tmp_path: Path, obj: Any, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


def problems_of(raw: Any, tmp_path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, raw))
    return info.value.problems


# --- loading ------------------------------------------------------------------------------
def test_demo_spec_loads() -> None:
    spec = load_spec(demo_spec_path())
    assert isinstance(spec, Spec)
    assert spec.name == "fraud-demo"
    assert spec.data.target == "is_fraud"
    assert spec.data.source.type == "builtin"
    assert spec.model.kind == "torch.mlp" and spec.model.is_torch
    assert spec.data.id_columns == ["transaction_id"]
    assert spec.deploy.batching.max_batch_size == 64
    # storage is resolved against the demo folder
    assert Path(spec.storage).is_absolute()
    assert Path(spec.storage) == (demo_spec_path().parent / ".raypipe").resolve()


def test_minimal_spec_gets_defaults(tmp_path: Path) -> None:
    assert len(MINIMAL.strip().splitlines()) == 10
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.name == "mini"
    assert spec.storage == str((tmp_path / ".raypipe").resolve())
    assert spec.ray.address is None
    assert spec.data.id_columns == []
    assert spec.data.split.validation == 0.15 and spec.data.split.test == 0.15
    assert spec.data.split.stratify is True and spec.data.split.seed == 42
    assert spec.validate_.schema_ == "infer"
    assert spec.validate_.max_missing_fraction == 0.3
    assert spec.validate_.on_invalid_rows == "quarantine"
    assert spec.features.numeric.impute == "median" and spec.features.numeric.scale == "standard"
    assert spec.features.categorical.max_categories == 32
    assert spec.model.kind == "torch.mlp"
    assert spec.train.workers == 2 and spec.train.epochs is None and spec.train.batch_size is None  # resolved per data
    assert spec.train.min_steps == 1000 and spec.train.early_stopping.patience == 10
    assert spec.tune is None
    assert spec.evaluate.metrics == ["accuracy", "precision", "recall", "f1", "roc_auc"]
    assert spec.deploy.enabled is True and spec.deploy.port == 8000
    assert spec.deploy.ongoing == 2 * spec.deploy.batching.max_batch_size
    assert spec.route_prefix == "/mini"
    assert spec.monitor.log.enabled and spec.monitor.drift.method == "psi" and spec.monitor.drift.min_rows == 1000
    # section() uses YAML keys (aliases)
    assert spec.section("validate")["schema"] == "infer"


def test_regression_spec_gets_regression_metrics(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["task"] = "regression"
    spec = load_spec(write(tmp_path, raw))
    assert spec.evaluate.metrics == ["rmse", "mae", "r2"]


def test_load_from_dict_uses_base_dir(tmp_path: Path) -> None:
    spec = load_spec(minimal(), base_dir=tmp_path)
    assert spec.storage == str((tmp_path / ".raypipe").resolve())


# --- unknown keys ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mutate, path, hint",
    [
        (lambda r: r.update(modle={"kind": "torch.mlp"}), "modle", "'model'"),
        (lambda r: r.update(valdate={}), "valdate", "'validate'"),  # an aliased field
        (lambda r: r["data"].update(tagret=r["data"].pop("target")), "data.tagret", "'target'"),
        (lambda r: r.update(train={"epocs": 3}), "train.epocs", "'epochs'"),
        (lambda r: r.update(validate={"shema": "infer"}), "validate.shema", "'schema'"),
        (lambda r: r.update(deploy={"batching": {"max_batch_sise": 8}}), "deploy.batching.max_batch_sise", "'max_batch_size'"),
    ],
)
def test_unknown_key_names_path_and_hint(tmp_path: Path, mutate: Any, path: str, hint: str) -> None:
    raw = minimal()
    mutate(raw)
    problems = problems_of(raw, tmp_path)
    matching = [p for p in problems if p.startswith(path + ":")]
    assert matching, problems
    assert "unknown key" in matching[0]
    assert f"did you mean {hint}?" in matching[0]


def test_unknown_key_in_csv_source(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["source"] = {"type": "csv", "pathh": "x.csv"}
    problems = problems_of(raw, tmp_path)
    unknown = [p for p in problems if p.startswith("data.source.pathh:")]
    assert unknown, problems
    assert "did you mean 'path'?" in unknown[0]
    # the discriminator tag is not shown in the path; the missing required key is reported too
    assert not any(".csv." in p for p in problems), problems
    assert any(p.startswith("data.source.path:") and "missing" in p for p in problems), problems


def test_unknown_key_without_close_match_lists_known_keys(tmp_path: Path) -> None:
    raw = minimal()
    raw["train"] = {"zzzzzz": 1}
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith("train.zzzzzz:")
    assert "known keys here:" in problems[0] and "epochs" in problems[0]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    raw = minimal()
    raw["train"] = {"epocs": 3, "workers": 0}
    raw["modle"] = {}
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, raw))
    paths = {p.split(":", 1)[0] for p in info.value.problems}
    assert {"train.epocs", "train.workers", "modle"} <= paths
    for p in ("train.epocs", "train.workers", "modle"):
        assert p in str(info.value)


# --- wrong types / values -----------------------------------------------------------------
@pytest.mark.parametrize(
    "section, key, value, path",
    [
        ("train", "epochs", "many", "train.epochs"),
        ("train", "lr", "fast", "train.lr"),
        ("train", "workers", 0, "train.workers"),
        ("deploy", "port", 70000, "deploy.port"),
        ("features", "balance", "smote", "features.balance"),
    ],
)
def test_wrong_value_names_field_and_value(tmp_path: Path, section: str, key: str, value: Any, path: str) -> None:
    raw = minimal()
    raw[section] = {key: value}
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(path + ":"), problems
    assert f"(got {value!r})" in problems[0], problems


def test_wrong_nested_type_names_field(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["split"] = {"test": "a lot"}
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith("data.split.test:")
    assert "'a lot'" in problems[0]


def test_bad_name_rejected(tmp_path: Path) -> None:
    raw = minimal()
    raw["name"] = "Has Spaces"
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith("name:") and "'Has Spaces'" in problems[0]


def test_missing_data_section(tmp_path: Path) -> None:
    problems = problems_of({"name": "x"}, tmp_path)
    assert problems == ["data: required key is missing"]


def test_missing_target_rejected(tmp_path: Path) -> None:
    raw = minimal()
    del raw["data"]["target"]
    problems = problems_of(raw, tmp_path)
    assert any(p.startswith("data:") and "data.target" in p for p in problems), problems


def test_unsupervised_task_needs_an_sklearn_estimator_and_no_target(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["task"] = "clustering"
    del raw["data"]["target"]
    problems = problems_of(raw, tmp_path)  # the default model is torch.mlp
    assert any("model.kind" in p and "sklearn:sklearn.cluster:KMeans" in p for p in problems), problems
    raw["model"] = {"kind": "sklearn:sklearn.cluster:KMeans", "params": {"n_clusters": 3}}
    spec = load_spec(write(tmp_path, raw))
    assert spec.data.target is None and spec.evaluate.metrics == ["silhouette", "davies_bouldin"]


def test_each_task_gets_its_own_default_metrics(tmp_path: Path) -> None:
    from raypipe.spec import Spec

    for task, target, kind, expected in [
        ("regression", "y", "torch.mlp", ["rmse", "mae", "r2"]),
        ("clustering", None, "sklearn:sklearn.cluster:KMeans", ["silhouette", "davies_bouldin"]),
        ("anomaly", "y", "sklearn:sklearn.ensemble:IsolationForest", ["roc_auc", "precision_at_k", "anomaly_rate"]),
        ("anomaly", None, "sklearn:sklearn.ensemble:IsolationForest", ["anomaly_rate"]),
    ]:
        raw = minimal()
        raw["data"].update(task=task, target=target)
        raw["model"] = {"kind": kind}
        assert Spec.model_validate(raw).evaluate.metrics == expected, task


@pytest.mark.parametrize("validation, test", [(0.45, 0.45), (0.5, 0.4), (0.1, 0.85)])
def test_split_fractions_too_large(tmp_path: Path, validation: float, test: float) -> None:
    raw = minimal()
    raw["data"]["split"] = {"validation": validation, "test": test}
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("data.split:")
    assert "below 0.9" in problems[0]


def test_split_fractions_just_below_limit_ok(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["split"] = {"validation": 0.4, "test": 0.45}
    spec = load_spec(write(tmp_path, raw))
    assert spec.data.split.test == 0.45


def test_max_ongoing_below_batch_size_rejected(tmp_path: Path) -> None:
    raw = minimal()
    raw["deploy"] = {"max_ongoing_requests": 16, "batching": {"max_batch_size": 32}}
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("deploy:")
    assert "max_ongoing_requests=16" in problems[0] and "max_batch_size=32" in problems[0]


def test_max_ongoing_equal_batch_size_ok(tmp_path: Path) -> None:
    raw = minimal()
    raw["deploy"] = {"max_ongoing_requests": 32, "batching": {"max_batch_size": 32}}
    assert load_spec(write(tmp_path, raw)).deploy.ongoing == 32


def test_route_prefix_must_start_with_slash(tmp_path: Path) -> None:
    raw = minimal()
    raw["deploy"] = {"route_prefix": "api"}
    problems = problems_of(raw, tmp_path)
    assert "route_prefix" in problems[0] and "'/'" in problems[0]


# --- model.kind -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("torch.mlp", "torch.mlp"),
        ("sklearn:sklearn.ensemble:HistGradientBoostingClassifier", "sklearn:sklearn.ensemble:HistGradientBoostingClassifier"),
        ("sklearn.linear_model:LogisticRegression", "sklearn:sklearn.linear_model:LogisticRegression"),
        ("sklearn.linear_model.LogisticRegression", "sklearn:sklearn.linear_model.LogisticRegression"),
    ],
)
def test_model_kind_accepted(tmp_path: Path, kind: str, expected: str) -> None:
    raw = minimal()
    raw["model"] = {"kind": kind}
    spec = load_spec(write(tmp_path, raw))
    assert spec.model.kind == expected
    assert spec.model.is_torch == (expected == "torch.mlp")


@pytest.mark.parametrize(
    "kind",
    ["", "mlp", "sklearn:", "sklearn:LogisticRegression", "sklearn:1bad.module:X", "sklearn.linear_model:Logistic Regression", "a:b:c:d"],
)
def test_model_kind_rejected(tmp_path: Path, kind: str) -> None:
    raw = minimal()
    raw["model"] = {"kind": kind}
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith("model.kind:")
    assert repr(kind) in problems[0]
    assert "torch.mlp" in problems[0]


@pytest.mark.parametrize("kind", ["torch.mpl", "torch.cnnn", "torch.resnet"])
def test_model_kind_torch_typo_rejected(tmp_path: Path, kind: str) -> None:
    """A ``torch.*`` kind outside the zoo is a typo, not a scikit-learn import path.

    It must fail at spec time, not be normalised to ``sklearn:torch.mpl`` and fail at the
    train stage after ingest, validation and feature fitting have run.
    """
    raw = minimal()
    raw["model"] = {"kind": kind}
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith("model.kind:")


# --- paths -------------------------------------------------------------------------------------
def test_relative_paths_resolved_against_spec_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_dir = tmp_path / "project" / "specs"
    spec_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    raw = minimal()
    raw["storage"] = "../store"
    raw["data"]["source"] = {"type": "csv", "path": "data/in.csv"}
    raw["validate"] = {"schema": "schema.json"}
    spec = load_spec(write(spec_dir, raw))
    assert spec.storage == str((tmp_path / "project" / "store").resolve())
    assert spec.data.source.path == str((spec_dir / "data" / "in.csv").resolve())
    assert spec.validate_.schema_ == str((spec_dir / "schema.json").resolve())


def test_absolute_and_uri_paths_kept(tmp_path: Path) -> None:
    raw = minimal()
    raw["storage"] = "s3://bucket/raypipe"
    raw["data"]["source"] = {"type": "parquet", "path": str(tmp_path / "abs" / "data.parquet")}
    spec = load_spec(write(tmp_path / "", raw))
    assert spec.storage == "s3://bucket/raypipe"
    assert spec.data.source.path == str(tmp_path / "abs" / "data.parquet")

    raw["data"]["source"] = {"type": "parquet", "path": "gs://b/data/"}
    spec = load_spec(write(tmp_path, raw))
    assert spec.data.source.path == "gs://b/data/"


# --- metrics / tune ----------------------------------------------------------------------------
def test_regression_metric_on_classification_rejected(tmp_path: Path) -> None:
    raw = minimal()
    raw["evaluate"] = {"metrics": ["accuracy", "rmse"]}
    problems = problems_of(raw, tmp_path)
    assert any("'rmse'" in p and "'classification'" in p for p in problems), problems


def test_classification_gate_on_regression_rejected(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["task"] = "regression"
    raw["evaluate"] = {"gate": {"min": {"roc_auc": 0.8}}}
    problems = problems_of(raw, tmp_path)
    assert any("'roc_auc'" in p and "'regression'" in p for p in problems), problems


def test_unknown_metric_gets_hint(tmp_path: Path) -> None:
    raw = minimal()
    raw["evaluate"] = {"metrics": ["recal"]}
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith("evaluate.metrics:")
    assert "did you mean 'recall'?" in problems[0]


def test_tune_section_needs_a_space(tmp_path: Path) -> None:
    raw = minimal()
    raw["tune"] = {"num_samples": 4}
    problems = problems_of(raw, tmp_path)
    assert problems == ["tune.space: required field missing"] or problems[0].startswith("tune.space")


def test_monitor_section_checks_its_keys(tmp_path: Path) -> None:
    raw = minimal()
    raw["monitor"] = {"drift": {"method": "ks"}}
    (problem,) = problems_of(raw, tmp_path)
    assert problem.startswith("monitor.drift.method") and "psi" in problem
    raw["monitor"] = {"log": {"sample_rate": 0}}
    assert problems_of(raw, tmp_path)[0].startswith("monitor.log.sample_rate")
    raw["monitor"] = {"log": {"flush_rows": 500, "max_buffer_rows": 100}}
    (problem,) = problems_of(raw, tmp_path)
    assert problem.startswith("monitor.log") and "max_buffer_rows (100) is below flush_rows (500)" in problem
    raw["monitor"] = {"log": {"exclude_columns": ["card_number"]}, "drift": {"per_column": {"amount": 0.5}}}
    spec = load_spec(write(tmp_path, raw))
    assert spec.monitor.log.exclude_columns == ["card_number"] and spec.monitor.drift.per_column == {"amount": 0.5}


def test_a_dumped_spec_loads_again(tmp_path: Path) -> None:
    """The tune stage re-validates model_dump() output."""
    raw = minimal()
    raw["monitor"] = {"drift": {"threshold": 0.3}}
    spec = load_spec(write(tmp_path, raw))
    assert load_spec(spec.model_dump(mode="json", by_alias=True)).monitor.drift.threshold == 0.3


@pytest.mark.parametrize("kind", ["torch.mlp", "torch.cnn", "torch.text", "torch:my_models.nets:build"])
def test_torch_zoo_kinds_accepted(tmp_path: Path, kind: str) -> None:
    raw = minimal()
    raw["model"] = {"kind": kind}
    assert load_spec(write(tmp_path, raw)).model.kind == kind


@pytest.mark.parametrize("train, where, match", [
    ({"precision": "fp16"}, "train", "'fp16' autocast needs a GPU"),
    ({"lr_schedule": "linear"}, "train.lr_schedule", "'constant', 'cosine' or 'step'"),
    ({"early_stopping": {"metric": "val_f1"}}, "train.early_stopping.metric", "val_loss"),
])
def test_train_options_checked(tmp_path: Path, train: dict, where: str, match: str) -> None:
    raw = minimal()
    raw["train"] = train
    problems = problems_of(raw, tmp_path)
    assert problems[0].startswith(where) and match in problems[0]


def test_early_stopping_on_validation_needs_a_validation_split(tmp_path: Path) -> None:
    raw = minimal()
    raw["data"]["split"] = {"validation": 0.0, "test": 0.2}
    raw["train"] = {"early_stopping": {"patience": 2}}
    problems = problems_of(raw, tmp_path)
    assert "needs a validation split" in problems[0]
    raw["train"] = {"early_stopping": {"metric": "train_loss"}}
    assert load_spec(write(tmp_path, raw)).train.early_stopping.resolved_mode == "min"


# --- not a spec at all ---------------------------------------------------------------------
@pytest.mark.parametrize("text, got", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType")])
def test_yaml_not_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert "mapping" in str(info.value) and got in str(info.value)


def test_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n"))


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert "does not exist" in str(info.value) and str(missing) in str(info.value)
    assert info.value.exit_code == 2
    assert isinstance(info.value, ValueError)


# --- CLI ---------------------------------------------------------------------------------------------
def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raypipe", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd), "COLUMNS": "300"},
    )


def test_cli_validate_bad_spec_exits_2(tmp_path: Path) -> None:
    raw = minimal()
    raw["train"] = {"epocs": 3}
    bad = write(tmp_path, raw, "bad.yaml")
    proc = run_cli("validate", str(bad), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "train.epocs" in proc.stderr
    assert "did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_validate_missing_file_exits_2(tmp_path: Path) -> None:
    proc = run_cli("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_cli_validate_good_spec_exits_0(tmp_path: Path) -> None:
    good = write(tmp_path, MINIMAL, "good.yaml")
    proc = run_cli("validate", str(good), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "valid spec" in proc.stdout and "mini" in proc.stdout



def test_canary_alias_must_be_a_plain_name() -> None:
    base = {"name": "t", "data": {"source": {"type": "builtin"}, "target": "is_fraud"}}
    with pytest.raises(SpecError, match="deploy.canary.alias"):
        load_spec({**base, "deploy": {"canary": {"alias": "../../etc/x"}}})
    assert load_spec({**base, "deploy": {"canary": {"alias": "blue-2"}}}).deploy.canary.alias == "blue-2"


@pytest.mark.parametrize("where, value, fix", [
    ("data.source.url", {"type": "http", "url": "https://api.example/items?api_key=abc123"}, "params_env"),
    ("data.source.url", {"type": "http", "url": "https://bob:pw@api.example/items"}, "params_env"),
    ("data.source.url", {"type": "sql", "url": "postgresql://bob@db:5432/x?password=pw", "query": "select 1"},
     "password_env"),
    ("data.source.path", {"type": "parquet", "path": "s3://AKIAX:s3cr3t@bucket/data"}, "AWS_ACCESS_KEY_ID"),
    ("storage", "s3://bucket/store?secret_key=s3cr3t", "AWS_ACCESS_KEY_ID"),
    ("tracking.mlflow_uri", "https://bob:pw@mlflow.example", "MLFLOW_TRACKING_PASSWORD"),
])
def test_secrets_in_urls_are_refused_and_the_error_names_where_they_go(where, value, fix) -> None:
    doc = {"name": "t", "data": {"source": {"type": "builtin"}, "target": "is_fraud"}}
    if where.startswith("data.source"):
        doc["data"]["source"] = value
    elif where == "storage":
        doc["storage"] = value
    else:
        doc["tracking"] = {"mlflow_uri": value}
    with pytest.raises(SpecError) as e:
        load_spec(doc)
    assert fix in str(e.value) and "s3cr3t" not in str(e.value) and "abc123" not in str(e.value)


def test_the_stored_spec_hides_literal_header_and_param_values() -> None:
    spec = load_spec({"name": "t", "data": {"target": "y", "source": {
        "type": "http", "url": "https://api.example/items", "headers": {"X-Key": "lit-secret"},
        "params": {"q": "lit-param"}, "params_env": {"api_key": "RP_KEY"}}}})
    shown = json.dumps(spec.redacted())
    assert "lit-secret" not in shown and "lit-param" not in shown and "RP_KEY" in shown and "X-Key" in shown


# --- reinforcement learning ------------------------------------------------------------
_RL = {"name": "rl", "data": {"task": "reinforcement", "env": {"id": "CartPole-v1"}},
       "model": {"kind": "rllib:PPO", "params": {"lr": 0.0003}}, "train": {"timesteps": 200000, "env_runners": 1},
       "evaluate": {"episodes": 20, "gate": {"min": {"episode_return_mean": 450}}}}


def _rl(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(_RL))
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def test_the_issue_spec_of_a_policy_loads_with_episode_metrics() -> None:
    spec = load_spec(_RL)
    assert spec.model.algo == "PPO" and spec.data.source is None and spec.data.env.name == "CartPole-v1"
    assert spec.evaluate.metrics == ["episode_return_mean", "episode_return_median", "episode_return_min",
                                     "episode_len_mean"]
    assert load_spec(spec.model_dump(mode="json", by_alias=True)).model.kind == "rllib:PPO"  # dumps load again


@pytest.mark.parametrize("changes, message", [
    ({"model__kind": "rllib:PPOO"}, "did you mean 'rllib:PPO'"),
    ({"train__timesteps": None}, "bound training with train.timesteps"),
    ({"model__kind": "rllib:BC"}, "learns offline from logged transitions: give data.source"),
    ({"data__env": None}, "needs data.env"),
    ({"data__env": {"id": "CartPole-v1", "factory": "pkg.envs:make"}}, "exactly one of env.id"),
    ({"data__env": {"factory": "not a path"}}, "write '<module>:<function>'"),
    ({"train__lr": 0.01}, "set RLlib's own name under model.params"),
    ({"evaluate__gate": {"min": {"f1": 0.5}}}, "metric 'f1' does not apply to task 'reinforcement'"),
    ({"evaluate__gate": {"max_overfit_gap": 0.1}}, "max_overfit_gap does not apply to task reinforcement"),
    ({"data__target": "y"}, "learns from rewards, not a label column"),
    ({"model__kind": "torch.mlp"}, "needs an RLlib algorithm as model.kind"),
])
def test_policy_specs_that_cannot_run_name_the_field_and_the_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(_rl(**changes))


def test_envs_per_env_runner_is_auto_or_a_positive_count() -> None:
    assert load_spec(_RL).train.envs_per_env_runner == "auto"
    assert load_spec(_rl(train__envs_per_env_runner=3)).train.envs_per_env_runner == 3
    with pytest.raises(SpecError, match="train.envs_per_env_runner"):
        load_spec(_rl(train__envs_per_env_runner=0))
    tabular = {"name": "t", "data": {"source": {"type": "builtin"}, "target": "is_fraud"}}
    with pytest.raises(SpecError, match="train.envs_per_env_runner applies to task reinforcement"):
        load_spec({**tabular, "train": {"envs_per_env_runner": 4}})


def test_rl_settings_on_a_tabular_spec_are_refused() -> None:
    tabular = {"name": "t", "data": {"source": {"type": "builtin"}, "target": "is_fraud"}}
    with pytest.raises(SpecError, match="rllib:PPO.*need data.task: reinforcement"):
        load_spec({**tabular, "model": {"kind": "rllib:PPO"}})
    with pytest.raises(SpecError, match="train.timesteps applies to task reinforcement"):
        load_spec({**tabular, "train": {"timesteps": 100}})
    with pytest.raises(SpecError, match="data.env applies to task reinforcement"):
        load_spec({**tabular, "data": {**tabular["data"], "env": {"id": "CartPole-v1"}}})


@pytest.mark.parametrize("threshold, fragment", [
    ({"strategy": "target_specificity"}, "needs target_specificity, e.g. target_specificity: 0.9"),
    ({"strategy": "target_specificity", "target_specificity": 1.5}, "evaluate.threshold.target_specificity"),
    ({"strategy": "max_f1", "target_specificity": 0.9}, "only used with strategy: target_specificity"),
    ({"strategy": "target_specificity", "target_specificity": 0.9, "target_recall": 0.8},
     "only used with strategy: target_recall"),
])
def test_target_specificity_threshold_is_checked(tmp_path: Path, threshold: dict[str, Any], fragment: str) -> None:
    raw = minimal()
    raw["evaluate"] = {"threshold": threshold}
    problems = problems_of(raw, tmp_path)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_sensitivity_at_a_target_specificity_is_a_gate(tmp_path: Path) -> None:
    raw = minimal()
    raw["evaluate"] = {"metrics": ["roc_auc", "sensitivity", "specificity"],
                       "threshold": {"strategy": "target_specificity", "target_specificity": 0.9},
                       "gate": {"min": {"sensitivity": 0.7, "specificity": 0.85}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "s.yaml")
    assert spec.evaluate.threshold.target_specificity == 0.9 and spec.evaluate.gate.min["sensitivity"] == 0.7
