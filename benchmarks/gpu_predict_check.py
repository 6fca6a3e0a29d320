"""GPU check for batch inference: raypipe's Predictor with a torch model on CUDA vs on the CPU.

``raypipe predict`` with ``train.use_gpu`` gives each Ray Data actor one GPU
(``num_gpus=1``) and loads the model there (``BatchPredict(use_gpu=True)`` →
``TorchModel(device="cuda")``). Ray is not brought to the device machine (its wheel is
over one call's transfer), so this script runs the code each actor runs: the fitted
features on the CPU, the model on CUDA. For ``torch.mlp`` (tabular) and ``torch.cnn``
(32×32 images) with random weights it reports:

- the largest score difference and the share of equal decisions between CUDA and CPU;
- rows/s of the model alone and of the whole ``Predictor`` (features + model) in batches
  of 4,096, on CUDA and on all the CPU cores.

Last line: one JSON object.

    python3 benchmarks/gpu_predict_check.py [--out DIR] [--smoke]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
# raypipe/__init__ pulls in Ray and pydantic, which the device machine lacks: load the submodules only.
_pkg = types.ModuleType("raypipe")
_pkg.__path__ = [str(ROOT / "raypipe")]
sys.modules.setdefault("raypipe", _pkg)

from raypipe.model.features.pipeline import FeaturePipeline  # noqa: E402
from raypipe.model.predictor import Predictor  # noqa: E402
from raypipe.model.formats import TorchModel  # noqa: E402
from raypipe.model.zoo import build_model  # noqa: E402

BATCH = 4096


def tabular(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(56)})
    for i in range(4):
        frame[f"c{i}"] = rng.choice([f"v{k}" for k in range(8)], n)
    return frame


def images(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"img": list(rng.integers(0, 256, (n, 32, 32)).astype(np.float64))})


def rows_per_s(fn, x, repeats: int = 3) -> float:
    fn(x[:BATCH])  # warm-up (CUDA context, kernels, caches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for start in range(0, len(x), BATCH):
            fn(x[start:start + BATCH])
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def check(kind: str, frame: pd.DataFrame, fp: FeaturePipeline, params: dict, n_cpu: int, device: str) -> dict:
    torch.manual_seed(0)
    net = build_model(kind, input_dim=fp.n_features, n_outputs=3, layout=fp.layout(), params=params)
    meta = {"format": "raypipe.model/1", "kind": kind, "task": "classification", "n_outputs": 3,
            "input_dim": fp.n_features, "layout": fp.layout(), "params": params}
    schema = {"target": {"classes": ["a", "b", "c"], "type": "string"}}
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    cpu = Predictor(fp, TorchModel(meta, state, "cpu"), schema)
    gpu = Predictor(fp, TorchModel(meta, state, device), schema)
    x = fp.transform(frame)
    sample = x[:20_000]
    s_cpu, s_gpu = cpu.model.predict_scores(sample), gpu.model.predict_scores(sample)
    out = {
        "model": kind, "params": params, "features": fp.n_features,
        "max_abs_score_diff": float(np.abs(s_cpu - s_gpu).max()),
        "same_decision": float((s_cpu.argmax(1) == s_gpu.argmax(1)).mean()),
        "model_rows_per_s_cuda": rows_per_s(gpu.model.predict_scores, x),
        "model_rows_per_s_cpu": rows_per_s(cpu.model.predict_scores, x[:n_cpu]),
        "predictor_rows_per_s_cuda": rows_per_s(gpu.scores, frame),
        "predictor_rows_per_s_cpu": rows_per_s(cpu.scores, frame.iloc[:n_cpu]),
    }
    out["model_speedup"] = out["model_rows_per_s_cuda"] / out["model_rows_per_s_cpu"]
    out["predictor_speedup"] = out["predictor_rows_per_s_cuda"] / out["predictor_rows_per_s_cpu"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--smoke", action="store_true", help="no GPU: run both sides on the CPU, few rows")
    args = ap.parse_args()
    if args.smoke:
        args.rows, target, device = 8_000, "cpu", "cpu (smoke run)"
    else:
        assert torch.cuda.is_available(), "needs a CUDA GPU"
        target, device = "cuda", torch.cuda.get_device_name(0)
    table = tabular(args.rows)
    fp_tab = FeaturePipeline([f"x{i}" for i in range(56)], [f"c{i}" for i in range(4)]).fit(table.iloc[:50_000])
    imgs = images(args.rows // 4)
    fp_img = FeaturePipeline(image=["img"], image_shapes={"img": [32, 32]}).fit(imgs.iloc[:20_000])
    results = [
        check("torch.mlp", table, fp_tab, {"hidden": [1024, 1024, 512]}, args.rows // 4, target),
        check("torch.cnn", imgs, fp_img, {"channels": [32, 64, 128], "hidden": [256]}, args.rows // 40, target),
    ]
    print(f"device: {device}, torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"{'model':10} {'max |Δscore|':>13} {'same':>6} {'model cuda':>12} {'model cpu':>11} {'×':>6} "
          f"{'predictor cuda':>15} {'predictor cpu':>14} {'×':>6}")
    for r in results:
        print(f"{r['model']:10} {r['max_abs_score_diff']:13.2e} {r['same_decision']:6.4f} "
              f"{r['model_rows_per_s_cuda']:12,.0f} {r['model_rows_per_s_cpu']:11,.0f} {r['model_speedup']:6.1f} "
              f"{r['predictor_rows_per_s_cuda']:15,.0f} {r['predictor_rows_per_s_cpu']:14,.0f} "
              f"{r['predictor_speedup']:6.1f}")
    summary = {"device": device, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "results": results}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_predict_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
