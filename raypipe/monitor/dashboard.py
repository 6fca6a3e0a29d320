"""``raypipe dashboard``: a Grafana dashboard for one pipeline, built as code, and its upload.

Built with the grafana-foundation-sdk's Python builders (Grafana's own, generated from the
dashboard schema Grafana itself uses, so the JSON is the model Grafana loads; grafanalib
is hand-written and lags new panel options). Every query is PromQL over the metrics the
endpoint (:class:`raypipe.serve.app.ServeMetrics`, Serve's ``ray_serve_*``) and the monitor
(:mod:`raypipe.monitor.service`) export. :func:`queries` lists them all: the tests run each
one against a real Prometheus after real traffic, so no panel is dead. No Grafana server
ran here: the dashboard was never rendered by a real Grafana, only checked against the
SDK's model and the HTTP API's shapes.

The upload (:func:`publish`) uses ``grafana-client`` (the maintained successor of
``grafana-api``, unmaintained since 2020): the Prometheus data source first, when Grafana
has none of that name, then ``POST /api/dashboards/db`` with ``overwrite``.
"""
from __future__ import annotations

import json
from typing import Any, Optional

DATASOURCE = "raypipe-prometheus"  # the data source's name and uid the panels point at
_RATE = "[$__rate_interval]"


def _ds() -> Any:
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    return DataSourceRef(type_val="prometheus", uid=DATASOURCE)


def _panel(title: str, exprs: list[tuple[str, str]], unit: str = "short", *, width: int = 8,
           gate_min: Optional[float] = None, description: str = "") -> Any:
    """A time series panel, one target per (PromQL, legend); ``gate_min`` draws the gate's minimum as a line."""
    from grafana_foundation_sdk.builders import common, prometheus, timeseries
    from grafana_foundation_sdk.builders.dashboard import ThresholdsConfig
    from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode  # sic: the SDK's spelling
    from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

    panel = (timeseries.Panel().title(title).datasource(_ds()).unit(unit).span(width).height(8)
             .description(description))
    for i, (expr, legend) in enumerate(exprs):
        panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i)))
    if gate_min is not None:
        panel = (panel.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
                     [Threshold(value=None, color="red"), Threshold(value=gate_min, color="green")]))
                 .thresholds_style(common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE)))
    return panel


def rows(spec: Any) -> dict[str, list[Any]]:
    """Row title -> its panels (builders). ``$pipeline`` and ``$version`` are the dashboard's variables."""
    app = 'application="$pipeline"'  # Serve's series carry the application (= the pipeline's name)
    rp = 'pipeline="$pipeline",version=~"$version"'  # raypipe's own carry pipeline and version
    http = f"ray_serve_num_http_requests_total{{{app}}}"
    latency = f"ray_serve_deployment_processing_latency_ms_bucket{{{app}}}"
    gate = dict(spec.evaluate.gate.min)
    quality = [_panel(f"{m} (gate minimum {lo:g})",
                      [(f'ray_raypipe_performance{{{rp},metric="{m}"}}', "v{{version}} {{kind}}")],
                      "percentunit" if m.endswith("accuracy") else "short", gate_min=lo,
                      description="measured on labelled rows, estimated (CBPE) without labels; the line is "
                                  "evaluate.gate.min")
               for m, lo in gate.items()] or [
        _panel("performance", [(f"ray_raypipe_performance{{{rp}}}", "v{{version}} {{metric}} {{kind}}")])]
    return {
        "Traffic": [
            _panel("requests / s", [(f"sum(rate({http}{_RATE}))", "requests/s")], "reqps"),
            _panel("4xx / 5xx by code", [(f'sum by (status_code) (rate(ray_serve_num_http_requests_total'
                                          f'{{{app},status_code=~"[45].."}}{_RATE}))', "{{status_code}}")], "reqps"),
            _panel("latency p50 / p99", [
                (f"histogram_quantile(0.5, sum by (le) (rate({latency}{_RATE})))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate({latency}{_RATE})))", "p99")], "ms"),
        ],
        "Model": [
            _panel("predictions by class and version", [
                (f'sum by (version, prediction) (rate(ray_raypipe_predictions_total{{{rp},role!="shadow"}}{_RATE}))',
                 "v{{version}} {{prediction}}")], "reqps"),
            _panel("canary vs champion", [
                (f'sum by (role, version) (rate(ray_raypipe_predictions_total{{{rp},role!="shadow"}}{_RATE}))',
                 "{{role}} v{{version}}")], "reqps"),
            _panel("shadow agreement", [
                (f'sum by (version) (rate(ray_raypipe_shadow_agreement_total{{{rp},agree="true"}}{_RATE})) / '
                 f'sum by (version) (rate(ray_raypipe_shadow_agreement_total{{{rp}}}{_RATE}))', "shadow v{{version}}")],
                "percentunit"),
        ],
        "Data": [
            _panel("drift per feature", [(f"ray_raypipe_feature_drift{{{rp}}}", "v{{version}} {{feature}} ({{statistic}})")],
                   description="the monitor's newest window (raypipe monitor --serve)"),
            _panel("window rows", [(f"ray_raypipe_window_rows{{{rp}}}", "v{{version}}")]),
            _panel("quarantine rate", [
                (f"sum by (version) (ray_raypipe_window_invalid_rows{{{rp}}}) / "
                 f"sum by (version) (ray_raypipe_window_rows{{{rp}}})", "v{{version}}")], "percentunit",
                description="rows of the newest window that fail the validate stage's row checks"),
        ],
        "Quality": quality,
        "Capacity": [
            _panel("replicas", [(f"sum(ray_serve_deployment_replica_healthy{{{app}}})", "healthy replicas")]),
            _panel("queue length", [(f"sum(ray_serve_deployment_queued_queries{{{app}}})", "queued")]),
            _panel("rejected requests", [
                ('sum by (reason) (rate(ray_raypipe_rejected_requests_total{pipeline="$pipeline"}'
                 f'{_RATE}))', "{{reason}}")], "reqps"),
        ],
    }


def annotations() -> list[tuple[str, str, str]]:
    """(name, colour, PromQL) of the annotations: a series is there in the minute after the event.

    Promotion: a version newly serving as champion. Retrain: a new version arriving at the
    endpoint as the challenger (canary or shadow: the retrained version); training itself exports no metric.
    """
    def arrived(roles: str) -> str:
        q = f'max by (pipeline, version) (ray_raypipe_model_version_info{{pipeline="$pipeline",role=~"{roles}"}}'
        return f"{q}) == 1 unless {q} offset 1m) == 1"

    return [("promotions", "green", arrived("champion")), ("retrains", "blue", arrived("challenger"))]


def build(spec: Any) -> Any:
    """The dashboard (the SDK's model) of ``spec``'s pipeline."""
    from grafana_foundation_sdk.builders.dashboard import AnnotationQuery, Dashboard, QueryVariable, Row
    from grafana_foundation_sdk.models.dashboard import VariableOption, VariableRefresh

    board = (Dashboard(f"raypipe: {spec.name}").uid(f"raypipe-{spec.name}"[:40]).tags(["raypipe", spec.name])
             .refresh("30s").time("now-1h", "now").timezone("browser").editable()
             .with_variable(QueryVariable("pipeline").label("pipeline").datasource(_ds())
                            .query("label_values(ray_raypipe_model_version_info, pipeline)")
                            .current(VariableOption(text=spec.name, value=spec.name))
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED))
             .with_variable(QueryVariable("version").label("version").datasource(_ds())
                            .query('label_values(ray_raypipe_model_version_info{pipeline="$pipeline"}, version)')
                            .multi(True).include_all(True).all_value(".*")
                            .current(VariableOption(text="All", value="$__all"))
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)))
    for name, colour, expr in annotations():
        board = board.annotation(AnnotationQuery().name(name).datasource(_ds()).enable(True).icon_color(colour)
                                 .expr(expr))
    for title, panels in rows(spec).items():
        board = board.with_row(Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board.build()


def to_json(spec: Any) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return json.loads(json.dumps(build(spec), cls=JSONEncoder))


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, variable and annotation of a dashboard's JSON."""
    out = [(f"panel {p['title']!r} {t.get('refId')}", t["expr"]) for p in board.get("panels", [])
           for t in p.get("targets", []) if "expr" in t]
    out += [(f"variable {v['name']}", v["query"]) for v in board.get("templating", {}).get("list", [])
            if isinstance(v.get("query"), str)]
    out += [(f"annotation {a['name']}", a["expr"]) for a in board.get("annotations", {}).get("list", []) if a.get("expr")]
    return out


def datasource_model(prometheus_url: str) -> dict[str, Any]:
    """The data source Grafana's ``POST /api/datasources`` creates for the panels."""
    return {"name": DATASOURCE, "uid": DATASOURCE, "type": "prometheus", "access": "proxy", "url": prometheus_url,
            "isDefault": False, "jsonData": {"httpMethod": "POST"}}


def publish(board: dict[str, Any], url: str, token: str, *, prometheus_url: str, folder_uid: Optional[str] = None,
            timeout: float = 30.0) -> dict[str, Any]:
    """Upload to the Grafana at ``url`` (a service account token), creating the data source when missing.

    Returns ``{"datasource": "created" | "exists", "dashboard": <Grafana's answer>}``.
    """
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaClientError
    except ImportError:
        from raypipe.errors import SpecError

        raise SpecError("--publish needs grafana-client: pip install 'raypipe[grafana]' (with URLLIB3_NO_OVERRIDE=1 "
                        "and --no-binary urllib3-future, so that its urllib3-future leaves urllib3 alone)") from None

    api = GrafanaApi.from_url(url, credential=token, timeout=timeout)
    try:
        api.datasource.get_datasource_by_name(DATASOURCE)
        datasource = "exists"
    except GrafanaClientError as e:
        if e.status_code != 404:
            raise
        api.datasource.create_datasource(datasource_model(prometheus_url))
        datasource = "created"
    payload: dict[str, Any] = {"dashboard": {**board, "id": None}, "overwrite": True,
                               "message": "raypipe dashboard --publish"}
    if folder_uid:
        payload["folderUid"] = folder_uid
    return {"datasource": datasource, "dashboard": api.dashboard.update_dashboard(payload)}
