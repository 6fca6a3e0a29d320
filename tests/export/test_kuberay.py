"""KubeRay manifests: the hand-written ones in ``clusters/`` and those raypipe generates.

Checked structurally by :mod:`tests.export.kuberay_checks` (apiVersion ``ray.io/v1``, the
fields each kind requires, Ray 2.60, token auth from a Secret on every pod, entrypoints
parsed with ``shlex`` and click against the real ``raypipe`` CLI, Serve import paths that
resolve). Not against KubeRay's CRD schema: no PyPI or npm package ships it (KubeRay
publishes its CRDs in its Go module and Helm chart only), so no schema validation runs here.
No Kubernetes is needed.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raypipe.export.kuberay import rayjob_entrypoint, rayjob_manifest
from raypipe.runner import STAGE_NAMES
from tests.conftest import small_spec
from tests.export.kuberay_checks import KINDS, check_entrypoint, check_manifest

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"


def _kuberay_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(CLUSTERS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") in KINDS:
                out.append((f"{path.name}:{doc['kind']}", doc))
    return out


DOCS = _kuberay_docs()


def test_clusters_folder_has_the_kuberay_manifests() -> None:
    kinds = {name.split(":")[1] for name, _ in DOCS}
    assert {"RayJob", "RayService"} <= kinds, f"found {sorted(n for n, _ in DOCS)}"


@pytest.mark.parametrize("doc", [d for _, d in DOCS], ids=[n for n, _ in DOCS])
def test_clusters_manifest_passes_the_checks(doc: dict) -> None:
    assert check_manifest(doc) == []


@pytest.mark.parametrize("stage", [*STAGE_NAMES, None])
def test_generated_rayjob_passes_the_checks(stage: str | None) -> None:
    doc = rayjob_manifest("/app/examples/fraud_detection/pipeline.yaml", stage, image="reg/raypipe:1",
                          pipeline="Fraud_Detection", namespace="ml")
    assert check_manifest(doc) == []
    assert doc["metadata"]["name"] == f"raypipe-fraud-detection-{stage or 'run'}"
    assert doc["spec"]["entrypoint"].split()[:3] == ["raypipe", "run", "/app/examples/fraud_detection/pipeline.yaml"]
    assert ("--only" in doc["spec"]["entrypoint"]) == (stage is not None)
    assert yaml.safe_load(yaml.safe_dump(doc)) == doc  # it is what `kubectl apply` would read


def test_generated_rayservice_passes_the_checks(tmp_path: Path) -> None:
    from raypipe.serve.deploy import init_args, rayservice_manifest
    from raypipe.spec import load_spec

    spec = load_spec(small_spec(tmp_path / "store", name="t-rs", deploy={"route_prefix": "/rs"}))
    config = {"proxy_location": "EveryNode", "http_options": {"host": "127.0.0.1", "port": 8000},
              "applications": [{"name": spec.name, "route_prefix": "/rs", "import_path": "raypipe.serve.app:build_app",
                                "args": init_args(spec), "deployments": []}]}
    assert check_manifest(rayservice_manifest(spec, config, image="reg/raypipe:1")) == []


def test_the_checks_catch_what_they_should() -> None:
    """Each check fails on a manifest broken in its one way (so a passing manifest means something)."""
    good = rayjob_manifest("spec.yaml", "train", image="img", pipeline="p")

    def broken(change) -> list[str]:
        doc = yaml.safe_load(yaml.safe_dump(good))
        change(doc)
        return check_manifest(doc)

    assert broken(lambda d: d.update(apiVersion="ray.io/v1alpha1"))
    assert broken(lambda d: d["spec"].update(entrypoint="raypipe rn spec.yaml"))
    assert broken(lambda d: d["spec"].update(entrypoint="raypipe run spec.yaml --only trian"))
    assert broken(lambda d: d["spec"].update(entrypoint="raypipe run spec.yaml --no-such-flag"))
    assert broken(lambda d: d["spec"].update(entrypoint="ray job submit -- python x.py"))
    assert broken(lambda d: d["spec"].pop("shutdownAfterJobFinishes"))
    assert broken(lambda d: d["spec"]["rayClusterSpec"].update(rayVersion="2.9.0"))
    assert broken(lambda d: d["spec"]["rayClusterSpec"].pop("headGroupSpec"))
    assert broken(lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].update(replicas=5))
    assert broken(lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
                  .update(env=[]))
    assert broken(lambda d: d["spec"]["submitterPodTemplate"]["spec"]["containers"][0].update(env=[]))
    assert broken(lambda d: d["metadata"].update(name="Not_A_Name"))
    assert check_entrypoint("raypipe registry list spec.yaml") == []
    assert check_entrypoint("raypipe registry lst spec.yaml")


def test_entrypoint_quotes_paths() -> None:
    assert rayjob_entrypoint("/data/my spec.yaml", "ingest") == \
        "raypipe run '/data/my spec.yaml' --only ingest --address auto --no-serve --json"
