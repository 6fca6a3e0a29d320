"""The train stage for task reinforcement: an RLlib algorithm (or a Tune search over one) to a policy."""
from __future__ import annotations

from typing import Any

from raypipe.model.formats import MODEL_JSON, TORCH_WEIGHTS
from raypipe.stage import StageContext, StageOutput, TrainOutput


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> TrainOutput:
    ctx.ray()
    spec = ctx.spec
    offline, offline_rows = None, None
    if spec.data.source is not None:
        offline, offline_rows = _offline_input(ctx, inputs["validate"])
        ctx.log(f"offline data: {offline_rows['kept']:,} transitions"
                + (f" ({offline_rows['dropped_incomplete']:,} with an empty cell dropped)"
                   if offline_rows["dropped_incomplete"] else ""))
    if spec.tune is not None:
        from raypipe.train.tune.rl_search import run_rl_search

        out = run_rl_search(spec, ctx, offline)
    else:
        from raypipe.train.rl import train_rl

        out = train_rl(spec, ctx, offline)
    model = ctx.artifact.sub("model")
    model.write_bytes(TORCH_WEIGHTS, out["weights"])
    model.write_json(MODEL_JSON, out["meta"])
    history = out["history"]
    last = history[-1]
    report: dict[str, Any] = {
        "kind": spec.model.kind, "path": "rllib", "history": history, "stopped": out["stopped"],
        "iterations": last["iteration"], "timesteps": last["timesteps"], "resumed_from": out.get("resumed_from"),
        "checkpoints": out.get("checkpoints"), "offline_rows": offline_rows,
        "process": {"pid": out.get("pid")}, "tune": out.get("tune"),
    }
    ctx.artifact.write_json("train_report.json", report)
    ret = last.get("episode_return_mean")
    ctx.log(f"{spec.model.kind}: {last['iteration']} iterations, {last['timesteps']:,} steps"
            + (f", training return {ret:.1f}" if ret is not None else "") + f" ({out['stopped']})"
            + (f"; resumed from iteration {out['resumed_from']}" if out.get("resumed_from") else ""))
    tune = {k: out["tune"][k] for k in ("best_config", "best_score", "metric", "trials", "trial_epochs")} \
        if out.get("tune") else None
    return TrainOutput(model="model", report="train_report.json", kind=spec.model.kind, tune=tune)


def _offline_input(ctx: StageContext, val: StageOutput) -> tuple[str, dict[str, int]]:
    """The valid train split in RLlib's layout, written once into the stage's artifact folder."""
    import io

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from raypipe.envs.make import spaces
    from raypipe.train.offline import to_rllib

    obs_space, act_space = spaces(ctx.spec.data.env.model_dump())
    table = pads.dataset(val.store.path(val.outputs.splits["train"]), filesystem=val.store.fs,
                         format="parquet").to_table()
    import gymnasium as gym

    converted, counts = to_rllib(table, int(obs_space.shape[0]) if obs_space.shape else 1,
                                 isinstance(act_space, gym.spaces.Discrete))
    buf = io.BytesIO()
    pq.write_table(converted, buf)
    ctx.artifact.write_bytes("offline/transitions.parquet", buf.getvalue())
    return ctx.artifact.full_uri("offline"), counts
