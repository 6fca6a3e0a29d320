"""The built-in torch zoo at DEFAULT training settings vs. the linear baseline, on the bundled data.

For each data set the pipeline runs once with ``model.kind`` set to the zoo model the
data calls for (``torch.cnn`` for images, ``torch.mlp`` otherwise) and every ``train``
setting left at its default, except ``train.workers: 1`` (a 2-core machine). The linear
baseline (``LogisticRegression`` / ``Ridge`` on the same fitted features and the same
train rows) is the one the evaluate stage scores on the same test split
(``metrics.json``'s ``baselines.linear``), so both numbers come from one run.

Overrides, none of them a training setting: ``train.workers: 1``; ``deploy.enabled:
false``; ``evaluate.gate.beat_trivial_baseline: false`` (a model worse than the mean
is measured, not refused); ``evaluate.metrics`` (what the table shows); transactions
at 20,000 rows (the default is 50,000) to keep a run short; diabetes with
``split.stratify: false`` (a continuous target); digits as PNG files at their native
8x8 and resized to 24x24 by the images source.

Prints a table and, last, one JSON line.

    PYTHONPATH=. .venv/bin/python benchmarks/zoo_defaults.py [--only wine,diabetes]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

CLASSIFICATION_METRICS = ["accuracy", "f1_macro"]


def cases(png: Path) -> dict[str, dict[str, Any]]:
    """name -> (data section, model kind, metric shown, extra evaluate metrics)."""
    images = lambda size: {"source": {"type": "images", "path": str(png), "size": size}, "target": "label"}
    builtin = lambda name, **kw: {"source": {"type": "builtin", "name": name, **kw}, "target": "target"}
    return {
        "digits 8x8 (images)": {"data": images([8, 8]), "kind": "torch.cnn", "metric": "accuracy"},
        "digits 24x24 (images)": {"data": images([24, 24]), "kind": "torch.cnn", "metric": "accuracy"},
        "breast_cancer": {"data": builtin("breast_cancer"), "kind": "torch.mlp", "metric": "accuracy"},
        "wine": {"data": builtin("wine"), "kind": "torch.mlp", "metric": "accuracy"},
        "transactions (20k rows)": {"data": {**builtin("transactions", rows=20_000), "target": "is_fraud"},
                                    "kind": "torch.mlp", "metric": "roc_auc", "extra": ["roc_auc", "pr_auc"]},
        "diabetes (regression)": {"data": {**builtin("diabetes"), "task": "regression", "split": {"stratify": False}},
                                  "kind": "torch.mlp", "metric": "r2", "metrics": ["r2", "rmse"]},
    }


def run_case(name: str, case: dict[str, Any], storage: Path) -> dict[str, Any]:
    import raypipe
    from raypipe.progress import Progress

    metrics = case.get("metrics") or CLASSIFICATION_METRICS + case.get("extra", [])
    spec = {
        "name": "zoo-" + "-".join("".join(c for c in w if c.isalnum()) for w in name.split(" ")[:2]),
        "storage": str(storage),
        "data": case["data"],
        "model": {"kind": case["kind"]},
        "train": {"workers": 1},
        "evaluate": {"metrics": metrics, "gate": {"beat_trivial_baseline": False}},
        "deploy": {"enabled": False},
    }
    t0 = time.perf_counter()
    result = raypipe.run(spec, progress=Progress(quiet=True))
    seconds = time.perf_counter() - t0
    report = result.outputs["train"].store.read_json("train_report.json")
    stage_s = {s["name"]: s["seconds"] for s in result.stages}
    m = case["metric"]
    linear = (result.baselines or {}).get("linear", {}).get("metrics", {})
    return {"data": name, "model": case["kind"], "metric": m, "model_value": result.metrics.get(m),
            "linear_value": linear.get(m), "epochs_run": report.get("epochs_run"),
            "steps": _steps(report), "train_s": stage_s.get("train"), "run_s": round(seconds, 1),
            "all": {"model": result.metrics, "linear": linear}}


def _steps(report: dict[str, Any]) -> int | None:
    return report.get("steps_run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated prefixes of the data sets to run")
    ap.add_argument("--label", default="", help="a label for the JSON line (e.g. before / after)")
    args = ap.parse_args()
    from raypipe.ingest.unstructured import write_digits_png

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "digits"
        write_digits_png(png)
        chosen = {k: v for k, v in cases(png).items()
                  if not args.only or any(k.startswith(p) for p in args.only.split(","))}
        for name, case in chosen.items():
            row = run_case(name, case, Path(tmp) / "store")
            rows.append(row)
            print(f"  {name}: {row['metric']} model={row['model_value']:.4f} linear={row['linear_value']:.4f} "
                  f"epochs={row['epochs_run']} train={row['train_s']:.1f}s", flush=True)
    print()
    print("| data | model | test metric | zoo model | linear baseline | epochs run | train stage s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['data']} | {r['model']} | {r['metric']} | {r['model_value']:.4f} | {r['linear_value']:.4f} | "
              f"{r['epochs_run']} | {r['train_s']:.1f} |")
    print(json.dumps({"benchmark": "zoo_defaults", "label": args.label, "rows": rows}))


if __name__ == "__main__":
    main()
