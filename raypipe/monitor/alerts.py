"""Prometheus alerting rules and the Alertmanager route for one pipeline, from its spec.

``raypipe monitor SPEC --emit-rules rules.yml`` writes :func:`alert_rules`; ``--emit-alertmanager
alertmanager.yml`` writes :func:`alertmanager_config`, whose one receiver posts to the monitor's
webhook ``POST <route>/monitor/alerts`` (:mod:`raypipe.monitor.webhook`).

The rules read three kinds of series:

- the monitor's gauges (``raypipe monitor --serve``, :data:`raypipe.monitor.service.GAUGES`),
  labelled ``pipeline`` = the spec's name; set once per check, every ``monitor.interval_s``, so
  "N consecutive windows over the threshold" is ``min_over_time(gauge[N * interval]) > threshold``
  held ``for`` (N - 1) intervals: the smallest of the last N windows' values is over it;
- the endpoint's own ``ray_raypipe_*`` counters (:class:`raypipe.serve.app.ServeMetrics`),
  labelled ``application`` = the spec's name;
- Serve's ``ray_serve_*`` (HTTP status codes, processing latency, healthy replicas), same label.

Every alert carries ``pipeline``, ``category`` (drift, performance, slo, capacity, log, traffic,
monitor) and ``monitor.alerts.labels`` (severity by default).
"""
from __future__ import annotations

from typing import Any

CATEGORIES = ("drift", "performance", "slo", "capacity", "log", "traffic", "monitor")


def duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as ``30s``, anything finer in milliseconds."""
    ms = int(round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sel(name: str, *matchers: str, **equal: str) -> str:
    """``name{k="v",...}``: the ``equal`` matchers, then ``matchers`` as written (see :func:`_m`)."""
    return f"{name}{{{','.join([f'{k}={_quote(v)}' for k, v in equal.items()] + list(matchers))}}}"


def _m(key: str, op: str, value: str) -> str:
    return f"{key}{op}{_quote(value)}"


def alert_rules(spec: Any) -> dict[str, Any]:
    """The rules file (as data) for ``spec``: one group, ``raypipe-<pipeline>``."""
    name = spec.name
    a = spec.monitor.alerts
    drift = spec.monitor.drift
    interval = spec.monitor.interval_s
    window = duration(a.drift_windows * interval)
    held = duration((a.drift_windows - 1) * interval)
    rate = duration(a.rate_window_s)
    for_ = duration(a.for_s)
    pipe = {"pipeline": name}
    app = {"application": name}
    rules: list[dict[str, Any]] = []

    def rule(alert: str, expr: str, for_s: str, category: str, summary: str, description: str) -> None:
        r: dict[str, Any] = {"alert": alert, "expr": expr}
        if for_s != "0s":
            r["for"] = for_s
        r["labels"] = {**a.labels, "pipeline": name, "category": category}
        r["annotations"] = {"summary": summary, "description": description}
        rules.append(r)

    # -- drift: N consecutive windows over the threshold --------------------------------------
    gauge = "ray_raypipe_feature_drift"
    overridden = {col: t for col, t in sorted(drift.per_column.items())}
    not_overridden = [_m("feature", "!=", col) for col in overridden]
    exprs = [f"min_over_time({_sel(gauge, *not_overridden, **pipe)}[{window}]) > {drift.threshold:g}"]
    exprs += [f"min_over_time({_sel(gauge, **pipe, feature=col)}[{window}]) > {t:g}" for col, t in overridden.items()]
    rule("RaypipeFeatureDrift", " or ".join(exprs), held, "drift",
         "{{ $labels.feature }} drifted ({{ $labels.pipeline }} version {{ $labels.version }})",
         f"{{{{ $labels.statistic }}}} of {{{{ $labels.feature }}}} over its threshold (monitor.drift: "
         f"{drift.threshold:g}{', per_column overrides' if overridden else ''}) in {a.drift_windows} consecutive "
         "windows; the smallest of them: {{ $value }}")
    rule("RaypipePredictionDrift",
         f"min_over_time({_sel('ray_raypipe_prediction_drift', **pipe)}[{window}]) > {drift.prediction_threshold:g}",
         held, "drift", "the answers of {{ $labels.pipeline }} version {{ $labels.version }} drifted",
         f"the distribution of the version's {{{{ $labels.part }}}} moved more than {drift.prediction_threshold:g} "
         f"(monitor.drift.prediction_threshold) in {a.drift_windows} consecutive windows; the smallest: {{{{ $value }}}}")
    rule("RaypipeMultivariateDrift",
         f"min_over_time({_sel('ray_raypipe_multivariate_drift', **pipe)}[{window}]) > {drift.multivariate_auc:g}",
         held, "drift", "the inputs of {{ $labels.pipeline }} version {{ $labels.version }} drifted as a whole",
         f"a classifier told the window from the training rows with ROC-AUC over {drift.multivariate_auc:g} "
         f"(monitor.drift.multivariate_auc) in {a.drift_windows} consecutive windows; the smallest: {{{{ $value }}}}")

    # -- performance (measured with labels, estimated without) against the gate ----------------
    perf = "ray_raypipe_performance"
    exprs = [f"max_over_time({_sel(perf, **pipe, metric=m)}[{window}]) < {lo:g}"
             for m, lo in sorted(spec.evaluate.gate.min.items())]
    exprs += [f"min_over_time({_sel(perf, **pipe, metric=m)}[{window}]) > {hi:g}"
              for m, hi in sorted(spec.evaluate.gate.max.items())]
    if exprs:
        limits = [f"{m} >= {v:g}" for m, v in sorted(spec.evaluate.gate.min.items())] + \
                 [f"{m} <= {v:g}" for m, v in sorted(spec.evaluate.gate.max.items())]
        rule("RaypipePerformanceBelowGate", " or ".join(exprs), held, "performance",
             "{{ $labels.metric }} of {{ $labels.pipeline }} version {{ $labels.version }} fails the gate "
             "({{ $labels.kind }})",
             f"the window's {{{{ $labels.kind }}}} {{{{ $labels.metric }}}} missed evaluate.gate ({', '.join(limits)}) "
             f"in {a.drift_windows} consecutive windows; the best of them: {{{{ $value }}}}")

    # -- the endpoint's SLO ----------------------------------------------------------------------
    slo = spec.deploy.slo
    http = "ray_serve_num_http_requests_total"
    total = f"sum by (application) (rate({_sel(http, **app)}[{rate}]))"
    for alert, code, what in (("RaypipeServerErrors", "5..", "5xx"), ("RaypipeClientErrors", "4..", "4xx")):
        rule(alert, f"sum by (application) (rate({_sel(http, _m('status_code', '=~', code), **app)}[{rate}])) / {total} "
                    f"> {slo.max_error_rate:g}", for_, "slo",
             f"{{{{ $labels.application }}}} answers {what}",
             f"share of {what} answers over {rate}: {{{{ $value | humanizePercentage }}}} "
             f"(deploy.slo.max_error_rate {slo.max_error_rate:g})")
    bucket = "ray_serve_deployment_processing_latency_ms_bucket"
    rule("RaypipeLatencyP99",
         f"histogram_quantile(0.99, sum by (application, deployment, le) (rate({_sel(bucket, **app)}[{rate}]))) "
         f"> {slo.p99_ms:g}", for_, "slo",
         "{{ $labels.application }} p99 latency over the SLO",
         f"p99 processing time over {rate}: {{{{ $value }}}} ms (deploy.slo.p99_ms {slo.p99_ms:g})")

    # -- capacity: pinned at max_replicas ------------------------------------------------------
    auto = spec.deploy.autoscaling
    if auto.max_replicas > auto.min_replicas:  # a fixed size is always "at max"
        rule("RaypipeReplicasAtMax",
             f"sum by (application, deployment) ({_sel('ray_serve_deployment_replica_healthy', **app)}) "
             f">= {auto.max_replicas}", duration(a.replicas_at_max_minutes * 60), "capacity",
             "{{ $labels.application }} runs at max_replicas",
             f"{{{{ $value }}}} healthy replicas, deploy.autoscaling.max_replicas {auto.max_replicas}, for "
             f"{a.replicas_at_max_minutes:g} minutes: raise it or add nodes")

    # -- the prediction log and traffic --------------------------------------------------------
    rule("RaypipePredictionLogDrops",
         f"sum by (application) (increase({_sel('ray_raypipe_prediction_log_dropped_total', **app)}[{rate}])) > 0",
         "0s", "log", "{{ $labels.application }} drops prediction-log rows",
         f"{{{{ $value }}}} rows dropped in {rate}: the log's writes are slower than the answers "
         "(monitor.log.max_buffer_rows); the monitor sees fewer rows than were answered")
    quiet = duration(a.no_traffic_minutes * 60)
    rule("RaypipeNoTraffic",
         f"(sum(increase({_sel('ray_raypipe_predictions_total', _m('role', '!=', 'shadow'), **app)}[{quiet}])) "
         f"or vector(0)) == 0", quiet, "traffic", f"{name} answered nothing",
         f"no prediction answered in {a.no_traffic_minutes:g} minutes (monitor.alerts.no_traffic_minutes)")

    # -- the monitor itself --------------------------------------------------------------------
    rule("RaypipeMonitorFailing", f"{_sel('ray_raypipe_monitor_check_ok', **pipe)} == 0", duration(interval),
         "monitor", f"the monitor of {name} fails its checks",
         "the last checks raised (GET <route>/monitor/status has the error): drift is not being watched")
    return {"groups": [{"name": f"raypipe-{name}", "rules": rules}]}


def webhook_url(spec: Any) -> str:
    """Where Alertmanager posts: ``monitor.alerts.webhook_url``, else the monitor's own URL."""
    if spec.monitor.alerts.webhook_url:
        return spec.monitor.alerts.webhook_url
    host = spec.deploy.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{spec.deploy.port}{spec.route_prefix.rstrip('/')}/monitor/alerts"


def alertmanager_config(spec: Any, url: str | None = None, *, key_file: str | None = None) -> dict[str, Any]:
    """An ``alertmanager.yml`` (as data): every alert of the pipeline to its monitor's webhook.

    With ``deploy.auth`` on, the webhook wants the endpoint's API key: Alertmanager reads it from
    ``key_file`` (its ``credentials_file``; the key itself never enters the configuration).
    """
    from raypipe.errors import SpecError

    a = spec.monitor.alerts
    hook: dict[str, Any] = {"url": url or webhook_url(spec), "send_resolved": True, "max_alerts": 0}
    if spec.deploy.auth is not None:
        if not key_file:
            raise SpecError(f"deploy.auth is on: the monitor's webhook wants the API key; pass --webhook-key-file "
                            f"with a file holding the value of ${spec.deploy.auth.api_key_env}")
        hook["http_config"] = {"authorization": {"type": "Bearer", "credentials_file": key_file}}
    receiver = f"raypipe-{spec.name}"
    return {
        "route": {"receiver": receiver, "group_by": ["alertname", "pipeline"],
                  "group_wait": duration(a.group_wait_s), "group_interval": duration(a.group_interval_s),
                  "repeat_interval": duration(a.repeat_interval_s)},
        "receivers": [{"name": receiver, "webhook_configs": [hook]}],
    }


def _write(path: str, data: dict[str, Any]) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, width=1000)
    return path


def write_alert_rules(spec: Any, path: str) -> str:
    """Write :func:`alert_rules` to ``path``; returns the path."""
    return _write(path, alert_rules(spec))


def write_alertmanager_config(spec: Any, path: str, url: str | None = None, *, key_file: str | None = None) -> str:
    """Write :func:`alertmanager_config` to ``path``; returns the path."""
    return _write(path, alertmanager_config(spec, url, key_file=key_file))
