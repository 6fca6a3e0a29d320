"""The ``raypipe`` command. Exit codes: 0 ok, 1 unexpected, 2 spec/usage, 3 data, 4 gate, 5 drift."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from raypipe.errors import RaypipeError, RegistryError
from raypipe.stage import artifact_path

app = typer.Typer(add_completion=False, no_args_is_help=True, help="raypipe: one YAML spec -> a whole ML pipeline on Ray.")
registry_app = typer.Typer(no_args_is_help=True, help="Model versions and aliases.")
runs_app = typer.Typer(no_args_is_help=True, help="Past runs and their manifests.")
data_app = typer.Typer(no_args_is_help=True, help="The data reference (schema + profile) later runs are checked against.")
app.add_typer(registry_app, name="registry")
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
export_app = typer.Typer(no_args_is_help=True, help="A registered version as ONNX; the pipeline as an Airflow DAG or a Kubeflow pipeline.")
app.add_typer(export_app, name="export")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

SpecArg = typer.Argument(..., help="Path of the pipeline YAML spec.", exists=False)
AddressOpt = typer.Option(None, "--address", help='Ray address: "auto" joins the running cluster.')


@app.command()
def run(
    spec: Optional[Path] = typer.Argument(None, help="Pipeline YAML spec; omitted: the built-in demo."),
    force: Optional[str] = typer.Option(None, "--force", "--from", help="Recompute this stage and every stage after "
                                        "it (--from is the same)."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    only: Optional[str] = typer.Option(None, "--only", help="Run this stage alone; the stages before it must be "
                                       "complete (exit 2 naming the missing one). An orchestrator's task per stage."),
    run_key: Optional[str] = typer.Option(None, "--run-key", help="The orchestrator's run id: the stages of one "
                                          "run share it as the snapshot of a source that cannot be hashed."),
    address: Optional[str] = AddressOpt,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary as the last line."),
    serve: Optional[bool] = typer.Option(None, "--serve/--no-serve", help="Deploy the champion (default: deploy.enabled)."),
    blocking: bool = typer.Option(False, "--blocking", help="Keep serving until Ctrl-C."),
    port: Optional[int] = typer.Option(None, "--port", help="Serve HTTP port (overrides deploy.port)."),
) -> None:
    """Run the pipeline: ingest → validate → features → train → evaluate → register → serve."""
    from raypipe.api import as_spec, run as run_pipeline
    from raypipe.submit import check_required_version

    check_required_version()  # a submitted job: the cluster's raypipe is the submitter's
    s = as_spec(spec)
    deploy = (s.deploy.enabled if serve is None else serve) and until is None and only is None
    if blocking and deploy:
        from raypipe.runtime import connect_for

        connect_for(s, address, serving=True)  # a Ray that stays up serving starts what serving needs
    result = run_pipeline(s, force=force, until=until, address=address, only=only, run_key=run_key)
    summary = result.summary()
    if deploy:
        summary.update(_deploy_and_probe(s, address, port, blocking))
    _finish(summary, json_out)


def _deploy_and_probe(spec: Any, address: str | None, port: int | None, blocking: bool) -> dict[str, Any]:
    from raypipe.api import serve as serve_api
    from raypipe.serve.deploy import sample_request, shutdown

    endpoint = serve_api(spec, address=address, port=port)
    rows = sample_request(spec, endpoint.version, n=2)
    route = "/act" if isinstance(rows, dict) else "/predict"  # a policy's sample is {"observations": [...]}
    answer = endpoint.post_predict(rows, route=route)
    err.print(f"[bold]endpoint[/bold] {endpoint.url} (version {endpoint.version})")
    err.print(f"POST {endpoint.url}{route} {json.dumps(rows, default=str)}", markup=False)
    err.print(f"→ {json.dumps(answer)}", markup=False)
    extra = {"endpoint": endpoint.url, "sample_request": rows, "sample_response": answer}
    if blocking:
        endpoint.wait()
    elif not (address or spec.ray.address):
        shutdown(endpoint.app_name)  # a local demo ends cleanly; on a cluster the app keeps running
    return extra


@app.command()
def submit(
    spec: Path = SpecArg,
    address: Optional[str] = typer.Option(None, "--address", envvar=["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"],
                                          help="The cluster's dashboard: http://head:8265 (default: "
                                               "$RAY_API_SERVER_ADDRESS or $RAY_ADDRESS, as `ray job submit`)."),
    only: Optional[str] = typer.Option(None, "--only", help="Run this stage alone (its inputs must be complete)."),
    until: Optional[str] = typer.Option(None, "--until", help="Stop after this stage."),
    force: Optional[str] = typer.Option(None, "--force", help="Recompute this stage and every stage after it."),
    run_key: Optional[str] = typer.Option(None, "--run-key", help="The orchestrator's run id (see run --run-key)."),
    pip: Optional[list[str]] = typer.Option(None, "--pip", help="A package the job installs first, e.g. "
                                            "raypipe==0.1.0 (repeatable): for a cluster without raypipe."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream the job's output and exit with its code."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's JSON summary as the last line."),
) -> None:
    """Submit the run (or one stage) as a Ray job; stream its output; exit with the run's own exit code."""
    from raypipe.errors import SpecError
    from raypipe.submit import submit as submit_job

    if not address:
        raise SpecError("--address: which cluster? Give its dashboard, e.g. --address http://head:8265 "
                        "(or set RAY_API_SERVER_ADDRESS)")
    result = submit_job(spec, address=address, only=only, until=until, force=force, run_key=run_key, pip=pip,
                        wait=wait, echo=lambda text: err.print(text, markup=False, highlight=False))
    err.print(f"[bold]job[/bold] {result.submission_id}: {result.status}"
              + (f" (exit {result.exit_code})" if wait else "") + (f" - {result.message}" if result.message else ""))
    if json_out:
        print(json.dumps({"submission_id": result.submission_id, "status": result.status,
                          "exit_code": result.exit_code, "summary": result.summary}, default=str), flush=True)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command()
def up(
    status: bool = typer.Option(False, "--status", help="Only say whether it is up (exit 1 when not)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="Logical CPUs (default: max(4, cores), "
                                           "as a run's own local Ray)."),
    ingress: str = typer.Option("haproxy", "--ingress", help="Serve's ingress: haproxy or proxy (see deploy.ingress)."),
    allow_insecure: bool = typer.Option(False, "--allow-insecure", help="Accept RAY_AUTH_MODE=disabled: a Ray "
                                        "without token authentication, usable by anyone on this host."),
) -> None:
    """Start a local Ray in the background that later runs join, so only the first run pays Ray's start-up.

    `raypipe run`, `serve`, `predict`, `monitor`, ... with no --address, ray.address or RAY_ADDRESS join it while it is up (ray.reuse_local: false opts a spec out). It has token authentication on, its dashboard on 127.0.0.1 (the URL is printed: a long-lived Ray is worth its UI), its own session folder, and runs until `raypipe down` (or a reboot).
    """  # noqa: E501 - one line: the help screen keeps a docstring's line breaks
    from raypipe import localray

    if ingress not in ("haproxy", "proxy"):
        raise typer.BadParameter(f"--ingress must be haproxy or proxy, got {ingress!r}")
    if status:
        found = localray.find()
        if found is None:
            err.print(f"no local Ray from `raypipe up` is running (state: {localray.state_path()})")
            raise SystemExit(1)  # (click returns a typer.Exit code without exiting in standalone_mode=False)
        _print_local(found, "up")
        return
    found, started = localray.up(num_cpus=num_cpus, ingress=ingress, allow_insecure=allow_insecure)
    _print_local(found, "started" if started else "already up")


def _print_local(r: Any, what: str) -> None:
    import time

    age = time.time() - r.started
    since = f"{age / 3600:.1f} h" if age >= 3600 else f"{age / 60:.0f} min"
    err.print(f"local Ray {what}: {r.address}, {r.num_cpus} CPUs, Serve ingress {r.ingress}, up {since}", markup=False)
    err.print(f"session {r.session_dir}", markup=False)
    if r.dashboard_url:
        err.print(f"dashboard {r.dashboard_url} (token: `ray get-auth-token`)", markup=False)
    err.print("runs on this host join it; `raypipe down` stops it", markup=False)


@app.command()
def down() -> None:
    """Stop the local Ray that `raypipe up` started (only that one; other Rays on the host keep running)."""
    from raypipe import localray

    stopped = localray.down()
    if stopped is None:
        err.print(f"no local Ray from `raypipe up` to stop (state: {localray.state_path()})")
        return
    err.print(f"stopped the local Ray at {stopped.address} ({stopped.temp_dir})", markup=False)


@app.command()
def serve(
    spec: Path = SpecArg,
    version: Optional[int] = typer.Option(None, "--version", help="Serve this registry version."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Serve the version with this alias (default champion)."),
    address: Optional[str] = AddressOpt,
    port: Optional[int] = typer.Option(None, "--port"),
    blocking: Optional[bool] = typer.Option(None, "--blocking/--no-blocking", help="Default: block on a local Ray, return on a cluster."),
    emit_config: Optional[Path] = typer.Option(None, "--emit-config", help="Write a Serve config file for "
                                               "`serve deploy` instead of deploying."),
    rayservice: Optional[Path] = typer.Option(None, "--rayservice", help="With --emit-config: also write a KubeRay "
                                              "RayService manifest serving it."),
) -> None:
    """Deploy a registered model as an autoscaling Ray Serve endpoint (or write its Serve config)."""
    from raypipe.api import as_spec, serve as serve_api

    s = as_spec(spec)
    if emit_config is not None:
        from raypipe.serve.deploy import dump_yaml, rayservice_manifest, serve_config

        config = serve_config(s, version=version, alias=alias)
        emit_config.write_text(dump_yaml(config))
        err.print(f"wrote {emit_config}: `serve deploy {emit_config}` serves {s.name} version "
                  f"{config['applications'][0]['deployments'][0]['user_config']['champion']['version']}")
        if rayservice is not None:
            rayservice.write_text(dump_yaml(rayservice_manifest(s, config)))
            err.print(f"wrote {rayservice}: `kubectl apply -f {rayservice}`")
        return
    endpoint = serve_api(s, version=version, alias=alias, address=address, port=port)
    err.print(f"serving {s.name} version {endpoint.version} at {endpoint.url}  (POST /predict, GET /healthz, GET /metadata)")
    if blocking if blocking is not None else not (address or s.ray.address):
        endpoint.wait()


@app.command()
def predict(
    spec: Path = SpecArg,
    input: str = typer.Option(..., "--input", help="Parquet or CSV file/folder of rows (a policy version: observations, "
                              "as a list column obs or columns obs_0 .. obs_<n-1>)."),
    output: str = typer.Option(..., "--output", help="Folder for the predictions (parquet)."),
    version: Optional[int] = typer.Option(None, "--version"),
    alias: Optional[str] = typer.Option(None, "--alias"),
    address: Optional[str] = AddressOpt,
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Batch inference with Ray Data (model loaded once per actor)."""
    from raypipe.api import predict as predict_api

    _finish(predict_api(str(spec), input, output, version=version, alias=alias, address=address), json_out)


@app.command()
def monitor(
    spec: Path = SpecArg,
    input: Optional[str] = typer.Option(None, "--input", help="CSV or parquet file/folder of rows: the training "
                                        "columns, the target optional (with it, performance is measured)."),
    last: Optional[str] = typer.Option(None, "--last", help="Check this much of the prediction log up to now "
                                       "(e.g. 30m, 1h, 2d), each version against its own reference."),
    since: Optional[str] = typer.Option(None, "--since", help="... or the log from this ISO time"),
    until: Optional[str] = typer.Option(None, "--until", help="... to this ISO time (default now)."),
    serve: bool = typer.Option(False, "--serve", help="Keep checking the newest monitor.window_s of the log every "
                               "monitor.interval_s, as a Serve application with Prometheus gauges and "
                               "GET <route>/monitor/status."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary as the last line."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also copy report.json, drift.html and the "
                                          "pictures to this folder."),
    version: Optional[int] = typer.Option(None, "--version", help="Check against this registry version."),
    alias: Optional[str] = typer.Option(None, "--alias", help="... or the version with this alias (default champion)."),
    retrain: bool = typer.Option(False, "--retrain", help="When the window triggers one of monitor.retrain.on: "
                                 "train on the fresh data, gate against the champion, promote and swap the "
                                 "endpoint, in the foreground."),
    address: Optional[str] = AddressOpt,
    emit_rules: Optional[Path] = typer.Option(None, "--emit-rules", help="Write Prometheus alerting rules for the "
                                              "pipeline to this file and exit (checks nothing)."),
    emit_alertmanager: Optional[Path] = typer.Option(None, "--emit-alertmanager", help="Write an Alertmanager "
                                                     "configuration routing them to the monitor's webhook "
                                                     "(<route>/monitor/alerts) and exit."),
    webhook_url: Optional[str] = typer.Option(None, "--webhook-url", help="With --emit-alertmanager: post here "
                                              "instead (default monitor.alerts.webhook_url, else the monitor's "
                                              "URL from deploy.host/port/route_prefix)."),
    webhook_key_file: Optional[str] = typer.Option(None, "--webhook-key-file", help="With --emit-alertmanager and "
                                                   "deploy.auth: the file Alertmanager reads the API key from."),
) -> None:
    """Check a batch of rows, or a window of the prediction log, for drift and performance against the
    version that answered it.

    --emit-rules / --emit-alertmanager write the alerting configuration instead (exit 0).

    Exit codes: 0 no drift (or not enough data to say), 5 drift or performance below the gate's
    minimum (for a log window: in any version), 3 the window itself fails validation, 2 usage errors.
    With --retrain: 0 also when a retrain promoted a new champion (or started it as a canary, or a
    canary was promoted), 4 when the gate rejected the candidate (or a canary was rolled back), 5 when drift was found and no retrain ran (not configured, cooldown, daily cap, another
    retrain running, too few fresh rows), 1 when the retrain failed.
    """
    from raypipe.api import monitor as monitor_api
    from raypipe.errors import DriftDetected

    if emit_rules is not None or emit_alertmanager is not None:
        from raypipe.api import emit_alert_rules
        from raypipe.api import emit_alertmanager as emit_am
        from raypipe.spec import load_spec

        if input is not None or last or since or until or serve:
            from raypipe.errors import SpecError

            raise SpecError("--emit-rules/--emit-alertmanager write files and check nothing; "
                            "drop --input/--last/--since/--until/--serve")
        s = load_spec(spec)
        written = {}
        if emit_rules is not None:
            written["rules"] = emit_alert_rules(s, emit_rules)
            err.print(f"alerting rules for {s.name}: {emit_rules}")
        if emit_alertmanager is not None:
            written["alertmanager"] = emit_am(s, emit_alertmanager, webhook_url=webhook_url,
                                              key_file=webhook_key_file)
            err.print(f"Alertmanager configuration for {s.name}: {emit_alertmanager}")
        if json_out:
            print(json.dumps(written), flush=True)
        return
    if serve:
        from raypipe.api import monitor_serve

        if input is not None or last or since or until:
            from raypipe.errors import SpecError

            raise SpecError("--serve checks the newest monitor.window_s of the log; drop --input/--last/--since/--until")
        from raypipe.spec import load_spec

        s = load_spec(spec)
        url = monitor_serve(s, address=address)
        err.print(f"monitoring {s.name} every {s.monitor.interval_s:g} s over the last {s.monitor.window_s:g} s "
                  f"of the log: {url}/status")
        if json_out:
            print(json.dumps({"url": url}), flush=True)
        if not (address or s.ray.address):  # a local Ray ends with this process: keep it, as `raypipe serve` does
            from raypipe.serve.deploy import Endpoint

            Endpoint(url=url, version=0, app_name=f"{s.name}-monitor").wait()
        return
    result = monitor_api(str(spec), input, version=version, alias=alias, report=report, address=address,
                         last=last, since=since, until=until)
    reports = getattr(result, "reports", None)
    if reports is None:
        _print_monitor(result)
    else:
        err.print(f"{result.pipeline}: log window {result.start:%Y-%m-%d %H:%M:%S}..{result.end:%H:%M:%S} UTC, "
                  f"{result.rows:,} rows, {result.labels:,} labels, versions {[r.version for r in reports] or 'none'}")
        for r in reports:
            _print_monitor(r)
    summary = result.summary()
    outcome = _retrain_step(spec, result, address) if retrain else None
    if outcome is not None:
        summary["retrain"] = outcome.summary()
    if json_out:
        print(json.dumps(summary, default=str), flush=True)
    if outcome is not None and outcome.status in ("promoted", "canary"):
        return
    if outcome is not None and outcome.status in ("rejected", "rolled_back"):
        from raypipe.errors import GateFailed

        raise GateFailed(outcome.detail or [outcome.reason], version=outcome.version)
    if outcome is not None and outcome.status == "failed":
        from raypipe.errors import StageFailed

        raise StageFailed(f"retrain failed: {outcome.reason} (attempt {outcome.attempt}; the cooldown holds the next)")
    if result.alarm:
        raise DriftDetected(next(r for r in reports if r.alarm) if reports is not None else result)


def _retrain_step(spec: Path, result: Any, address: Optional[str]) -> Any:
    """``--retrain``: the trigger the window raised, and the retrain when monitor.retrain.on holds it."""
    from rich.markup import escape

    from raypipe.api import retrain as retrain_api
    from raypipe.progress import Progress

    outcome = retrain_api(str(spec), result, address=address, progress=Progress())
    if outcome is None:
        return None
    colour = {"promoted": "green", "canary": "green", "rejected": "yellow", "rolled_back": "yellow",
              "skipped": "yellow", "not_configured": "yellow"}.get(
        outcome.status, "red")
    err.print(f"retrain [{colour}]{outcome.status}[/]: {escape(outcome.reason)} (trigger: {escape(outcome.trigger)})"
              + (f" — run {outcome.run_id}" if outcome.run_id else "")
              + (f"; {outcome.endpoint} now answers with version {outcome.version}" if outcome.endpoint else ""))
    return outcome


@app.command()
def dashboard(
    spec: Path = SpecArg,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write the dashboard JSON here."),
    publish: Optional[str] = typer.Option(None, "--publish", help="Upload it to the Grafana at this URL."),
    token_env: str = typer.Option("GRAFANA_TOKEN", "--token-env", help="With --publish: the environment variable "
                                  "holding a Grafana service account token."),
    prometheus_url: str = typer.Option("http://localhost:9090", "--prometheus-url", help="With --publish: the "
                                       "Prometheus the data source points at, when Grafana has none yet."),
    folder_uid: Optional[str] = typer.Option(None, "--folder-uid", help="With --publish: the Grafana folder."),
) -> None:
    """A Grafana dashboard of the pipeline (traffic, model, data, quality, capacity), as JSON or uploaded.

    Built with grafana-foundation-sdk; never rendered by a real Grafana in raypipe's tests (its
    queries run against a real Prometheus there, its upload against Grafana's HTTP API shapes).
    """
    import os

    from raypipe.errors import SpecError
    from raypipe.monitor.dashboard import publish as publish_board, to_json
    from raypipe.spec import load_spec

    if output is None and publish is None:
        raise SpecError("give -o FILE, --publish URL or both")
    s = load_spec(spec)
    board = to_json(s)
    if output is not None:
        output.write_text(json.dumps(board, indent=2) + "\n")
        err.print(f"wrote {output}: {sum(p['type'] != 'row' for p in board['panels'])} panels for {s.name}")
    if publish is not None:
        token = os.environ.get(token_env)
        if not token:
            raise SpecError(f"--publish needs a Grafana token in the environment variable {token_env}")
        answer = publish_board(board, publish, token, prometheus_url=prometheus_url, folder_uid=folder_uid)
        dash = answer["dashboard"] or {}
        err.print(f"published to {publish}{dash.get('url', '')} (data source {answer['datasource']})", markup=False)


def _print_monitor(r: Any) -> None:
    """A table on stderr: columns by drift, then predictions, the domain classifier and performance."""
    verdict = {"ok": "[green]no drift[/]", "drift": "[red]DRIFT[/]",
               "not_enough_data": f"[yellow]not enough data[/] (fewer than {r.min_rows} valid rows: no decision)"}
    err.print(f"{r.pipeline} version {r.version}: {r.rows:,} rows ({r.invalid_rows:,} invalid) — {verdict[r.status]}")
    table = Table(title=f"drift ({r.method})")
    for col in ("column", "statistic", "value", "threshold", "drifted"):
        table.add_column(col)
    for c in sorted(r.columns.values(), key=lambda e: -e.value / e.threshold):
        table.add_row(c.column, c.statistic, f"{c.value:.4f}", f"{c.threshold:g}",
                      "—" if c.drifted is None else "[red]yes[/]" if c.drifted else "no")
    err.print(table)
    if r.prediction_drift:
        err.print("predictions: " + ", ".join(f"{k} {p['statistic']}={p['value']:.4f}"
                                              for k, p in r.prediction_drift["parts"].items())
                  + (" — [red]drifted[/]" if r.prediction_drift["drifted"] else ""))
    mv = r.multivariate
    if mv.get("auc") is not None:
        err.print(f"domain classifier ROC-AUC {mv['auc']:.3f} (threshold {mv['threshold']:g})"
                  + (" — [red]drifted[/]" if mv.get("drifted") else ""))
    perf = r.performance
    if perf.get("metrics"):
        err.print(f"performance ({perf['kind']}): " + ", ".join(f"{k}={v:.4f}" for k, v in perf["metrics"].items()
                                                                if isinstance(v, float) and k in _HEADLINE)
                  + ("" if perf.get("trustworthy", True) else f" — {perf.get('note')}"), markup=False)
    err.print(f"report: {r.report_dir}/drift.html" + (f" (copied to {r.copied_to})" if r.copied_to else ""))


_HEADLINE = ("accuracy", "f1", "roc_auc", "rmse", "mae", "r2", "silhouette", "anomaly_rate")


@app.command()
def feedback(
    spec: Path = SpecArg,
    input: str = typer.Option(..., "--input", help="Parquet or CSV file of labels: request_id (or --id-column) "
                              "and label."),
    id_column: Optional[str] = typer.Option(None, "--id-column", help="Join on this data.id_columns column "
                                            "instead of request_id."),
    label_column: str = typer.Option("label", "--label-column", help="The column holding the labels."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary as the last line."),
) -> None:
    """Store labels that arrived late, joined to the prediction log; counts unknown ids and conflicts."""
    from raypipe.api import feedback as feedback_api

    r = feedback_api(str(spec), input, id_column=id_column, label_column=label_column)
    err.print(f"{r['pipeline']}: {r['rows']} labels, {r['matched']} matched, {r['stored']} stored, "
              f"{r['unknown']} unknown, {r['conflicts']} conflicts, {r['duplicates']} duplicates")
    if r["unknown_ids"]:
        err.print(f"unknown ids (not in the prediction log; not stored): {', '.join(r['unknown_ids'])}", markup=False)
    if r["conflict_ids"]:
        err.print(f"conflicts (a different label was stored first; kept): {', '.join(r['conflict_ids'])}", markup=False)
    if json_out:
        print(json.dumps(r, default=str), flush=True)


@app.command("ingest-stream")
def ingest_stream(
    spec: Path = SpecArg,
    address: Optional[str] = AddressOpt,
    status: bool = typer.Option(False, "--status", help="Only print the running actor's counts."),
    stop: bool = typer.Option(False, "--stop", help="Land what is pending, then end the actor."),
    blocking: Optional[bool] = typer.Option(None, "--blocking/--no-blocking", help="Default: block (until Ctrl-C, "
                                            "then stop the actor) when the Ray is this command's own; return when "
                                            "it joined `raypipe up`'s Ray or a cluster."),
) -> None:
    """Start the detached actor that lands an mqtt data.source as parquet (it keeps running; --stop ends it)."""
    from raypipe.api import as_spec
    from raypipe.ingest import mqtt
    from raypipe.runtime import connect_for, joined_kept_ray

    s = as_spec(spec)
    if status or stop:
        connect_for(s, address)
        result = mqtt.stop_ingest(s) if stop else mqtt.ingest_status(s)
        print(json.dumps(result, default=str), flush=True)
        return
    mqtt.start_ingest(s, address)
    err.print(f"ingest actor {mqtt.actor_name(s)} lands {s.data.source.topics} from {s.data.source.broker} into "
              f"{s.data.source.landing}; `raypipe ingest-stream SPEC --status` shows its counts", markup=False)
    print(json.dumps(mqtt.ingest_status(s), default=str), flush=True)
    own_ray = not (address or s.ray.address or joined_kept_ray())
    if blocking if blocking is not None else own_ray:
        import signal
        import threading

        if own_ray:
            err.print("this command's own Ray ends with it: landing until Ctrl-C (start `raypipe up` first to "
                      "leave the actor running)", markup=False)
        done = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        print(json.dumps(mqtt.stop_ingest(s), default=str), flush=True)


@app.command()
def stream(
    spec: Path = SpecArg,
    source: Optional[str] = typer.Option(None, "--source", help="mqtt://host:port (default: the spec's mqtt "
                                         "data.source broker)."),
    topics: Optional[list[str]] = typer.Option(None, "--topics", help="Topic filter to score (repeat it; default: "
                                               "the spec's mqtt data.source topics)."),
    publish: str = typer.Option("{topic}/prediction", "--publish", help="Topic of each prediction; {device} and "
                                "{topic} are filled in."),
    alias: str = typer.Option("champion", "--alias"),
    key: Optional[str] = typer.Option(None, "--key", help="The field naming the device (default: the first id column)."),
    batch_messages: int = typer.Option(100, "--batch-messages", min=1),
    batch_seconds: float = typer.Option(0.2, "--batch-seconds", min=0.001),
    check_every_s: float = typer.Option(5.0, "--check-every", min=0.0, help="Seconds between reads of the alias "
                                        "(a new version is loaded when it moves)."),
    client_id: Optional[str] = typer.Option(None, "--client-id", help="The persistent session's id (default "
                                            "raypipe-stream-<pipeline>); one running scorer per id."),
) -> None:
    """Score an MQTT stream with the champion: one prediction published per message, logged for monitoring."""
    import signal

    from raypipe.api import as_spec
    from raypipe.errors import SpecError
    from raypipe.serve.stream import StreamScorer
    from raypipe.spec import MqttSource

    s = as_spec(spec)
    src = s.data.source if isinstance(s.data.source, MqttSource) else None
    broker = source or (src.broker if src else None)
    if not broker or not (topics or src):
        raise SpecError("raypipe stream: give --source mqtt://host:port and --topics TOPIC (or a spec whose "
                        "data.source is of type mqtt)")
    scorer = StreamScorer(s, broker, list(topics or src.topics), publish=publish, alias=alias, key=key,
                          id_field=src.id_field if src else None, batch_messages=batch_messages,
                          batch_seconds=batch_seconds, check_every_s=check_every_s, client_id=client_id,
                          qos=src.qos if src else 1,
                          username_env=src.username_env if src else None,
                          password_env=src.password_env if src else None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: scorer.stop())
    err.print(f"scoring {list(topics or src.topics)} from {broker} with {s.name} version {scorer.version} "
              f"({alias}); Ctrl-C stops", markup=False)
    counts = scorer.run()
    print(json.dumps(counts), flush=True)


@export_app.command("onnx")
def export_onnx(
    spec: Path = SpecArg,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: <name>-v<N>.onnx)."),
    version: Optional[int] = typer.Option(None, "--version"),
    alias: Optional[str] = typer.Option(None, "--alias", help="Export the version with this alias (default champion)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Features + model + decision of a registered version as one ONNX file (onnxruntime runs it); a
    reinforcement-learning version: its policy, observations in, the deterministic action out."""
    from raypipe.api import export as export_api

    _finish(export_api(str(spec), output=str(output) if output else None, format="onnx", version=version,
                       alias=alias), json_out)


@export_app.command("airflow")
def export_airflow(
    spec: Path = SpecArg,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="DAG file to write (default: <name>.py)."),
    schedule: str = typer.Option("@daily", "--schedule", help='Airflow schedule: a preset or cron; "none": triggered only.'),
    mode: str = typer.Option("local", "--mode", help="local: `raypipe run --only STAGE` on the worker; "
                             "ray-job: `raypipe submit --only STAGE` to a Ray cluster."),
    raypipe: Optional[str] = typer.Option(None, "--raypipe", help="The raypipe command on the workers "
                                          "(default: this interpreter's `python -m raypipe`)."),
    address: Optional[str] = typer.Option(None, "--address", help="ray-job mode: the cluster's job API, "
                                          "http://head:8265 (default: the worker's RAY_API_SERVER_ADDRESS or RAY_ADDRESS)."),
    retries: Optional[int] = typer.Option(None, "--retries", help="Airflow's task retries (default: runner.retries.count)."),
    spec_path: Optional[str] = typer.Option(None, "--spec-path", help="Where the workers read the spec "
                                            "(default: its absolute path here)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The pipeline as an Airflow 3 DAG: one task per stage, each running that stage alone; retries from
    runner.retries, the spec's sha256 in the DAG's doc. The file imports neither ray nor raypipe."""
    from dataclasses import asdict

    from raypipe.export.airflow import export_airflow as export_dag

    result = export_dag(spec, output, schedule=None if schedule.lower() in ("none", "") else schedule,
                        mode=mode, raypipe=raypipe, address=address, retries=retries,  # type: ignore[arg-type]
                        worker_spec_path=spec_path)
    _finish(asdict(result), json_out)


@export_app.command("kfp")
def export_kfp(
    spec: Path = SpecArg,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The KFP pipeline YAML to write "
                                          "(default: <name>-kfp.yaml)."),
    image: str = typer.Option("raypipe:latest", "--image", help="Image with raypipe that every task runs in."),
    mode: str = typer.Option("container", "--mode", help="container: a task per stage runs it; "
                             "rayjob: a task per stage runs it as a KubeRay RayJob."),
    spec_path: Optional[str] = typer.Option(None, "--spec-path", help="The spec's path inside the image "
                                            "(default: SPEC as given)."),
    namespace: str = typer.Option("", "--namespace", help="rayjob mode: where RayJobs are created "
                                  "(default: the task pod's namespace)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The pipeline as a Kubeflow Pipelines v2 pipeline (compiled with the kfp SDK): one task per stage,
    `raypipe run SPEC --only STAGE` in the image, or one KubeRay RayJob per stage (--mode rayjob)."""
    from raypipe.export.kfp import export_kfp as export_kfp_api

    _finish(export_kfp_api(spec, output, image=image, mode=mode, spec_in_image=spec_path, namespace=namespace),
            json_out)


EXPORT_TARGETS = ("onnx", "airflow", "kfp")


def _legacy_export(argv: list[str]) -> list[str]:
    """``raypipe export SPEC --format F ...`` (the form before export had subcommands) → ``raypipe export F SPEC ...``."""
    if len(argv) < 2 or argv[0] != "export" or argv[1] in EXPORT_TARGETS or argv[1].startswith("-"):
        return argv
    rest, target, i = [], "onnx", 1
    while i < len(argv):
        if argv[i] == "--format" and i + 1 < len(argv):
            target, i = argv[i + 1], i + 2
        elif argv[i].startswith("--format="):
            target, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return ["export", target, *rest]


@app.command()
def validate(spec: Path = SpecArg) -> None:
    """Check a spec without running anything (exit 2 when invalid)."""
    from raypipe.spec import load_spec

    s = load_spec(spec)
    out.print(f"{spec}: valid spec for pipeline {s.name!r} ({s.data.task}, model {s.model.kind})")


def _registry(spec: Path) -> tuple[Any, Any]:
    """The spec and its pipeline's registry."""
    from raypipe.api import as_spec
    from raypipe.registry import Registry

    s = as_spec(spec)
    return s, Registry.for_spec(s)


@registry_app.command("list")
def registry_list(spec: Path = SpecArg, json_out: bool = typer.Option(False, "--json")) -> None:
    """List model versions with status, key metrics and aliases."""
    s, reg = _registry(spec)
    rows = [{"version": v, **reg.info(v)} for v in reg.versions()]
    if json_out:
        print(json.dumps([{k: r[k] for k in ("version", "status", "metrics", "aliases")} for r in rows]))
        return
    table = Table(title=f"{s.name} — model versions")
    for col in ("version", "status", "kind", "metrics", "aliases", "run"):
        table.add_column(col)
    for r in rows:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in (r.get("metrics") or {}).items() if isinstance(v, float))
        table.add_row(str(r["version"]), r.get("status", "?"), r.get("kind", "?"), metrics, ",".join(r["aliases"]), r.get("run_id", ""))
    out.print(table)


@registry_app.command("show")
def registry_show(spec: Path = SpecArg, version: Optional[int] = typer.Argument(None)) -> None:
    """Everything about one version (default: the champion)."""
    _, reg = _registry(spec)
    v = reg.resolve(version=version)
    print(json.dumps({"version": v, **reg.info(v)}, indent=2, default=str))


@registry_app.command("promote")
def registry_promote(spec: Path = SpecArg, version: int = typer.Argument(...),
                     alias: str = typer.Option("champion", "--alias"), reason: str = typer.Option("manual promotion", "--reason"),
                     update_serving: bool = typer.Option(False, "--update-serving", help="Also switch the running "
                                                         "endpoint on the cluster to it, in place, without downtime."),
                     address: Optional[str] = AddressOpt) -> None:
    """Point an alias at a version (recorded in the audit log)."""
    s, reg = _registry(spec)
    reg.set_alias(alias, version, reason=reason)
    err.print(f"{s.name}: {alias} → version {version}")
    _mirror_aliases(s)
    if update_serving:
        from raypipe.serve.deploy import deploy

        endpoint = deploy(s, address=address or "auto")  # the running app's replicas reconfigure in place
        err.print(f"{s.name}: the endpoint at {endpoint.url} now serves version {endpoint.version}")


@registry_app.command("rollback")
def registry_rollback(spec: Path = SpecArg, alias: str = typer.Option("champion", "--alias"),
                      reason: str = typer.Option("manual rollback", "--reason")) -> None:
    """Point an alias back at its previous version (recorded in the audit log)."""
    s, reg = _registry(spec)
    version = reg.rollback(alias, reason=reason)
    err.print(f"{s.name}: {alias} rolled back to version {version}")
    _mirror_aliases(s)


def _mirror_aliases(s: Any) -> None:
    """With ``tracking.register_model``: move the MLflow registered model's aliases as raypipe's moved (a
    tracking failure is a warning: the registry's alias has moved)."""
    if not (s.tracking.mlflow_uri and s.tracking.register_model):
        return
    from raypipe.register.mlflow import mirror_aliases, model_name

    try:
        moved = mirror_aliases(s)
    except Exception as exc:
        err.print(f"[yellow]MLflow: the aliases of {model_name(s)!r} were not mirrored: {type(exc).__name__}: {exc}[/]")
        return
    err.print(f"MLflow: {model_name(s)} aliases " + (", ".join(f"{a} → {v}" for a, v in moved.items()) or "none"))


@data_app.command("show-reference")
def data_show_reference(spec: Path = SpecArg) -> None:
    """Print the stored reference schema of a pipeline."""
    from raypipe.api import as_spec
    from raypipe.store import Store
    from raypipe.validate.reference import load_reference

    s = as_spec(spec)
    ref = load_reference(Store(s.storage), s.name)
    if ref is None:
        raise RegistryError(f"{s.name}: no reference yet; the first run with validate.reference: first_run writes it")
    print(json.dumps(ref["schema"], indent=2))


@data_app.command("reset-reference")
def data_reset_reference(spec: Path = SpecArg) -> None:
    """Forget the reference: the next run validates again and stores a new one."""
    from raypipe.api import as_spec
    from raypipe.store import Store
    from raypipe.validate.reference import reset_reference

    s = as_spec(spec)
    existed = reset_reference(Store(s.storage), s.name)
    err.print(f"{s.name}: reference {'removed' if existed else 'did not exist'}; "
              f"the next `raypipe run {spec}` validates again and stores a new one")


@runs_app.command("list")
def runs_list(spec: Path = SpecArg) -> None:
    """Runs of a pipeline, newest first."""
    from raypipe.api import as_spec
    from raypipe.store import Store

    s = as_spec(spec)
    store = Store(s.storage)
    table = Table(title=f"{s.name} — runs")
    for col in ("run", "status", "stages", "version", "trigger"):
        table.add_column(col)
    for run_id in reversed(store.listdir("runs")):
        if not store.exists("runs", run_id, "manifest.json"):
            continue
        m = store.read_json("runs", run_id, "manifest.json")
        if m.get("pipeline") != s.name:
            continue
        stages = " ".join(f"{st['name']}:{st['status']}" for st in m["stages"])
        trigger = (m.get("trigger") or {}).get("reason", "")
        table.add_row(run_id, m.get("status", "?"), stages, str(m.get("version")), trigger)
    out.print(table)


@runs_app.command("show")
def runs_show(spec: Path = SpecArg, run_id: Optional[str] = typer.Argument(None, help="default: the newest run"),
              json_out: bool = typer.Option(False, "--json")) -> None:
    """A run's key figures: stages, metrics by split, findings, the gate verdict, the report."""
    from raypipe.api import as_spec
    from raypipe.store import Store

    s = as_spec(spec)
    store = Store(s.storage)
    runs = [r for r in store.listdir("runs") if store.exists("runs", r, "manifest.json")]
    if run_id is None:
        runs = [r for r in runs if store.read_json("runs", r, "manifest.json").get("pipeline") == s.name]
        if not runs:
            raise RegistryError(f"{s.name}: no runs under {s.storage}; run the pipeline first")
        run_id = runs[-1]
    elif run_id not in runs:
        raise RegistryError(f"run {run_id!r} does not exist; see `raypipe runs list`")
    m = store.read_json("runs", run_id, "manifest.json")
    ev = next((st for st in m["stages"] if st["name"] == "evaluate" and st["status"] in ("ran", "cached")), None)
    rel = artifact_path("evaluate", ev["fingerprint"]) if ev else None
    doc = store.read_json(rel, "metrics.json") if rel and store.is_complete(rel) else {}
    if json_out:
        print(json.dumps({"run_id": run_id, "status": m.get("status"), "version": m.get("version"),
                          "stages": m["stages"], "evaluation": doc}, default=str))
        return
    out.print(f"[bold]{s.name}[/] run {run_id}: [bold]{m.get('status')}[/]"
              + (f", version {m['version']}" if m.get("version") else "") + (f"\n{m['error']}" if m.get("error") else ""))
    out.print("stages: " + "  ".join(f"{st['name']}:{st['status']} ({st['seconds']:.1f}s)" for st in m["stages"]))
    if not doc:
        return
    sets = [(sp + (f" v{doc['champion']['version']}" if sp == "champion" else ""), doc[sp])
            for sp in ("train", "validation", "test", "champion") if doc.get(sp)]
    sets += [(f"{name} baseline (test)", b["test"]) for name, b in (doc.get("baselines") or {}).items() if "test" in b]
    table = Table(title="metrics")
    table.add_column("metric")
    for name, _ in sets:
        table.add_column(name)
    for k in sorted(key for key, v in doc["test"].items() if isinstance(v, float)):
        table.add_row(k, *[_num(m.get(k)) for _, m in sets])
    out.print(table)
    out.print(f"threshold {doc['threshold']:.4f} ({doc.get('threshold_strategy')})")
    for f in doc.get("findings", []):
        out.print(f"• {f}", markup=False)
    gate = doc["gate"]
    out.print("gate: " + ("[green]passed[/]" if gate["passed"] else "[red]NOT passed[/]"))
    for c in gate["checks"]:
        out.print(f"  {'✓' if c['passed'] else '✗'} {c['check']}: {_num(c['value'])}", markup=False)
    out.print(f"report: {store.full_uri(rel, 'report.html')}")


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}"


def _finish(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print(json.dumps(summary, default=str), flush=True)
    else:
        out.print_json(json.dumps(summary, default=str))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: maps raypipe errors to their exit codes."""
    argv = _legacy_export(list(sys.argv[1:] if argv is None else argv))
    try:
        code = app(args=argv, standalone_mode=False)  # without standalone mode, click returns typer.Exit's code
        if isinstance(code, int) and code:
            sys.exit(code)
    except RaypipeError as exc:
        err.print(f"error: {exc}", markup=False, style="bold red")
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code (2)
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        raise


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error: from click itself, or from the copy of click that typer >= 0.2x carries."""
    import click

    kinds = tuple(k for k in (click.ClickException, getattr(typer, "TyperException", None)) if k is not None)
    return isinstance(exc, kinds) and hasattr(exc, "show") and hasattr(exc, "exit_code")


if __name__ == "__main__":
    main()
