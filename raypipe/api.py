"""The Python API behind the command line: run, serve, predict, feedback."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from raypipe.progress import Progress
from raypipe.spec import Spec, demo_spec_path, load_spec


def as_spec(spec: Spec | str | Path | dict[str, Any] | None) -> Spec:
    """A validated spec from a Spec, a YAML path, a dict, or None (the built-in demo)."""
    if isinstance(spec, Spec):
        return spec
    if spec is None:
        return load_spec(demo_spec_path(), base_dir=Path.cwd())
    return load_spec(spec)


def run(spec: Spec | str | Path | dict[str, Any] | None = None, *, force: str | None = None, until: str | None = None,
        address: str | None = None, progress: Progress | None = None, trigger: dict[str, Any] | None = None,
        only: str | None = None, run_key: str | None = None) -> Any:
    """Run a pipeline's stages (cached where possible); ``only``: one stage whose inputs are complete artifacts.

    Returns:
        A :class:`raypipe.runner.RunResult`.

    Raises:
        SpecError, DataValidationError, GateFailed, StageFailed: see ``raypipe.errors``.
    """
    from raypipe.register.mlflow import check_available
    from raypipe.runner import Runner
    from raypipe.train.rl import check_installed

    spec = as_spec(spec)
    check_available(spec)  # fail before the run, not at its end, when MLflow is configured but missing
    check_installed(spec)  # ... or when a policy is to be trained without RLlib
    return Runner(spec, force=force, until=until, address=address, progress=progress, trigger=trigger, only=only,
                  run_key=run_key).run()


def serve(spec: Spec | str | Path | dict[str, Any] | None = None, *, version: int | None = None, alias: str | None = None,
          address: str | None = None, port: int | None = None) -> Any:
    """Deploy a registered version (the champion by default) as a Ray Serve application.

    Returns:
        A :class:`raypipe.serve.deploy.Endpoint` with the URL and version.
    """
    from raypipe.serve.deploy import deploy

    return deploy(as_spec(spec), version=version, alias=alias, address=address, port=port)


def predict(spec: Spec | str | Path | dict[str, Any] | None, input: str, output: str, *, version: int | None = None,
            alias: str | None = None, address: str | None = None) -> dict[str, Any]:
    """Batch inference with Ray Data: read ``input`` (parquet or csv), write predictions as parquet."""
    from raypipe.serve.batch import predict_files

    return predict_files(as_spec(spec), input, output, version=version, alias=alias, address=address)


def _not_for_policies(spec: Spec, command: str) -> None:
    """Monitoring works on rows and labels; a policy (task reinforcement) has neither yet: say so up front."""
    from raypipe.errors import SpecError
    from raypipe.tasks import TASKS

    if TASKS[spec.data.task].policy:
        raise SpecError(f"{command}: monitoring (prediction log, drift, late labels, retraining) is not built for "
                        f"policies (data.task: {spec.data.task!r}); a policy is judged by `raypipe run`'s seeded "
                        "evaluation episodes")


def monitor(spec: Spec | str | Path | dict[str, Any] | None, input: str | None = None, *, version: int | None = None,
            alias: str | None = None, report: str | Path | None = None, address: str | None = None,
            last: str | None = None, since: Any = None, until: Any = None) -> Any:
    """Check a batch of rows (a CSV or parquet file or folder, the training columns, the target optional)
    against a registered version (the champion by default): drift per column, of the predictions and
    of the rows as a whole, and performance (measured with labels, estimated without).

    With ``last`` (``"1h"``; units s, m, h, d) or ``since``/``until`` (ISO times) instead of ``input``,
    the window of the prediction log is checked: each version that answered in it against its own
    reference, the labels that arrived (``raypipe feedback``) joined in.

    Returns:
        A :class:`raypipe.monitor.check.MonitorReport` (``.alarm``: drift or performance below the gate;
        ``.status``: ``ok``, ``drift`` or ``not_enough_data``); kept under
        ``<storage>/monitor/<pipeline>/<window-id>/`` and copied to ``report`` when given. For a log
        window a :class:`raypipe.monitor.logwindow.WindowCheck` (``.reports``: one per version).

    Raises:
        DataValidationError: the window itself fails validation. RegistryError: no such version, or a
        version registered without a drift reference. SpecError: both ``version`` and ``alias``, or both
        (or neither of) ``input`` and a log window.
    """
    from raypipe.errors import SpecError
    from raypipe.ingest.files import open_files
    from raypipe.monitor.check import check_window
    from raypipe.monitor.logwindow import check_log_window, references_for, window_bounds
    from raypipe.registry import Registry
    from raypipe.runtime import connect_for
    from raypipe.spec import CsvSource, ParquetSource

    if version is not None and alias is not None:
        raise SpecError("give --version or --alias, not both")
    windowed = last is not None or since is not None or until is not None
    if windowed == (input is not None):
        raise SpecError("give --input (a file of rows) or a log window (--last or --since/--until), one of them")
    s = as_spec(spec)
    _not_for_policies(s, "raypipe monitor")
    reg = Registry.for_spec(s)
    if windowed:
        if version is not None or alias is not None:
            raise SpecError("--version/--alias apply to --input; a log window is checked against the versions "
                            "that answered it")
        start, end = window_bounds(last, since, until)
        refs = references_for(s, reg)
        connect_for(s, address)
        return check_log_window(s, refs, start, end, report_dir=report)
    v = reg.resolve(version=version, alias=alias)
    ref, model = references_for(s, reg)(v)
    source = _window_source(str(input), CsvSource, ParquetSource)
    connect_for(s, address)
    ds = open_files(source).dataset
    return check_window(s, ref, ds, input=str(input), model=model, report_dir=report)


def retrain(spec: Spec | str | Path | dict[str, Any] | None, check: Any, *, address: str | None = None,
            progress: Progress | None = None) -> Any:
    """The closed loop's step for a checked window (what ``raypipe monitor ... --retrain`` does after the check).

    ``check`` is what :func:`monitor` returned. When it raises a trigger that ``monitor.retrain.on``
    holds (drift, performance below the gate, or a schedule), the pipeline runs on the fresh data,
    the candidate is gated against the champion on the fresh test split, promoted, and the running
    endpoint is swapped in place.

    With ``monitor.retrain.promote: canary`` a passing candidate first serves as a canary
    (``status`` canary); a later call, once ``canary_window_s`` has passed, judges it on the
    labelled live requests and promotes it or rolls it back (``promoted`` / ``rolled_back``).

    Returns:
        None when the window raised no trigger; else a :class:`raypipe.monitor.retrain.RetrainOutcome`
        (``status``: promoted, canary, rolled_back, rejected, failed, skipped, or not_configured when
        ``on`` lacks the trigger).
    """
    from raypipe.monitor.retrain import RetrainOutcome, retrain as run_retrain, settle_canary, trigger_of

    s = as_spec(spec)
    _not_for_policies(s, "raypipe retrain")
    settled = settle_canary(s, address=address)  # a canary an earlier retrain left, judged once its window passed
    if settled is not None:
        return settled
    trigger = trigger_of(check, s.monitor.retrain.on)
    if trigger is None:
        return None
    if trigger.kind not in s.monitor.retrain.on:
        return RetrainOutcome(status="not_configured", reason=f"monitor.retrain.on does not hold {trigger.kind!r}",
                              trigger=trigger.reason)
    return run_retrain(s, trigger, address=address, progress=progress)


def monitor_serve(spec: Spec | str | Path | dict[str, Any] | None, *, address: str | None = None) -> str:
    """Run ``raypipe monitor --serve``: the newest ``monitor.window_s`` of the log checked every
    ``monitor.interval_s`` by a Serve application ``<pipeline>-monitor`` at ``<route prefix>/monitor``
    (``GET .../status``; the endpoint's API key when ``deploy.auth`` is on), with Prometheus gauges
    ``ray_raypipe_feature_drift``, ``..._prediction_drift``, ``..._multivariate_drift``,
    ``..._window_rows``, ``..._window_invalid_rows`` and ``..._performance``. Returns the application's URL.
    """
    from ray.serve.schema import LoggingConfig

    from raypipe.monitor.service import deploy_monitor
    from raypipe.runtime import connect_for
    from raypipe.serve.deploy import QUIET, api_key_digest, http_timeout_s

    s = as_spec(spec)
    _not_for_policies(s, "raypipe monitor --serve")
    digest = api_key_digest(s)
    connect_for(s, address, serving=True)
    d = s.deploy
    return deploy_monitor(s, digest, {"host": d.host, "port": d.port, "request_timeout_s": http_timeout_s(s)},
                          LoggingConfig(**QUIET))


def emit_alert_rules(spec: Spec | str | Path | dict[str, Any] | None, path: str | Path) -> str:
    """Write the pipeline's Prometheus alerting rules (``raypipe monitor --emit-rules``); returns the path.

    See :mod:`raypipe.monitor.alerts` for the rules and what each one reads."""
    from raypipe.monitor.alerts import write_alert_rules

    return write_alert_rules(as_spec(spec), str(path))


def emit_alertmanager(spec: Spec | str | Path | dict[str, Any] | None, path: str | Path, *,
                      webhook_url: str | None = None, key_file: str | None = None) -> str:
    """Write an Alertmanager configuration routing the pipeline's alerts to the monitor's webhook
    (``raypipe monitor --emit-alertmanager``); returns the path."""
    from raypipe.monitor.alerts import write_alertmanager_config

    return write_alertmanager_config(as_spec(spec), str(path), webhook_url, key_file=key_file)


def _window_source(path: str, csv: Any, parquet: Any) -> Any:
    """A CSV source for a .csv/.tsv file or a folder holding only such files; parquet otherwise."""
    from raypipe.ingest.files import CSV_EXTENSIONS, PARQUET_EXTENSIONS, filesystem_and_path

    fs, inner = filesystem_and_path(path)
    import pyarrow.fs as pafs

    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        names = [i.path.lower() for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True))]
        is_csv = any(n.endswith(CSV_EXTENSIONS) for n in names) and not any(n.endswith(PARQUET_EXTENSIONS) for n in names)
    else:
        is_csv = path.lower().endswith(CSV_EXTENSIONS)
    return csv(type="csv", path=path) if is_csv else parquet(type="parquet", path=path)


def feedback(spec: Spec | str | Path | dict[str, Any] | None, input: str, *, id_column: str | None = None,
             label_column: str = "label") -> dict[str, Any]:
    """Store labels that arrived late, joined to the prediction log (:mod:`raypipe.feedback`).

    ``input`` is a parquet or CSV file with a ``request_id`` column (the ids the endpoint or
    ``raypipe predict`` returned) or, with ``id_column``, one of the spec's ``data.id_columns``;
    and the labels in ``label_column``.

    Returns:
        ``{pipeline, input, rows, matched, unknown, conflicts, duplicates, stored, unknown_ids, conflict_ids}``.

    Raises:
        SpecError: a file or column that is not there. DataValidationError: a bad label or a missing id.
    """
    from raypipe.errors import SpecError
    from raypipe.feedback import record_feedback
    from raypipe.registry import Registry

    s = as_spec(spec)
    _not_for_policies(s, "raypipe feedback")
    if id_column is not None and id_column not in s.data.id_columns:
        raise SpecError(f"--id-column {id_column!r} is not one of data.id_columns {s.data.id_columns}; "
                        "use one of them, or join by request_id")
    table = _read_table(input)
    key = id_column or "request_id"
    absent = [c for c in (key, label_column) if c not in table.column_names]
    if absent:
        raise SpecError(f"--input {input!r} has no column {absent[0]!r} (its columns: {', '.join(table.column_names)}); "
                        + ("name the label column with --label-column" if absent[0] == label_column else
                           "give the ids the responses returned as request_id, or join by an id column with --id-column"))
    reg = Registry.for_spec(s)
    schema = reg.version_store(reg.resolve()).read_json("schema.json")
    report = record_feedback(s.storage, s.name, table[key].to_pylist(), table[label_column].to_pylist(),
                             task=s.data.task, classes=(schema.get("target") or {}).get("classes"),
                             id_column=id_column, source="file")
    return {"pipeline": s.name, "input": input, **report.to_dict()}


def _read_table(path: str) -> Any:
    """A small parquet or CSV file as an Arrow table (labels: no Ray needed)."""
    import pyarrow.csv as pacsv
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from raypipe.errors import SpecError

    fs, p = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), str(Path(path).resolve()))
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        raise SpecError(f"--input {path!r} does not exist; give a parquet or CSV file of labels")
    if p.endswith(".csv"):
        with fs.open_input_stream(p) as f:
            return pacsv.read_csv(f)
    if p.endswith(".parquet") or fs.get_file_info(p).type == pafs.FileType.Directory:
        return pq.read_table(p, filesystem=fs)
    raise SpecError(f"--input {path!r}: give a .parquet or .csv file (or a folder of parquet files)")


def export(spec: Spec | str | Path | dict[str, Any] | None, *, output: str | None = None, format: str = "onnx",
           version: int | None = None, alias: str | None = None) -> dict[str, Any]:
    """Write a registered version (the champion by default) as one ONNX file; returns a summary.

    Raises:
        SpecError: an unknown format. ExportError: a feature or model without an ONNX form.
    """
    from dataclasses import asdict

    from raypipe.errors import SpecError
    from raypipe.export import export_onnx
    from raypipe.model.formats import trusted_factories
    from raypipe.model.predictor import Predictor
    from raypipe.registry import Registry

    if format != "onnx":
        raise SpecError(f"--format {format!r} is not supported; use --format onnx")
    s = as_spec(spec)
    reg = Registry.for_spec(s)
    v = reg.resolve(version=version, alias=alias)
    predictor = Predictor.from_version(reg.version_store(v), v, trusted_factories(s), manifest_sha256=reg.check_version(v))
    return asdict(export_onnx(predictor, output or f"{s.name}-v{v}.onnx", pipeline=s.name))
