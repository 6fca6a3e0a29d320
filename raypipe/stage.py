"""The stage contract: ``run(ctx: StageContext, inputs) -> <Stage>Output``, and where artifacts live.

``inputs`` holds every earlier stage's :class:`StageOutput` (its artifact folder and its typed
outputs, saved as ``outputs.json``); a stage writes only into ``ctx.artifact``. State outside
the pipeline that a stage reads is digested by its ``StageDef.externals`` function and folded
into its fingerprint by the runner.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Ray workers import this module for SPLITS: keep it light
    from raypipe.progress import Progress
    from raypipe.spec import Spec
    from raypipe.store import Store

SPLITS = ("train", "validation", "test")
OUTPUTS_FILE = "outputs.json"


def artifact_path(stage: str, fingerprint: str) -> str:
    """Where a stage's artifact with this fingerprint lives, relative to the storage root."""
    return f"stages/{stage}/{fingerprint[:20]}"


@dataclass(frozen=True)
class StageDef:
    """A stage as the runner sees it: its spec sections, ``"module:function"`` of its ``run``, the package
    whose code closure is in its fingerprint, and ``externals``, the ``"module:function"`` digesting outside state."""

    name: str
    sections: tuple[str, ...]
    func: str
    externals: str | None = None

    @property
    def package(self) -> str:
        """The package of the stage's ``run`` (``raypipe.ingest`` for ``raypipe.ingest.stage:run``)."""
        return self.func.split(":")[0].rsplit(".", 1)[0]


_SAID_NO_RAY: list[bool] = []  # the "without Ray" note is printed once per process


@dataclass
class StageContext:
    """What a stage gets besides its inputs."""

    spec: Spec
    root: Store
    artifact: Store
    run_id: str
    fingerprint: str
    data_fingerprint: str
    progress: Progress
    address: str | None = None
    forced: bool = False
    base_fingerprint: str = ""  # the fingerprint without the external state's digest
    external: str = ""  # the digest of the external state this run of the stage saw
    trigger: dict[str, Any] | None = None  # why the run started, when not by hand (a retrain: kind, reason, parent)
    run_key: str | None = None  # an orchestrator's run id: the stages of one run, in separate processes, share it

    @property
    def tracking_id(self) -> str:
        """Whose MLflow run this stage logs to: the orchestrator's run (``--run-key``) when there is one, so that
        train and register in two processes fill one MLflow run; else this raypipe run's id."""
        return self.run_key or self.run_id

    def ray(self, small: bool = False) -> None:
        """Connect to Ray on first use: a fully cached run never starts it; nor does a stage whose work is
        ``small`` and runs in this process without Ray (:func:`raypipe.runtime.driver_without_ray`)."""
        from raypipe.runtime import connect_for, driver_without_ray

        if small and driver_without_ray(self.spec, self.address):
            if not _SAID_NO_RAY:
                _SAID_NO_RAY.append(True)
                self.log("small data: the work runs in this process, without starting Ray (ray.small_data)")
            return
        connect_for(self.spec, self.address)

    def log(self, msg: str) -> None:
        self.progress.detail(msg)


class Outputs:
    """Base of the per-stage output dataclasses: plain JSON in ``outputs.json``."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Any:
        return cls(**doc)


@dataclass
class IngestOutput(Outputs):
    splits: dict[str, str]  # split -> folder of parquet files (splits with rows only)
    rows: dict[str, int]  # exact rows per split
    input_rows: int
    files: dict[str, int] = dataclasses.field(default_factory=dict)  # file sources: read, skipped_{name,empty,bad}
    skipped_files: list[dict[str, str]] = dataclasses.field(default_factory=list)  # {file, reason, kind}, first 100


@dataclass
class ValidateOutput(Outputs):
    schema: str
    profile: str
    report: str
    report_html: str
    splits: dict[str, str]  # split -> folder of its valid rows
    counts: dict[str, dict[str, int]]  # split -> {"input", "valid", "quarantined"}
    quarantined: int
    warnings: list[str]
    reference: str  # off | checked | written | not written


@dataclass
class FeaturesOutput(Outputs):
    features: str  # the fitted FeaturePipeline (JSON)
    n_features: int


@dataclass
class TrainOutput(Outputs):
    model: str  # folder: model.json + safetensors or skops
    report: str
    kind: str
    ddp: dict[str, Any] | None = None
    tune: dict[str, Any] | None = None


@dataclass
class EvaluateOutput(Outputs):
    metrics: dict[str, Any]
    metrics_file: str
    report: str
    gate: dict[str, Any]
    threshold: float
    baselines: dict[str, Any] | None = None  # trivial / linear: their evaluate.metrics on test (supervised tasks)
    monitor_reference: str | None = None  # the test split's prediction distribution and the score calibration


@dataclass
class RegisterOutput(Outputs):
    version: int
    status: str
    alias: str | None
    gate_failures: list[str]
    tracking: dict[str, Any] | None = None


@dataclass
class StageOutput:
    """What a finished stage hands on: its artifact folder and its typed outputs."""

    name: str
    fingerprint: str
    store: Store
    outputs: Any
    base_fingerprint: str = ""
    external: str = ""

    def read_json(self, rel: str) -> Any:
        return self.store.read_json(rel)

    def read_bytes(self, rel: str) -> bytes:
        return self.store.read_bytes(rel)


OUTPUT_TYPES: dict[str, type[Outputs]] = {
    "ingest": IngestOutput, "validate": ValidateOutput, "features": FeaturesOutput, "train": TrainOutput,
    "evaluate": EvaluateOutput, "register": RegisterOutput,
}
