"""The evaluate stage for task reinforcement: seeded episodes, baselines, champion, gate, report.

The candidate policy, the random policy, the environment's own baseline (where it has one) and
the current champion play the same ``evaluate.episodes`` seeded episodes in one Ray task
(:mod:`raypipe.evaluate.episodes`). The gate's ``min`` / ``max`` rules read the candidate's
episode metrics; ``beat_trivial_baseline`` asks for a mean return at least the random policy's;
``vs_champion`` compares with the champion on the same seeds.
"""
from __future__ import annotations

from typing import Any

from raypipe.evaluate.gate import verdict
from raypipe.stage import EvaluateOutput, StageContext, StageOutput


def run(ctx: StageContext, inputs: dict[str, StageOutput]) -> EvaluateOutput:
    import ray

    from raypipe.evaluate.episodes import evaluate_all, summary

    ctx.ray()
    spec, train = ctx.spec, inputs["train"]
    cfg = spec.evaluate
    seeds = [cfg.seed + i for i in range(cfg.episodes)]
    champion_version, champion_uri = _champion(ctx) if cfg.gate.vs_champion else (None, None)
    task = ray.remote(evaluate_all).options(num_cpus=1, name="raypipe-evaluate-episodes")
    played = ray.get(task.remote(spec.data.env.model_dump(), train.store.full_uri(train.outputs.model),
                                 champion_uri, seeds))
    test = summary(played["policy"])
    baselines: dict[str, Any] = {"trivial": {"model": "random policy", "about": "uniformly random actions",
                                             "test": summary(played["random"])}}
    if "baseline" in played:
        name = played["baseline"]["name"]
        baselines[name] = {"model": f"the environment's {name} policy", "about": "env.baseline_policy(obs)",
                           "test": summary(played["baseline"])}
    champion = {"version": champion_version, **summary(played["champion"])} if "champion" in played else None
    result = verdict(cfg.gate, spec.data.task, test, champion=champion, baselines=baselines)
    findings = _findings(test, baselines)
    history = train.read_json(train.outputs.report).get("history", [])
    doc = {
        "task": spec.data.task, "pipeline": spec.name, "run_id": ctx.run_id, "env": spec.data.env.name,
        "seeds": {"first": cfg.seed, "episodes": cfg.episodes}, "test": test, "champion": champion,
        "baselines": baselines, "findings": findings, "gate": result, "threshold": None,
        "returns": {k: v["returns"] for k, v in played.items()},
        "metrics": {k: test.get(k) for k in cfg.metrics},
    }
    ctx.artifact.write_json("metrics.json", doc)
    from raypipe.evaluate.report import write_rl_report

    write_rl_report(ctx.artifact, doc, history)
    ctx.log(f"{cfg.episodes} episodes: " + ", ".join(f"{k}={v:.4g}" for k, v in doc["metrics"].items())
            + ("" if result["passed"] else "  — gate NOT passed"))
    for name, b in baselines.items():
        ctx.log(f"baseline {name} ({b['model']}): episode_return_mean={b['test']['episode_return_mean']:.4g}")
    for f in findings:
        ctx.log(f)
    summary_out = {n: {"model": b["model"], "metrics": {k: b["test"].get(k) for k in cfg.metrics}}
                   for n, b in baselines.items()}
    return EvaluateOutput(metrics=doc["metrics"], metrics_file="metrics.json", report="report.html", gate=result,
                          threshold=0.5, baselines=summary_out, monitor_reference=None)


def _findings(test: dict[str, Any], baselines: dict[str, Any]) -> list[str]:
    out = []
    mine = test["episode_return_mean"]
    for name, b in baselines.items():
        theirs = b["test"]["episode_return_mean"]
        if mine < theirs:
            out.append(f"the policy's mean return {mine:.4g} is below the {b['model']}'s {theirs:.4g} on the same "
                       "episodes: train longer (train.timesteps) or tune the algorithm's parameters")
        else:
            out.append(f"the policy's mean return {mine:.4g} beats the {b['model']}'s {theirs:.4g} by "
                       f"{mine - theirs:.4g} on the same episodes")
    return out


def _champion(ctx: StageContext) -> tuple[int | None, str | None]:
    """The champion's version and its policy folder (checked against its manifest first)."""
    from raypipe.registry import Registry

    reg = Registry.for_spec(ctx.spec, ctx.root)
    version = reg.alias("champion")
    if version is None:
        return None, None
    reg.check_version(version)
    vs = reg.version_store(version)
    vs.verify_artifact("")
    return version, vs.full_uri("model")
