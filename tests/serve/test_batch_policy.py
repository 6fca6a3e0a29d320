"""``raypipe predict`` on a reinforcement-learning version: observation rows (a list column or the
logged transitions' ``obs_<i>`` columns) in, the policy's actions out; bad observations refused by
column and row before any actor starts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import raypipe
from raypipe.errors import DataValidationError, SpecError
from raypipe.model.predictor import Predictor
from raypipe.registry import Registry
from raypipe.serve.batch_policy import layout, observations


@pytest.fixture(scope="module")
def version(ray_session, tmp_path_factory):
    """A registered CartPole PPO version (an untrained module, saved as a trained one is): ``(spec, policy)``."""
    from tests.policies import register_untrained

    storage = tmp_path_factory.mktemp("rl-predict") / "store"
    spec = register_untrained(storage, "cp", "CartPole-v1", "PPO")
    reg = Registry(str(storage), "cp")
    v = reg.alias("champion")
    return spec, Predictor.from_version(reg.version_store(v), v)


def _obs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([-2.4, -3, -0.2, -3], [2.4, 3, 0.2, 3], (n, 4))


def test_a_list_column_of_observations_gets_actions_probabilities_and_values(version, tmp_path):
    spec, policy = version
    obs = _obs(250)
    src = tmp_path / "obs.parquet"
    pd.DataFrame({"request": [f"r{i}" for i in range(len(obs))], "obs": list(obs)}).to_parquet(src)
    summary = raypipe.predict(spec, str(src), str(tmp_path / "out"))
    assert summary["rows"] == 250 and summary["version"] == policy.version
    out = pd.read_parquet(tmp_path / "out")
    out = out.assign(i=out["request"].str[1:].astype(int)).sort_values("i").reset_index(drop=True)
    want = policy.act(obs)
    np.testing.assert_array_equal(out["action"].to_numpy(), want["actions"])
    np.testing.assert_allclose(np.stack(out["probabilities"]), want["probabilities"], atol=1e-6)
    np.testing.assert_allclose(out["value"].to_numpy(), want["values"], atol=1e-5)
    assert (out["model_version"] == policy.version).all()
    np.testing.assert_allclose(np.stack(out["obs"]), obs)  # the input columns are kept


def test_logged_transitions_are_answered_and_keep_their_logged_action(version, tmp_path):
    from raypipe.envs.logged import log_transitions
    from raypipe.envs.policies import cartpole_policy

    spec, policy = version
    logged = log_transitions("CartPole-v1", cartpole_policy, episodes=2, seed=0)
    src = tmp_path / "transitions.parquet"
    logged.to_parquet(src)
    raypipe.predict(spec, str(src), str(tmp_path / "out"))
    out = pd.read_parquet(tmp_path / "out").sort_values(["eps_id", "t"]).reset_index(drop=True)
    assert len(out) == len(logged)
    np.testing.assert_array_equal(out["input_action"], logged["action"])  # the logged action, renamed
    obs = logged[[f"obs_{i}" for i in range(4)]].to_numpy()
    np.testing.assert_array_equal(out["action"].to_numpy(), policy.act(obs)["actions"])


@pytest.mark.parametrize("frame,column,row", [
    (lambda o: pd.DataFrame({f"obs_{i}": o[:, i] for i in range(4)}).assign(obs_2=lambda d: d.obs_2.where(
        d.index != 17, np.nan)), "'obs_2'", "row 17"),
    (lambda o: pd.DataFrame({"obs": [list(x) for x in o[:9]] + [list(o[9][:3])] + [list(x) for x in o[10:]]}),
     "'obs'", "row 9: 3 value(s)"),
    (lambda o: pd.DataFrame({"obs": [list(x) for x in o[:4]] + [[9.0, 0, 0, 0]] + [list(x) for x in o[5:]]}),
     "'obs[0]'", "row 4: 9 is outside"),
], ids=["nan-flat", "wrong-width", "out-of-bounds"])
def test_bad_observations_are_refused_by_column_and_row(version, tmp_path, frame, column, row):
    spec, _ = version
    src = tmp_path / "bad.parquet"
    frame(_obs(40)).to_parquet(src)
    with pytest.raises(DataValidationError) as err:
        raypipe.predict(spec, str(src), str(tmp_path / "out"))
    assert column in str(err.value) and row in str(err.value)
    assert not (tmp_path / "out").exists()


def test_a_table_without_observation_columns_is_refused_with_the_layouts(version, tmp_path):
    spec, _ = version
    src = tmp_path / "none.parquet"
    pd.DataFrame({"x": [1.0], "obs_0": [0.0], "obs_1": [0.0]}).to_parquet(src)
    with pytest.raises(SpecError, match=r"needs exactly obs_0 \.\. obs_3"):
        raypipe.predict(spec, str(src), str(tmp_path / "out"))
    pd.DataFrame({"x": [1.0]}).to_parquet(src)
    with pytest.raises(SpecError, match="list column 'obs'"):
        raypipe.predict(spec, str(src), str(tmp_path / "out"))


def test_a_discrete_observation_is_one_number_per_row():
    lay = layout(["id", "obs"], ())
    obs, problems, bad = observations(pd.DataFrame({"obs": [3, None, 5.0]}), lay, offset=10)
    assert obs.shape == (3,) and obs[0] == 3 and bad == {1}
    assert problems == ["column 'obs', row 11: no observation (null); give every row of 'obs' one finite number"]
