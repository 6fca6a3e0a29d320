"""GPU check: raypipe's per-worker training loop on CUDA, fp32 vs bf16 (and one fp16 run).

Trains ``torch.mlp`` (tabular), ``torch.cnn`` (scikit-learn's bundled digits, upscaled
to 32x32 and repeated with noise) and ``torch.text`` (a synthetic bag of words) with
the very functions each Ray Train worker runs (``raypipe.train.loop``: autocast,
gradient scaler, LR schedule; ``raypipe.model.zoo``: the models), on in-memory CUDA
tensors. Ray itself is not used: its wheel (~79 MB) is over one device call's 64 MiB
transfer, so Ray Train's worker-group wiring is tested on CPU (``tests/train``) and
only the math runs here.

Reports samples/s per model and precision (steady state: the first epoch is a warm-up),
the bf16/fp32 ratio and the validation accuracy of each run. Last line: one JSON object.

    python3 benchmarks/gpu_check.py [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
# Load raypipe.train.* without raypipe/__init__ (which pulls in Ray, pydantic, the CLI ...):
# the device machine has torch but not Ray.
_pkg = types.ModuleType("raypipe")
_pkg.__path__ = [str(ROOT / "raypipe")]
sys.modules.setdefault("raypipe", _pkg)

from raypipe.train.loop import LoopConfig, evaluate, loss_function, make_optimizer, train_epoch  # noqa: E402
from raypipe.model.zoo import build_model  # noqa: E402


def tabular(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    y = ((x @ w) + np.sin(3 * x[:, 0]) * 2 + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return x, y


def digits32(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d.images), size=n)
    img = np.kron(d.images[idx] / 16.0, np.ones((4, 4)))  # 8x8 -> 32x32
    img += 0.1 * rng.normal(size=img.shape)
    return img.reshape(n, -1).astype(np.float32), d.target[idx].astype(np.int64)


def bag_of_words(n: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    x = np.zeros((n, vocab), dtype=np.float32)
    words = rng.integers(0, vocab, size=(n, 12))
    words[:, :3] = (y[:, None] * 50 + rng.integers(0, 50, size=(n, 3)))  # class-specific words
    np.put_along_axis(x, words, 1.0, axis=1)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


CASES = {
    # name: (kind, params, data, layout(input_dim), batch size)
    "torch.mlp": ("torch.mlp", {"hidden": [1024, 1024, 512]}, lambda: tabular(1_000_000, 64), None, 4096),
    "torch.cnn": ("torch.cnn", {"channels": [32, 64, 128], "hidden": [128]}, lambda: digits32(120_000),
                  lambda d: [{"kind": "image", "start": 0, "stop": d, "shape": [32, 32, 1]}], 1024),
    "torch.text": ("torch.text", {"embed_dim": 128, "hidden": [128]}, lambda: bag_of_words(200_000, 4096),
                   lambda d: [{"kind": "text", "start": 0, "stop": d}], 2048),
    # The same models, wide enough that the matrix work, not the per-step overhead, sets the pace.
    "torch.mlp-wide": ("torch.mlp", {"hidden": [4096, 4096, 4096]}, lambda: tabular(1_000_000, 256), None, 16384),
    "torch.cnn-wide": ("torch.cnn", {"channels": [128, 256, 512], "hidden": [512]}, lambda: digits32(120_000),
                       lambda d: [{"kind": "image", "start": 0, "stop": d, "shape": [32, 32, 1]}], 4096),
}


def batches(x: torch.Tensor, y: torch.Tensor, bs: int, gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(x), device=x.device, generator=gen)
    return [(x[order[i:i + bs]], y[order[i:i + bs]]) for i in range(0, len(x), bs)]


def run(name: str, precision: str, data: tuple[np.ndarray, np.ndarray], epochs: int, device: torch.device) -> dict:
    kind, params, _, layout, bs = CASES[name]
    x, y = data
    n_val = len(x) // 10
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    (xv, yv), (xtr, ytr) = (xt[:n_val], yt[:n_val]), (xt[n_val:], yt[n_val:])
    torch.manual_seed(0)
    n_out = int(y.max()) + 1
    model = build_model(kind, input_dim=x.shape[1], n_outputs=n_out, layout=layout(x.shape[1]) if layout else None,
                        params=params).to(device)
    cfg = LoopConfig(task="classification", n_outputs=n_out, epochs=epochs + 1, lr=1e-3, precision=precision, lr_schedule="cosine")
    optim, sched, scaler = make_optimizer(model, cfg)
    loss_fn = loss_function(cfg, device)
    gen = torch.Generator(device=device).manual_seed(0)
    times = []
    for _epoch in range(epochs + 1):
        _sync(device)
        t0 = time.perf_counter()
        loss_sum, n = train_epoch(model, batches(xtr, ytr, bs, gen), optim, scaler, loss_fn, cfg, device)
        _sync(device)
        times.append(time.perf_counter() - t0)
        sched.step()
    vloss, correct, nv = evaluate(model, batches(xv, yv, bs, gen), loss_fn, cfg, device)[:3]
    steady = sum(times[1:])
    return {"model": name, "precision": precision, "rows": len(xtr), "batch_size": bs, "epochs_timed": epochs,
            "samples_per_s": round(len(xtr) * epochs / steady), "warmup_epoch_s": round(times[0], 3),
            "epoch_s": round(steady / epochs, 3), "train_loss": round(loss_sum / n, 4),
            "val_accuracy": round(correct / nv, 4), "val_loss": round(vloss / nv, 4),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny data: check the script itself (no figures)")
    args = ap.parse_args()
    if args.smoke:
        device = torch.device("cpu")
        for name, (kind, params, data, layout, bs) in list(CASES.items()):
            x, y = data()
            CASES[name] = (kind, params, lambda x=x, y=y: (x[:3000], y[:3000]), layout, 256)
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device: run this on a GPU machine (or --smoke on CPU)")
    else:
        device = torch.device("cuda")
    info = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (smoke)",
            "torch": torch.__version__, "cuda": torch.version.cuda}
    print(info, flush=True)
    rows = []
    for name in args.cases:
        data = CASES[name][2]()
        for precision in ("fp32", "bf16"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rows.append(run(name, precision, data, args.epochs, device))
            print(rows[-1], flush=True)
    fp16 = []
    if device.type == "cuda":  # the GradScaler path, once (CPU autocast has no fp16)
        fp16 = [run("torch.mlp", "fp16", CASES["torch.mlp"][2](), 1, device)]
        print(fp16[0], flush=True)
    print(f"\n{'model':15s} {'precision':9s} {'samples/s':>11s} {'epoch s':>8s} {'val acc':>8s}")
    for r in rows + fp16:
        print(f"{r['model']:15s} {r['precision']:9s} {r['samples_per_s']:>11,d} {r['epoch_s']:>8.3f} {r['val_accuracy']:>8.4f}")
    ratios = {}
    for name in args.cases:
        a, b = (next(r for r in rows if r["model"] == name and r["precision"] == p) for p in ("fp32", "bf16"))
        ratios[name] = round(b["samples_per_s"] / a["samples_per_s"], 2)
    print("bf16 / fp32 samples/s:", ratios)
    out = {**info, "runs": rows + fp16, "bf16_over_fp32": ratios}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "gpu_check.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
