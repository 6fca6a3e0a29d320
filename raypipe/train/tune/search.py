"""Ray Tune over the train stage: each trial trains one configuration of the spec.

- Torch trials on the one-process path (:func:`raypipe.train.local.choose_path`: no GPU,
  data that fits; the default for small data) are *function trainables* (:func:`local_trial`):
  the trial trains in its own process with ``train.workers`` CPUs and reports each epoch
  with its checkpoint; ``reuse_actors`` runs the next trial in the same process. Measured
  on digits, 16 configurations, 2 cores: see benchmarks/RESULTS.md (a TorchTrainer per
  trial cost ~15-30 s of start-up each).
- Torch trials on the Ray Train path are Tune *driver functions*: each builds a
  ``TorchTrainer`` (the same worker loop as a plain run) with ``TuneReportCallback``, so
  every epoch's metrics and checkpoint reach Tune and ASHA can stop a poor trial after
  ``grace_period`` epochs.
- Under ASHA a torch trial moves in lockstep with Tune: a function trainable's report
  returns only once Tune asks for the next result; a TorchTrainer's rank 0 waits until
  Tune has decided to continue the trial (see :class:`LockstepReport`). Either way a
  trial that ASHA stops trains no epoch past the rung.
- scikit-learn trials are plain function trainables sized by ``train.resources``: fit
  on the training split, score the validation split, report once with the skops file.

Failures: ``train.max_failures`` is each trial's budget of restarts, spent by Tune alone.
A trial whose training fails (a Train worker died) or whose own process died (its node
was lost: the trial's driver, Train controller and workers go with it) is launched again
(``FailureConfig`` on the Tuner). A function trainable's new launch continues after
its newest complete checkpoint; a TorchTrainer trial's new launch builds the same
``TorchTrainer`` (run named by the trial id, in the same folder), which finds that run's
registered checkpoints and resumes after the newest; a scikit-learn trial fits again.
Ray Train itself does not retry inside a trial (``max_failures=0`` there): two budgets
would multiply, and a configuration that always fails would run (max_failures + 1)²
times. A trial's epochs in the trial table count from its reported ``epoch``, not
from Tune's iterations, which start again at a relaunch.

The experiment lives in ``<storage>/work/tune/<train fingerprint>/``, outside the stage's
artifact folder (which a rerun wipes): a rerun of the same stage after a driver crash
finds it and continues with ``Tuner.restore``, without re-running finished trials. That
folder is private to the user (``trust.py``): ``Tuner.restore`` unpickles Tune's state,
so a folder others could have written is not resumed but searched again.
Every trial launch leaves a small file in ``launches/`` (the tests count them).
The best trial (by ``tune.metric`` at its last report) becomes the stage's model; the
trial table is saved with the run.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from typing import Any

from raypipe.errors import StageFailed
from raypipe.tasks import TASKS
from raypipe.train import checkpoint as ckpt_files
from raypipe.train import fit as training
from raypipe.train.local import SINGLE
from raypipe.train.torch_trainer import train_plan
from raypipe.train.tune.space import flat, search_space, trial_count, trial_spec
from raypipe.train.tune.trust import make_private, why_untrusted

EXPERIMENT = "tune"


def _record_launch(work: str, trial_id: str) -> None:
    os.makedirs(os.path.join(work, "launches"), exist_ok=True)
    name = f"{trial_id}-{uuid.uuid4().hex[:8]}.json"
    with open(os.path.join(work, "launches", name), "w") as f:
        json.dump({"trial_id": trial_id, "pid": os.getpid(), "time": time.time()}, f)


def _lockstep_callback(gate: Any) -> Any:
    from ray.tune.integration.ray_train import TuneReportCallback

    class LockstepReport(TuneReportCallback):
        """``TuneReportCallback`` that releases the workers only once Tune has decided to go on.

        Train's workers do not wait for Tune: without this, each epoch's result sits in up to
        three queues (worker -> Train controller -> Tune trial -> Tune controller) while the
        workers train on, and ASHA's "stop" reaches a trial epochs after the rung it was meant
        for. Here, after handing the epoch's metrics to the trial, the callback puts two empty
        items on the same one-slot queue: the trial drops empty items, and the second put
        returns only once the trial has asked for its *next* result — which Tune does only
        after its scheduler said "continue". Then it puts the epoch on ``gate``, which rank 0
        waits for (:func:`raypipe.train.torch_trainer.train_loop`). A "stop" kills the trial
        and its workers while they wait.
        """

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            super().after_report(run_context, metrics, checkpoint)
            self._training_actor_item_queue.put(None)  # returns once Tune has taken this epoch's result
            self._training_actor_item_queue.put(None)  # returns once Tune has asked for the next one
            gate.put(metrics[0]["epoch"])

    return LockstepReport()


def torch_trial(sample: dict[str, Any], *, spec: Any, datasets: dict[str, Any], dims: dict[str, Any],
                work: str, lockstep: bool) -> None:
    """A Tune driver function: one distributed training run of one configuration."""
    from ray import tune
    from ray.train import FailureConfig, RunConfig
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.util.queue import Queue

    trial_id = tune.get_context().get_trial_id()
    _record_launch(work, trial_id)
    spec = trial_spec(spec, sample)
    gate, callback = None, TuneReportCallback()
    if lockstep:
        gate = Queue(actor_options={"num_cpus": 0})
        callback = _lockstep_callback(gate)
    # Named by the trial id: a relaunch of this trial (Tune's FailureConfig) resumes this run's newest registered
    # checkpoint. Retries are Tune's alone (see the module docstring).
    run_config = RunConfig(name=trial_id, storage_path=os.path.join(work, "train"), callbacks=[callback],
                           failure_config=FailureConfig(max_failures=0))
    training.torch_trainer(spec, dims, datasets, run_config, gate).fit()


def local_trial(sample: dict[str, Any], *, spec: Any, datasets: dict[str, Any], dims: dict[str, Any],
                work: str) -> None:
    """A function trainable: one configuration trained in this trial's own process (no Ray Train).

    Every epoch ends in ``tune.report`` with the epoch's checkpoint. Tune's function API
    reports synchronously: ``report`` returns only when Tune asks for the next result,
    which it does after its scheduler decided to continue the trial, so a trial that ASHA
    stops trains no epoch past its rung. A relaunch (``train.max_failures``) continues
    after the trial's newest complete checkpoint.
    """
    from ray import tune

    from raypipe.train.local import train_in_memory
    from raypipe.train.torch_trainer import loop_config

    _record_launch(work, tune.get_context().get_trial_id())
    spec = trial_spec(spec, sample)
    config = {**loop_config(spec, dims, "validation" in datasets), "workers": spec.train.workers}
    restored = tune.get_checkpoint()
    restored = ckpt_files.newest_complete(restored) if restored else None
    saved = None
    if restored:
        with restored.as_directory() as d:
            saved = ckpt_files.read(d)

    def report(run: Any, epoch: int, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            run.write_checkpoint(d, epoch, pid=os.getpid())
            tune.report({**metrics, "pid": os.getpid()}, checkpoint=tune.Checkpoint.from_directory(d))

    train_in_memory(config, datasets, max(1, int(_trial_cpus(spec))), saved, report)


def _trial_cpus(spec: Any) -> float:
    return spec.train.workers * float(spec.train.resources.get("CPU", 1))


def sklearn_trial(sample: dict[str, Any], *, spec: Any, train_refs: list[Any], val_refs: list[Any],
                  dims: dict[str, Any], work: str) -> None:
    """A function trainable: fit one estimator configuration, score it on the validation split."""
    from ray import tune

    _record_launch(work, tune.get_context().get_trial_id())
    spec = trial_spec(spec, sample)
    fitted = training.fit_estimator(spec, train_refs, dims)
    metrics = training.validation_scores(spec, fitted, val_refs, dims)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "model.skops"), "wb") as f:
            f.write(fitted.model)
        tune.report({"epoch": 0, **metrics}, checkpoint=tune.Checkpoint.from_directory(d))


def resolved_metric(spec: Any) -> tuple[str, str]:
    t = spec.tune
    if t.metric:
        return t.metric, t.mode or ("min" if t.metric.endswith(("loss", "rmse")) else "max")
    task = TASKS[spec.data.task]
    return task.tune_metrics[0], task.tune_mode


def run_search(spec: Any, ctx: Any, splits: dict[str, Any], dims: dict[str, Any]) -> training.Fitted:
    """Run (or resume) the search; return the best trial's model."""
    from ray import tune

    t = spec.tune
    metric, mode = resolved_metric(spec)
    work_store = ctx.root.sub(f"work/tune/{ctx.fingerprint[:20]}")
    if not work_store.is_local:
        raise StageFailed("tune: the search's working folder must be on a local or shared filesystem for now; "
                          f"storage {ctx.root.full_uri('')!r} is remote")
    work = work_store.path()
    reuse = not spec.model.is_torch or dims["path"][0] == SINGLE
    if spec.model.is_torch:
        datasets = {"train": splits["train"]}
        if "validation" in splits:
            datasets["validation"] = splits["validation"]
        per_trial = _trial_cpus(spec)
        if dims["path"][0] == SINGLE:  # the trial trains in its own process, with the CPUs of train.workers
            trainable = tune.with_parameters(local_trial, spec=spec, datasets=datasets, dims=dims, work=work)
            trainable = tune.with_resources(trainable, {"cpu": per_trial})
        else:
            trainable = tune.with_parameters(torch_trial, spec=spec, datasets=datasets, dims=dims, work=work,
                                             lockstep=t.scheduler == "asha")
            trainable = tune.with_resources(trainable, {"cpu": 0.01})  # the driver only waits; the workers hold the CPUs
    else:
        trainable = tune.with_parameters(sklearn_trial, spec=spec, train_refs=splits["train"].to_numpy_refs(),
                                         val_refs=splits["validation"].to_numpy_refs(), dims=dims, work=work)
        res = spec.train.resources
        trainable = tune.with_resources(trainable, {"cpu": res.get("CPU", 1), "gpu": res.get("GPU", 0)})
        per_trial = float(res.get("CPU", 1))
    concurrent = t.max_concurrent_trials or max(1, int(_cluster_cpus() // (per_trial + 1)))
    # ASHA's horizon: the epochs the spec's own settings resolve to (a trial whose tuned batch size or
    # epochs resolve to more is stopped there).
    epochs = train_plan(spec, dims).epochs if spec.model.is_torch else 1
    # reuse_actors: a one-process trial's successor runs in the same process (no worker start, torch
    # already imported). Not for TorchTrainer trials: a reused trial driver left the next trial's
    # Train run waiting for ever (its predecessor's worker group was never released).
    callbacks = []
    if dims.get("mlflow_parent"):  # one nested MLflow run per trial, live (raypipe.train.tune.tracking)
        from raypipe.train.tune.tracking import TrialRuns

        callbacks.append(TrialRuns(spec.tracking.mlflow_uri, dims["mlflow_parent"]))
    results = make_tuner(spec, ctx, trainable, work_store, concurrent=concurrent, max_t=epochs, reuse=reuse,
                         callbacks=callbacks).fit()
    return _best_model(spec, ctx, results, metric, mode, dims, work)


def make_tuner(spec: Any, ctx: Any, trainable: Any, work_store: Any, *, concurrent: int, max_t: int,
               reuse: bool, callbacks: list[Any] | None = None) -> Any:
    """The search's Tuner: resumed from ``work_store`` when an interrupted one is there (:func:`resumable`),
    else new, with ``tune.scheduler`` (ASHA over ``max_t`` training iterations, or FIFO) and ``tune.search``.
    ``callbacks``: Tune callbacks of a new search (a resumed one keeps those it was saved with)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = spec.tune
    metric, mode = resolved_metric(spec)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(t.grace_period, max_t),
                               reduction_factor=t.reduction_factor)
                 if t.scheduler == "asha" else FIFOScheduler())
    search_alg = None
    if t.search == "optuna":
        from raypipe.train.tune.searcher import ResumableOptunaSearch

        search_alg = ResumableOptunaSearch(seed=t.seed)
    space = search_space(t.space, t.seed)
    work = work_store.path()
    path = os.path.join(work, EXPERIMENT)
    if resumable(work_store, path, forced=ctx.forced, log=ctx.log):
        ctx.log(f"tune: resuming the interrupted search in {path}")
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=space)
    ctx.log(f"tune: {trial_count(t.space, t.num_samples)} trials, {t.scheduler} scheduler, {t.search} search, "
            f"{concurrent} at a time, best by {metric} ({mode})")
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=t.num_samples, max_concurrent_trials=concurrent, reuse_actors=reuse),
        # A failed trial (its Train workers, or its node with its driver) is launched again and resumes.
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=work, verbose=0, callbacks=callbacks or None,
                                  failure_config=tune.FailureConfig(max_failures=spec.train.max_failures)))


def resumable(work_store: Any, path: str, *, forced: bool, log: Any) -> bool:
    """Whether to resume the search saved at ``path``; if not, its working folder is ready (and private).

    ``--force`` starts afresh. A saved search is resumed only from a folder no other
    user could have written (``trust.why_untrusted``): ``Tuner.restore`` unpickles it.
    """
    from ray import tune

    work = work_store.path()
    if forced:
        work_store.delete()
    elif tune.Tuner.can_restore(path):
        why = why_untrusted(work)
        if why is None:
            return True
        log(f"tune: not resuming the interrupted search in {path}: {why}. Tune's state is pickled and is "
            "loaded only from a folder no other user can write; the search starts again")
        work_store.delete()
    make_private(work)
    return False


def _cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1))


def _best_model(spec: Any, ctx: Any, results: Any, metric: str, mode: str, dims: dict[str, Any],
                work: str) -> training.Fitted:
    table = _trial_table(results, metric)
    ctx.artifact.write_json("tune_trials.json", table)
    errors = [r for r in results if r.error is not None]
    ok = [r for r in results if r.error is None and metric in (r.metrics or {})]
    if not ok:
        first = str(errors[0].error).strip().splitlines()[0] if errors else "no trial reported"
        raise StageFailed(f"stage 'train' failed: every tune trial failed ({len(errors)} errors); first: {first}")
    best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    best_spec = trial_spec(spec, best.config)
    report: dict[str, Any] = {
        "tune": {"metric": metric, "mode": mode, "best_trial": best.path.rstrip("/").split("/")[-1],
                 "best_config": flat(best.config), "best_score": best.metrics[metric], "trials": len(table["trials"]),
                 "failed_trials": len(errors), "trial_epochs": table["trial_epochs"],
                 "launches": len(os.listdir(os.path.join(work, "launches"))), "scheduler": spec.tune.scheduler,
                 "search": spec.tune.search},
        "kind": spec.model.kind,
    }
    if not spec.model.is_torch:
        with best.checkpoint.as_directory() as d, open(os.path.join(d, "model.skops"), "rb") as f:
            blob = f.read()
        return training.Fitted(training.fit_meta(best_spec, dims), blob, report)
    from ray.train import Checkpoint

    if "checkpoint_path" in best.metrics:  # a TorchTrainer trial: its Ray Train run's checkpoint
        checkpoint, path = Checkpoint(best.metrics["checkpoint_path"]), best.metrics["checkpoint_path"]
    else:  # a function trainable: the checkpoint of its last report
        checkpoint, path = best.checkpoint, best.path
    fitted = training.torch_fitted(best_spec, dims, checkpoint, best.metrics.get("ddp"), path)
    route = {"path": dims["path"][0], "path_reason": dims["path"][1]}
    return training.Fitted(fitted.meta, fitted.model, {**fitted.report, **route, **report})


def _trial_table(results: Any, metric: str) -> dict[str, Any]:
    rows, total = [], 0
    for r in results:
        m = r.metrics or {}
        # The epoch counter survives a relaunch (it comes from the checkpoint); Tune's iterations start again.
        iters = int(m["epoch"]) + 1 if "epoch" in m else int(m.get("training_iteration", 0))
        total += iters
        rows.append({"trial_id": m.get("trial_id") or r.path.rstrip("/").split("/")[-1], "config": flat(r.config),
                     "status": "error" if r.error else "ok", "epochs": iters, metric: m.get(metric),
                     **{k: m[k] for k in ("val_loss", "val_accuracy", "val_f1", "val_rmse", "train_loss") if k in m and k != metric}})
    return {"metric": metric, "trial_epochs": total, "trials": rows}
