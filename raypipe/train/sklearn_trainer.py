"""scikit-learn estimators trained in a Ray task sized by ``train.resources``."""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from raypipe.model.formats import import_estimator, model_meta, skops_io
from raypipe.tasks import TASKS


def _fit_estimator(kind: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray | None, sample_weight: np.ndarray | None,
         seed: int, task: str = "classification") -> bytes:
    sio = skops_io()
    cls = import_estimator(kind)
    params = dict(params)
    accepted = inspect.signature(cls).parameters
    if "random_state" in accepted:
        params.setdefault("random_state", seed)
    if "novelty" in accepted and TASKS[task].scores == "anomaly_score":
        params.setdefault("novelty", True)  # LocalOutlierFactor scores new rows only with novelty=True
    est = cls(**params)
    fit_kw = {"sample_weight": sample_weight} if sample_weight is not None and "sample_weight" in inspect.signature(est.fit).parameters else {}
    if not TASKS[task].supervised:
        est.fit(x, **fit_kw)  # unsupervised: labels, if any, are for evaluation only
    else:
        est.fit(x, y, **fit_kw)
    return sio.dumps(est)


def check_estimator(kind: str, task: str) -> None:
    """Fail on the driver, before any work, when the estimator cannot do the task at serving time."""
    from raypipe.errors import SpecError

    cls = import_estimator(kind)
    needs = TASKS[task].serving_methods
    if needs and not any(hasattr(cls, n) for n in needs):
        raise SpecError(
            f"model.kind: {kind!r} cannot score new rows for task {task!r} (it has no {' or '.join(needs)}); "
            + ("use e.g. KMeans, MiniBatchKMeans, BisectingKMeans, Birch or GaussianMixture" if task == "clustering"
               else "use e.g. IsolationForest, LocalOutlierFactor, OneClassSVM or EllipticEnvelope")
        )


def train_sklearn(spec: Any, train_xy: Any, dims: dict[str, Any]) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """Fit ``spec.model.kind`` on the training split in one Ray task.

    ``train_xy`` is the transformed split (a Ray Dataset of ``{"x", "y"}``), materialised
    into the object store and read by the task. With ``dims["source"]`` (the split's parquet
    folder, features and schema) and a split under :data:`raypipe.datasets.SMALL_DATA_BYTES`
    (``source["small"]``, which the train stage read from the footers),
    the task reads and transforms the split itself (the same ``xy_batch``, on the whole
    table): no Ray Data execution, no object-store round trip.

    Returns:
        (model metadata, skops bytes, a report: where the fit ran and why).
    """
    import ray

    from raypipe.runtime import small_data_in_driver

    check_estimator(spec.model.kind, spec.data.task)  # fail fast on the driver with a spec error
    res = spec.train.resources
    options = {"num_cpus": res.get("CPU", 1), "num_gpus": res.get("GPU", 0),
               "resources": {k: v for k, v in res.items() if k not in ("CPU", "GPU")} or None}
    args = (spec.model.kind, spec.model.params)
    rest = (dims["class_weights"], spec.train.seed, spec.data.task)
    source = dims.get("source")
    small = source is not None and source["small"]
    if small and small_data_in_driver() and set(res) <= {"CPU"}:  # ray.small_data: fit in this process
        from ray.data import DataContext

        threads = driver_threads(spec)
        blob = _fit_from_table(DataContext.get_current(), *args, source, *rest, threads=threads)
        report = {"path": "driver", "threads": threads,
                  "path_reason": "small data on a one-machine Ray (ray.small_data), no GPU or custom resources"}
    elif small:
        from ray.data import DataContext

        blob = ray.get(ray.remote(_fit_from_table).options(**options).remote(
            DataContext.get_current(), *args, source, *rest))
        report = {"path": "task", "path_reason": "small data: one Ray task reads the split and fits"}
    else:
        task = ray.remote(_fit_from_refs).options(**options)
        blob = ray.get(task.remote(*args, train_xy.to_numpy_refs(), *rest))
        report = {"path": "task", "path_reason": "the transformed split through Ray's object store"}
    meta = model_meta(spec.model.kind, spec.data.task, dims["n_outputs"], params=spec.model.params)
    return meta, blob, report


def canonical_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by a hash of their values.

    Ray Data does not promise a row order (the split files come back in any order), and
    estimators such as HistGradientBoosting (early-stopping holdout, binning sample)
    or SGD depend on it: a canonical order makes the same data give the same model.
    """
    import pandas as pd

    frame = pd.DataFrame(np.column_stack([x, y]).astype(np.float64, copy=False))
    order = np.argsort(pd.util.hash_pandas_object(frame, index=False).to_numpy(), kind="stable")
    return x[order], y[order]


def read_arrays(refs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a dataset's ``to_numpy_refs()`` blocks, joined."""
    import ray

    parts = ray.get(refs)
    return np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts])


def fit_arrays(kind: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, class_weights: list[float] | None,
               seed: int, task: str) -> bytes:
    """Fit in this process on (x, y) put in canonical row order; return the skops bytes."""
    x, y = canonical_order(x, y)
    sw = np.asarray(class_weights)[y] if class_weights is not None else None
    return _fit_estimator(kind, params, x, y, sw, seed, task)


def driver_threads(spec: Any) -> int:
    """Threads of a fit in the driver: ``train.resources.CPU`` when the spec sets it, else every core
    of this machine that the Ray offers (the train stage runs alone; scikit-learn's default is every core).

    HistGradientBoosting's model does not depend on its thread count (checked bit for bit), so the
    same data gives the same model on either path.
    """
    import os

    import ray

    if "resources" in spec.train.model_fields_set:
        return max(1, int(spec.train.resources.get("CPU", 1)))
    offered = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else spec.ray.num_cpus or os.cpu_count()
    return max(1, min(os.cpu_count() or 1, int(offered or 1)))


def _threads(cpus: int | None = None) -> Any:
    """Native thread pools (OpenMP, BLAS) sized to ``cpus``, by default the CPUs this Ray task holds
    (``train.resources``).

    Ray sets ``OMP_NUM_THREADS`` once per worker process, from the first task it runs: a pooled
    worker that first ran a 1-CPU task would fit a ``{"CPU": 2}`` estimator on one thread.
    """
    import ray
    from threadpoolctl import threadpool_limits

    if cpus is None:
        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU") or 1)
    return threadpool_limits(limits=max(1, cpus))


def _fit_from_refs(kind: str, params: dict[str, Any], refs: list[Any], class_weights: list[float] | None, seed: int,
                   task: str) -> bytes:
    with _threads():
        return fit_arrays(kind, params, *read_arrays(refs), class_weights, seed, task)


def _fit_from_table(context: Any, kind: str, params: dict[str, Any], source: dict[str, Any],
                    class_weights: list[float] | None, seed: int, task: str, threads: int | None = None) -> bytes:
    """The small-data path: read the split, transform it with ``xy_batch`` and fit, in this task (or, with
    ``threads``, in the driver)."""
    from raypipe.train.data import xy_table

    xy = xy_table(source["store"], source["rel"], source["features"], source["schema"], context)
    with _threads(threads):
        return fit_arrays(kind, params, xy["x"], xy["y"], class_weights, seed, task)
