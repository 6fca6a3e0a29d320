"""One nested MLflow run per Tune trial, logged live from the Tune driver.

Ray's ``ray.air.integrations.mlflow.MLflowLoggerCallback`` does not fit: it sets MLflow's
global tracking URI and experiment (``mlflow.set_tracking_uri``) in the driver and starts
top-level runs through the fluent API, with no parent. :class:`TrialRuns` is a plain Tune
``Callback`` over an ``MlflowClient`` bound to the URI: on a trial's start it makes a run
tagged ``mlflow.parentRunId`` (the pipeline run's MLflow run, :func:`raypipe.tracking.open_run`)
and ``raypipe.trial_id``, with the trial's configuration as params; every result the trial
reports becomes a point of its curves (``step`` = the reported ``epoch``, else Tune's
iteration - 1); the run ends FINISHED (ASHA's stop included, tagged ``raypipe.trial_status``)
or FAILED. A relaunched or resumed trial logs into its existing run (found by the tag).

Callbacks run in the Tune driver, so only the driver needs MLflow and the store. A tracking
error is one warning; the callback is then off and the search goes on.
"""
from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from raypipe.tracking import PARENT_TAG, client, curve_points, log_points

log = logging.getLogger("raypipe")

TRIAL_TAG = "raypipe.trial_id"
# Tune's own entries in every result: not the trial's metrics
TUNE_KEYS = frozenset({"timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "time_since_restore",
                       "iterations_since_restore", "pid", "node_ip", "date", "hostname", "done", "trial_id",
                       "experiment_tag", "config", "checkpoint_dir_name", "should_checkpoint"})


class TrialRuns(Callback):
    """Nested MLflow runs of a search's trials under ``parent`` (an MLflow run id) in store ``uri``."""

    def __init__(self, uri: str, parent: str) -> None:
        self.uri, self.parent = uri, parent
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.off = False
        self._client: Any = None
        self._exp: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment: no client in it
        return {**self.__dict__, "_client": None}

    def _mlflow(self) -> Any:
        if self._client is None:
            self._client = client(self.uri)
            self._exp = self._client.get_run(self.parent).info.experiment_id
        return self._client

    def _guard(self, what: str, fn: Any) -> None:
        if self.off:
            return
        try:
            fn()
        except Exception as exc:
            self.off = True
            log.warning("MLflow: logging the tune trials to %r stopped at %s (the search goes on): %s: %s",
                        self.uri, what, type(exc).__name__, exc)

    def _run_of(self, trial: Any) -> str:
        tid = trial.trial_id
        if tid not in self.runs:
            mlflow = self._mlflow()
            found = mlflow.search_runs([self._exp], filter_string=f"tags.`{TRIAL_TAG}` = '{tid}' and "
                                                                  f"tags.`{PARENT_TAG}` = '{self.parent}'")
            if found:
                self.runs[tid] = found[0].info.run_id
                if found[0].info.status != "RUNNING":
                    mlflow.update_run(self.runs[tid], status="RUNNING")
            else:
                from raypipe.train.tune.space import flat

                run = mlflow.create_run(self._exp, run_name=str(trial), tags={PARENT_TAG: self.parent, TRIAL_TAG: tid})
                self.runs[tid] = run.info.run_id
                from mlflow.entities import Param

                params = [Param(k, str(v)[:6000]) for k, v in flat(trial.config).items()]
                for i in range(0, len(params), 100):
                    mlflow.log_batch(self.runs[tid], params=params[i:i + 100])
        return self.runs[tid]

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._guard("a trial's start", lambda: self._run_of(trial))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any) -> None:
        def log_result() -> None:
            step = result["epoch"] if "epoch" in result else result.get("training_iteration", 1) - 1
            metrics = {k: v for k, v in result.items() if k not in TUNE_KEYS}
            log_points(self._mlflow(), self._run_of(trial), curve_points(metrics, int(step)))

        self._guard("a trial's result", log_result)

    def _end(self, trial: Any, status: str) -> None:
        def end() -> None:
            run = self._run_of(trial)
            self._mlflow().set_tag(run, "raypipe.trial_status", "error" if status == "FAILED" else "ok")
            self._mlflow().set_terminated(run, status)

        self._guard("a trial's end", end)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, "FAILED")
