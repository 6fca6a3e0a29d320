"""The closed loop, end to end, on a local Ray: serve → log → late labels → drift → retrain → gate → promote → swap.

    make loop        (or: .venv/bin/python examples/monitoring_loop/loop.py [--out DIR])

1. Train and serve v1 (pipeline.yaml beside this file: the built-in card transactions).
2. Traffic at ``drift: 0``; the labels arrive a few seconds later through ``POST /feedback``.
   The log window of that traffic is checked: no drift.
3. Traffic at ``drift: 0.6`` (amounts, merchants, countries, hours and devices shift) and
   ``concept: 1`` (a new fraud ring: many small card-not-present mobile payments at gaming and
   online shops), labels late again. The window is checked: drift. ``monitor.retrain`` is on for
   drift, so the pipeline runs on the logged requests that received labels, the candidate is
   gated against v1 on that fresh test split, promoted, and swapped into the running endpoint,
   while clients keep sending requests.
4. The console shows each step; the window reports (``drift.html``) and the audit trail are
   written to ``--out`` (default ``./monitoring-loop-out``), where the demo's storage is made
   anew on every run (``--storage`` to choose another); ``--json`` prints a summary last.

Every number comes from this run; nothing is precomputed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

HERE = Path(__file__).resolve().parent
console = Console(stderr=True)


def _rows(n: int, seed: int, drift: float, concept: float = 0.0) -> tuple[list[dict[str, Any]], list[int]]:
    """Request rows (inputs only, JSON-ready) and their labels, from the built-in generator."""
    from raypipe.ingest.builtin.transactions import generate_transactions

    df = generate_transactions(n, seed=seed, drift=drift, concept=concept)
    labels = df.pop("is_fraud").astype(int).tolist()
    return json.loads(df.to_json(orient="records", date_format="iso")), labels


def _traffic(url: str, rows: list[dict[str, Any]], labels: list[int], tag: str, batch: int = 50,
             label_delay_s: float = 3.0) -> int:
    """Send ``rows`` as lists of ``batch`` rows, then (late) their labels by request id; requests answered."""
    sent: list[tuple[str, int, int]] = []  # (request id, first row, rows)
    with httpx.Client(timeout=60) as http:
        for k in range(0, len(rows), batch):
            rid = f"{tag}-{k // batch:05d}"
            r = http.post(f"{url}/predict", json=rows[k:k + batch], headers={"X-Request-ID": rid})
            r.raise_for_status()
            sent.append((rid, k, len(rows[k:k + batch])))
        time.sleep(label_delay_s)  # labels come later: by then the replica has written its log rows
        for rid, k, n in sent:
            body = [{"request_id": f"{rid}:{i}", "label": labels[k + i]} for i in range(n)]
            r = http.post(f"{url}/feedback", json=body)
            r.raise_for_status()
    return len(sent)


class Load:
    """Clients sending single rows back to back (the traffic that must not notice the swap)."""

    def __init__(self, url: str, rows: list[dict[str, Any]], clients: int = 2) -> None:
        self.url, self.rows = url, rows
        self.stop = threading.Event()
        self.answers: list[tuple[float, int, Any]] = []
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, i: int) -> None:
        with httpx.Client(timeout=30) as http:
            n = i
            while not self.stop.is_set():
                try:
                    r = http.post(f"{self.url}/predict", json=self.rows[n % len(self.rows)])
                    self.answers.append((time.time(), r.status_code, r.json().get("version") if r.is_success else None))
                except httpx.HTTPError as e:
                    self.answers.append((time.time(), -1, repr(e)))
                n += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(HERE / "pipeline.yaml"))
    ap.add_argument("--out", default="monitoring-loop-out")
    ap.add_argument("--calm-rows", type=int, default=2000)
    ap.add_argument("--drift-rows", type=int, default=6000)
    ap.add_argument("--drift", type=float, default=0.6)
    ap.add_argument("--concept", type=float, default=1.0, help="how far the fraud rule moves (0: inputs only; "
                    "then the champion usually holds and the gate rejects the candidate)")
    ap.add_argument("--storage", default=None, help="override the spec's storage (a fresh folder per run)")
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--address", default=None)
    ap.add_argument("--keep-serving", action="store_true", help="leave the endpoint running (a cluster)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import yaml

    import raypipe
    from raypipe.progress import Progress
    from raypipe.registry import Registry

    data = yaml.safe_load(Path(args.spec).read_text())
    out = Path(args.out)
    if args.storage:
        data["storage"] = args.storage
    else:  # the demo starts from nothing each time: its storage lives in --out and is made anew
        shutil.rmtree(out / "store", ignore_errors=True)
        data["storage"] = str((out / "store").resolve())
    if args.port:
        data["deploy"]["port"] = args.port
    spec = raypipe.load_spec(data)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"pipeline": spec.name}

    console.rule("[bold]1. train and serve v1")
    first = raypipe.run(spec, address=args.address, progress=Progress())
    ep = raypipe.serve(spec, address=args.address)
    console.print(f"v{first.version} is champion, serving at {ep.url}")
    summary["v1"] = first.version

    console.rule("[bold]2. traffic at drift 0, labels late through /feedback")
    t0 = datetime.now(timezone.utc)
    rows, labels = _rows(args.calm_rows, seed=101, drift=0.0)
    n = _traffic(ep.url, rows, labels, "calm")
    t1 = datetime.now(timezone.utc)
    calm = raypipe.monitor(spec, since=t0, until=t1, address=args.address, report=out / "window-calm")
    console.print(f"{n} requests, {calm.rows:,} logged rows, {calm.labels:,} labels: [bold]{calm.status}[/]")
    summary["calm"] = {"status": calm.status, "rows": calm.rows, "labels": calm.labels}

    console.rule(f"[bold]3. traffic at drift {args.drift:g}, concept {args.concept:g}; the monitor checks the "
                 "window and retrains")
    rows, labels = _rows(args.drift_rows, seed=202, drift=args.drift, concept=args.concept)
    n = _traffic(ep.url, rows, labels, "shifted")
    t2 = datetime.now(timezone.utc)
    shifted = raypipe.monitor(spec, since=t1, until=t2, address=args.address, report=out / "window-shifted")
    drifted = sorted({c for r in shifted.reports for c in r.drifted})
    console.print(f"{n} requests, {shifted.rows:,} logged rows, {shifted.labels:,} labels: [bold]{shifted.status}[/]"
                  + (f" — drifted: {', '.join(drifted)}" if drifted else ""))
    summary["shifted"] = {"status": shifted.status, "rows": shifted.rows, "labels": shifted.labels,
                          "drifted": drifted}
    single, _ = _rows(200, seed=303, drift=args.drift)
    with Load(ep.url, single) as load:
        outcome = raypipe.retrain(spec, shifted, address=args.address, progress=Progress())
        time.sleep(2.0)  # a moment of traffic after the swap
    swap_at = time.time()
    if outcome is None:
        console.print("[yellow]no trigger[/]: nothing to retrain")
        summary["retrain"] = None
    else:
        console.print(f"retrain [bold]{outcome.status}[/]: {outcome.reason}")
        console.print(f"trigger: {outcome.trigger}")
        summary["retrain"] = outcome.summary()
    failed = [a for a in load.answers if a[1] != 200]
    after = [a[2] for a in load.answers if a[0] > swap_at - 1.0 and a[1] == 200]
    console.print(f"{len(load.answers):,} requests during the retrain and swap, {len(failed)} failed; "
                  f"the last ones answered by version {sorted(set(after)) or '-'}")
    summary["load"] = {"requests": len(load.answers), "failed": len(failed), "last_versions": sorted(set(after))}
    final = httpx.get(f"{ep.url}/healthz", timeout=30).json()["version"]
    summary["serving"] = final

    console.rule("[bold]4. the record")
    reg = Registry(spec.storage, spec.name)
    audit = sorted(reg.audit_log(), key=lambda e: e["at"])
    (out / "audit.json").write_text(json.dumps(audit, indent=2, default=str))
    for e in audit:
        what = (f"{e['verdict']} v{e['candidate']} (champion was v{e['previous']}, run {e['run_id']})"
                if e.get("action") == "retrain" else f"{e.get('alias')} v{e.get('version')} (was {e.get('previous')})")
        console.print(f"{e['at']}  {e.get('action'):8} {what}: {e.get('reason', '')}", markup=False, highlight=False)
    console.print(f"endpoint {ep.url} answers with version {final}; reports in {out}/")
    summary["out"] = str(out)
    if not (args.keep_serving or args.address or spec.ray.address):
        from raypipe.serve.deploy import shutdown

        shutdown()
    if args.json:
        print(json.dumps(summary, default=str), flush=True)
    return summary


if __name__ == "__main__":
    result = main(sys.argv[1:])
    ok = (result.get("retrain") or {}).get("status") == "promoted" and result["load"]["failed"] == 0
    sys.exit(0 if ok else 1)
