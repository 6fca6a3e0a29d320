"""drift.html and its pictures from a window's counts (no Ray): sorted table, a plot per drifted column, escaping."""
from __future__ import annotations

from raypipe.ingest.builtin.transactions import generate_transactions
from raypipe.monitor.drift import decide_column
from raypipe.monitor.report import write_report
from raypipe.monitor.window import block_counts
from raypipe.spec import DriftSection
from raypipe.store import Store
from tests.monitor.helpers import reference_plan


def test_the_page_sorts_columns_by_drift_and_draws_the_drifted_ones(tmp_path) -> None:
    plan = reference_plan(generate_transactions(8000, seed=1))
    window = generate_transactions(3000, seed=2, drift=0.6)
    window.loc[:5, "country"] = "<script>x</script>"  # an unseen category a person typed: escaped on the page
    doc = block_counts(window, plan)[0]
    cfg = DriftSection()
    columns = {c: decide_column(c, plan["columns"][c], p, doc["valid"], cfg, True) for c, p in doc["columns"].items()}
    report = {"pipeline": "t", "version": 3, "window_id": "w1", "input": "x.csv", "rows": 3000, "valid_rows": 3000,
              "invalid_rows": 0, "method": "psi", "status": "drift", "min_rows": 1000,
              "drifted": [c for c, e in columns.items() if e["drifted"]], "columns": columns,
              "prediction_drift": None, "multivariate": {"auc": 0.71, "threshold": 0.6, "top_features": []},
              "performance": {"kind": "none"}}
    store = Store(str(tmp_path))
    plots = write_report(store, report, plan, doc)
    html = (tmp_path / "drift.html").read_text()
    assert "avg_amount_30d" in report["drifted"] and "plots/avg_amount_30d.png" in plots
    assert (tmp_path / "plots" / "avg_amount_30d.png").read_bytes()[:4] == b"\x89PNG"
    assert len(plots) == len(report["drifted"])
    order = [c for c in sorted(columns, key=lambda c: -columns[c]["value"] / columns[c]["threshold"])]
    positions = [html.index(f'<td class="l">{c}</td>') for c in order]
    assert positions == sorted(positions)  # the table is sorted by drift
    assert "<script>x</script>" not in html and "DRIFT" in html and "0.71" in html
