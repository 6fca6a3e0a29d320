"""Ray Tune over an RLlib algorithm: each trial trains one configuration of ``model.params`` / ``train``.

A trial is a function trainable running :func:`raypipe.train.rl.train_policy` in its own process,
with a placement group of one CPU for its learner and one per env runner (RLlib's actors are
placed in it). Every training iteration ends in ``tune.report`` with ``episode_return_mean``
(the training episodes' mean return) and the iteration's policy as the checkpoint (safetensors +
JSON, the registry's format): ASHA (``time_attr`` training_iteration) stops poor trials at its
rungs, and the function API's synchronous report means a stopped trial trains no iteration past
the rung. Each trial keeps RLlib's own checkpoints in ``<work>/trials/<trial id>``: a relaunched
trial (``train.max_failures``) resumes there. The best trial's last policy becomes the stage's model.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

from raypipe.errors import StageFailed
from raypipe.train.tune.search import _record_launch, _trial_table, make_tuner, resolved_metric
from raypipe.train.tune.space import flat, trial_spec


def rl_trial(sample: dict[str, Any], *, spec: Any, offline: str | None, work: str) -> None:
    from ray import tune

    from raypipe.model.formats import MODEL_JSON, TORCH_WEIGHTS
    from raypipe.train.rl import export, train_policy

    trial_id = tune.get_context().get_trial_id()
    _record_launch(work, trial_id)
    spec = trial_spec(spec, sample)

    def report(row: dict[str, Any], algo: Any) -> None:
        meta, weights = export(spec, algo)
        ret = row.get("episode_return_mean")
        history.append(row)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, TORCH_WEIGHTS), "wb") as f:
                f.write(weights)
            with open(os.path.join(d, MODEL_JSON), "w") as f:
                json.dump(meta, f)
            with open(os.path.join(d, "history.json"), "w") as f:
                json.dump(history, f)
            tune.report({"episode_return_mean": -math.inf if ret is None else ret, "epoch": row["iteration"] - 1,
                         "timesteps": row["timesteps"], "pid": os.getpid()},
                        checkpoint=tune.Checkpoint.from_directory(d))

    history: list[dict[str, Any]] = []
    train_policy(spec, os.path.join(work, "trials", trial_id), offline, report=report)


def run_rl_search(spec: Any, ctx: Any, offline: str | None) -> dict[str, Any]:
    """Run (or resume) the search; the best trial's policy, history and the trial table."""
    from ray import tune

    t = spec.tune
    metric, mode = resolved_metric(spec)
    work_store = ctx.root.sub(f"work/tune/{ctx.fingerprint[:20]}")
    if not work_store.is_local:
        raise StageFailed(f"tune: the search's working folder must be on a local or shared filesystem; storage "
                          f"{ctx.root.full_uri('')!r} is remote")
    work = work_store.path()
    cpu = float(spec.train.resources.get("CPU", 1))
    bundles = [{"CPU": cpu}] + [{"CPU": 1.0}] * spec.train.env_runners
    trainable = tune.with_resources(tune.with_parameters(rl_trial, spec=spec, offline=offline, work=work),
                                    tune.PlacementGroupFactory(bundles))
    per_trial = sum(b["CPU"] for b in bundles)
    concurrent = t.max_concurrent_trials or max(1, int(_cluster_cpus() // per_trial))
    horizon = spec.train.iterations or 1000  # ASHA's max_t: timesteps stop a trial before
    results = make_tuner(spec, ctx, trainable, work_store, concurrent=concurrent, max_t=horizon, reuse=False).fit()
    table = _trial_table(results, metric)
    ctx.artifact.write_json("tune_trials.json", table)
    errors = [r for r in results if r.error is not None]
    if not any(r.error is None and r.checkpoint is not None for r in results):
        first = str(errors[0].error).strip().splitlines()[0] if errors else "no trial reported"
        raise StageFailed(f"stage 'train' failed: every tune trial failed ({len(errors)} errors); first: {first}")
    best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=False)
    with best.checkpoint.as_directory() as d:
        meta = json.load(open(os.path.join(d, "model.json")))
        weights = open(os.path.join(d, "model.safetensors"), "rb").read()
        history = json.load(open(os.path.join(d, "history.json")))
    return {"meta": meta, "weights": weights, "history": history, "stopped": "tune: best trial",
            "tune": {"metric": metric, "mode": mode, "best_config": flat(best.config),
                     "best_score": best.metrics[metric], "trials": len(table["trials"]), "failed_trials": len(errors),
                     "trial_epochs": table["trial_epochs"], "scheduler": t.scheduler, "search": t.search,
                     "launches": len(os.listdir(os.path.join(work, "launches")))}}


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))
