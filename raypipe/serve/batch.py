"""Batch inference with Ray Data: an actor pool, the predictor loaded once per actor."""
from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow.fs as pafs

from raypipe.errors import SpecError
from raypipe.registry import Registry
from raypipe.spec import Spec
from raypipe.tasks import TASKS


def _read(path: str) -> Any:
    import ray.data

    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
    if p.endswith(".csv"):
        return ray.data.read_csv(p, filesystem=fs)
    if p.endswith(".parquet") or fs.get_file_info(p).type == pafs.FileType.Directory:
        return ray.data.read_parquet(p, filesystem=fs)
    raise SpecError(f"--input {path!r}: give a .parquet or .csv file, or a folder of parquet files")


def _log_setup(spec: Spec, reg: Registry, version: int, schema: dict[str, Any]) -> dict[str, Any] | None:
    """What the tasks need to log a batch (None when ``monitor.log`` is off)."""
    from raypipe.predlog import LogFormat
    from raypipe.serve.deploy import check_log_columns
    from raypipe.store import Store

    lg = spec.monitor.log
    if not lg.enabled:
        return None
    check_log_columns(spec, version)
    role = "champion" if reg.aliases().get("champion") == version else "challenger"
    return {"uri": Store(spec.storage).full_uri(), "pipeline": spec.name, "role": role,
            "sample_rate": lg.sample_rate, "fmt": LogFormat(schema, spec.data.task, lg.exclude_columns)}


def _log_batch(b: Any, answers: dict[str, Any], version: int, *, uri: str, pipeline: str, role: str,
               sample_rate: float, fmt: Any) -> list[str]:
    """Write a batch's sampled rows to the prediction log (one file per batch); returns every row's request id."""
    import time
    import uuid

    import numpy as np

    from raypipe.predlog import new_request_id, row_ids, write_log

    ids = row_ids(new_request_id(), len(b), many=True)
    keep = np.random.random(len(b)) < sample_rate if sample_rate < 1.0 else np.ones(len(b), dtype=bool)
    if keep.any():
        try:
            inputs = {name: b[name][keep] for name, _ in fmt.inputs if name in b}
            logged = fmt.answers_from_columns({k: np.asarray(val)[keep] for k, val in answers.items()})
            table = fmt.table(inputs, logged, [i for i, k in zip(ids, keep) if k], time.time(), version, role,
                              "predict")
            write_log(uri, pipeline, table, f"predict-{uuid.uuid4().hex[:12]}")
        except Exception:  # the predictions are the job; a log that cannot be written is reported, not fatal
            logging.getLogger("raypipe").exception("prediction log: %d rows of a batch could not be written",
                                                   int(keep.sum()))
    return ids


def gpu_actors(actors: int) -> int:
    """Actors for a GPU pool: one GPU each, so no more than the cluster has GPUs.

    Ray Data would otherwise wait for ever on an actor that no node can place. The count
    is of the nodes up now: an autoscaling cluster whose GPU nodes are all scaled down
    is refused too (start one first).

    Raises:
        SpecError: when the cluster has no GPU at all.
    """
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise SpecError("train.use_gpu: true, so `raypipe predict` gives each actor one GPU, but this Ray cluster "
                        "has none; run it on a cluster with GPU nodes, or set train.use_gpu: false to predict on CPUs")
    return min(actors, gpus)


def predict_files(spec: Spec, input: str, output: str, *, version: int | None = None, alias: str | None = None,
                  address: str | None = None, actors: int = 2) -> dict[str, Any]:
    """Predict every row of ``input``; write input columns + ``prediction`` (+ scores) as parquet.

    With ``monitor.log.enabled``, the output also has a ``request_id`` per row (``<id>:<row
    in its batch>``, what ``raypipe feedback`` takes), and the Ray Data tasks that finish
    each batch append its sampled rows to the prediction log themselves (``__source``
    ``predict``; :mod:`raypipe.predlog`): nothing is collected on the driver.

    A reinforcement-learning version answers rows of observations with actions instead
    (:mod:`raypipe.serve.batch_policy`; its answers are not written to the prediction log).
    """
    import numpy as np
    import pandas as pd

    from raypipe.model.formats import check_trusted, trusted_factories
    from raypipe.model.predictor import BatchPredict
    from raypipe.runtime import connect_for

    out_fs, out_path = pafs.FileSystem.from_uri(output) if "://" in output else (pafs.LocalFileSystem(), output)
    existing = out_fs.get_file_info(pafs.FileSelector(out_path, allow_not_found=True))
    if existing:
        raise SpecError(f"--output {output!r} exists and is not empty; give a new folder (predictions are never mixed)")
    reg = Registry.for_spec(spec)
    v = reg.resolve(version=version, alias=alias)
    vs = reg.version_store(v)
    reg.check_version(v)  # every file as registered (manifest, signature) before any actor loads one
    from raypipe.model.policy import is_policy

    if is_policy(vs.sub("model")):  # a reinforcement-learning version: observation rows in, actions out
        from raypipe.serve.batch_policy import predict_policy_files

        return predict_policy_files(vs, v, input, out_fs, out_path, output, connect=lambda: connect_for(spec, address),
                                    read=_read, actors=actors)
    trusted = trusted_factories(spec)
    check_trusted(vs.read_json("model", "model.json")["kind"], trusted)  # refused here, before any actor starts
    connect_for(spec, address)
    schema = vs.read_json("schema.json")
    gpu = 1 if spec.train.use_gpu else 0
    if gpu:
        actors = gpu_actors(actors)
    t0 = time.perf_counter()
    ds = _read(input)
    keep = [c for c in ds.schema().names]
    preds = ds.map_batches(
        BatchPredict,
        fn_constructor_kwargs={"model_uri": vs.full_uri("model"), "features": vs.read_json("features.json"),
                               "schema": schema, "threshold": reg.info(v).get("threshold", 0.5), "keep": keep,
                               "use_gpu": bool(gpu), "trusted": trusted},
        batch_format="pandas", concurrency=actors, num_gpus=gpu, batch_size=4096,
    )
    classes = (schema.get("target") or {}).get("classes")
    task = spec.data.task
    log = _log_setup(spec, reg, v, schema)

    def finish(b: pd.DataFrame) -> pd.DataFrame:
        scores = np.stack(b.pop("__scores").to_numpy())
        pred = b.pop("__pred").to_numpy()
        answers = TASKS[task].columns(pred, scores, classes)
        for name, values in answers.items():
            b[name] = values
        b["model_version"] = v
        if log is not None:
            b["request_id"] = _log_batch(b, answers, v, **log)
        return b

    out = preds.map_batches(finish, batch_format="pandas")
    out.write_parquet(out_path, filesystem=out_fs)
    import pyarrow.dataset as pads

    rows = pads.dataset(out_path, filesystem=out_fs, format="parquet").count_rows()
    return {"version": v, "rows": rows, "output": output, "seconds": round(time.perf_counter() - t0, 2)}
