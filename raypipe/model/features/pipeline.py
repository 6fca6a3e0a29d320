"""The fitted feature pipeline: numeric → categorical → datetime → text → image → audio operators, then optional PCA.

One object serves three callers with identical output: Ray Data batches during
training and evaluation, batch inference, and single requests in a Serve replica.
Fitting is one pass over the data: every block yields mergeable statistics per
operator (counts, sums, quantile sketches, value counts, document frequencies,
pixel sums, mel-band sums) that are merged on the driver. PCA, which works on the operators'
output, takes one more pass. The fitted state is plain JSON (no pickle), stored in
the model version::

    {"format": "raypipe.features/2",
     "params": {...the constructor's keyword arguments...},
     "operators": [{"kind": "numeric" | "categorical" | "datetime" | "text" | "image" | "audio",
                    "params": {...the operator's keyword arguments...},
                    "state": {...its fitted attributes, e.g. "centers_"...}}, ...],
     "pca": null | {"kind": "pca", "params": {...}, "state": {...}},
     "feature_names": [...]}
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from raypipe.errors import ArtifactError
from raypipe.model.features.audio import AudioTransformer
from raypipe.model.features.base import Batch, Operator, num_rows
from raypipe.model.features.categorical import CategoricalEncoder
from raypipe.model.features.datetimes import DatetimeEncoder
from raypipe.model.features.image import ImageTransformer
from raypipe.model.features.numeric import NumericTransformer
from raypipe.model.features.pca import PcaReducer
from raypipe.model.features.text import TextVectorizer


FORMAT = "raypipe.features/2"
RECORDS_FAST_MAX = 1024  # lists of records up to this long skip the DataFrame (see _records_transform)
OPERATORS: dict[str, type[Operator]] = {
    op.kind: op for op in (NumericTransformer, CategoricalEncoder, DatetimeEncoder, TextVectorizer, ImageTransformer,
                           AudioTransformer)
}


class FeaturePipeline:
    """Fitted once, applied everywhere: the feature matrix (float32) of raw rows.

    Args:
        numeric: numeric (and boolean) input columns (:class:`NumericTransformer`).
        categorical: string input columns (:class:`CategoricalEncoder`).
        datetime: date/time input columns (:class:`DatetimeEncoder`); ``date_formats`` gives
            each one's format from the schema (``iso``, ``dmy``, ``mdy``).
        text: free-text input columns (:class:`TextVectorizer`).
        image: image input columns (:class:`ImageTransformer`); needs ``image_shapes``.
        impute, fill_value, clip, log, scale: numeric options (impute → clip → log → scale).
        max_categories, encode, hash_buckets, sketch_size: categorical options.
        text_method, max_features, ngram_range, min_df, lowercase: text options.
        image_normalize, image_shapes: image options (``{column: [h, w(, c)]}``).
        audio: waveform input columns (:class:`AudioTransformer`); needs ``audio_samples`` and
            ``audio_rates`` (``{column: samples}``, ``{column: Hz}``).
        audio_n_mels, audio_hop_ms, audio_win_ms, audio_normalize: log-mel options.
        pca_components, whiten: PCA on the concatenated output (None: no PCA).

    ``transform`` takes a pandas DataFrame, a dict of columns, a single record
    (a dict of scalar values; images as nested lists) or a list of records.
    """

    def __init__(
        self,
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        *,
        impute: str = "median",
        fill_value: float = 0.0,
        scale: str = "standard",
        max_categories: int = 32,
        text: Sequence[str] = (),
        image: Sequence[str] = (),
        clip: Sequence[float] | None = None,
        log: Sequence[str] = (),
        encode: str = "onehot",
        hash_buckets: int = 64,
        text_method: str = "tfidf",
        max_features: int = 2048,
        ngram_range: Sequence[int] = (1, 1),
        min_df: int = 2,
        lowercase: bool = True,
        image_normalize: str = "standard",
        image_shapes: Mapping[str, Sequence[int]] | None = None,
        pca_components: int | None = None,
        whiten: bool = False,
        datetime: Sequence[str] = (),
        date_formats: Mapping[str, str] | None = None,
        sketch_size: int = 1024,
        audio: Sequence[str] = (),
        audio_samples: Mapping[str, int] | None = None,
        audio_rates: Mapping[str, int] | None = None,
        audio_n_mels: int = 40,
        audio_hop_ms: float = 10.0,
        audio_win_ms: float = 25.0,
        audio_normalize: str = "standard",
    ) -> None:
        self.numeric, self.categorical, self.text, self.image = list(numeric), list(categorical), list(text), list(image)
        self.datetime, self.date_formats = list(datetime), {c: str(f) for c, f in (date_formats or {}).items()}
        self.sketch_size = int(sketch_size)
        self.impute, self.fill_value, self.scale = impute, fill_value, scale
        self.clip, self.log = (list(clip) if clip is not None else None), list(log)
        self.max_categories, self.encode, self.hash_buckets = max_categories, encode, hash_buckets
        self.text_method, self.max_features, self.min_df, self.lowercase = text_method, max_features, min_df, lowercase
        self.ngram_range = list(ngram_range)
        self.image_normalize = image_normalize
        self.image_shapes = {c: list(s) for c, s in (image_shapes or {}).items()}
        self.audio = list(audio)
        self.audio_samples = {c: int(v) for c, v in (audio_samples or {}).items()}
        self.audio_rates = {c: int(v) for c, v in (audio_rates or {}).items()}
        self.audio_n_mels, self.audio_hop_ms, self.audio_win_ms = int(audio_n_mels), float(audio_hop_ms), float(audio_win_ms)
        self.audio_normalize = audio_normalize
        self.pca_components, self.whiten = pca_components, whiten
        _check_disjoint({"numeric": self.numeric, "categorical": self.categorical, "datetime": self.datetime,
                         "text": self.text, "image": self.image, "audio": self.audio})
        self.operators: list[Operator] = self._build_operators()
        self.pca: PcaReducer | None = PcaReducer(pca_components, whiten=whiten) if pca_components else None

    def _build_operators(self) -> list[Operator]:
        ops: list[Operator] = []
        if self.numeric:
            ops.append(NumericTransformer(self.numeric, impute=self.impute, fill_value=self.fill_value,
                                          clip=self.clip, log=self.log, scale=self.scale))
        elif self.log:
            raise ValueError(f"log columns {self.log} are not numeric feature columns")
        if self.categorical:
            ops.append(CategoricalEncoder(self.categorical, encode=self.encode, max_categories=self.max_categories,
                                          hash_buckets=self.hash_buckets, sketch_size=self.sketch_size))
        if self.datetime:
            ops.append(DatetimeEncoder(self.datetime, formats=self.date_formats))
        if self.text:
            ops.append(TextVectorizer(self.text, method=self.text_method, max_features=self.max_features,
                                      ngram_range=self.ngram_range, min_df=self.min_df, lowercase=self.lowercase))
        if self.image:
            ops.append(ImageTransformer(self.image, shapes=self.image_shapes, normalize=self.image_normalize))
        if self.audio:
            ops.append(AudioTransformer(self.audio, samples=self.audio_samples, sample_rate=self.audio_rates,
                                        n_mels=self.audio_n_mels, hop_ms=self.audio_hop_ms, win_ms=self.audio_win_ms,
                                        normalize=self.audio_normalize))
        return ops

    @classmethod
    def from_spec(cls, features: Any, schema: dict[str, Any]) -> FeaturePipeline:
        """The (unfitted) pipeline a spec's ``features`` section asks for, on a data schema.

        ``schema["features"]`` lists the ``numeric``, ``categorical``, ``text`` and
        ``image`` columns (the last two optional); ``features.text.columns`` moves
        string columns from categorical to text; image shapes come from
        ``schema["columns"][c]["shape"]``.
        """
        cols = schema["features"]
        f = features
        categorical, text = list(cols.get("categorical", [])), list(cols.get("text", []))
        unknown = [c for c in f.text.columns if c not in categorical and c not in text]
        if unknown:
            raise ValueError(f"features.text.columns {unknown} are not string feature columns of the data "
                             f"(categorical: {categorical}, text: {text})")
        text += [c for c in f.text.columns if c not in text]
        image = list(cols.get("image", []))
        dates = list(cols.get("datetime", []))
        formats = {c: schema.get("columns", {}).get(c, {}).get("format", "iso") for c in dates}
        shapes = {}
        for c in image:
            shape = schema.get("columns", {}).get(c, {}).get("shape")
            if not shape:
                raise ValueError(f"image column {c!r} has no shape in the schema (columns[{c!r}].shape)")
            shapes[c] = list(shape)
        audio = list(cols.get("audio", []))
        samples, rates = {}, {}
        for c in audio:
            meta = schema.get("columns", {}).get(c, {})
            if not meta.get("shape") or not meta.get("sample_rate"):
                raise ValueError(f"audio column {c!r} has no length or sample rate in the schema "
                                 f"(columns[{c!r}].shape, columns[{c!r}].sample_rate)")
            samples[c], rates[c] = int(meta["shape"][0]), int(meta["sample_rate"])
        return cls(
            list(cols.get("numeric", [])), [c for c in categorical if c not in text], text=text, image=image,
            impute=f.numeric.impute, fill_value=f.numeric.fill_value, clip=f.numeric.clip, log=f.numeric.log,
            scale=f.numeric.scale,
            encode=f.categorical.encode, max_categories=f.categorical.max_categories,
            hash_buckets=f.categorical.hash_buckets, sketch_size=f.categorical.sketch_size,
            datetime=dates, date_formats=formats,
            text_method=f.text.method, max_features=f.text.max_features, ngram_range=f.text.ngram_range,
            min_df=f.text.min_df, lowercase=f.text.lowercase,
            image_normalize=f.image.normalize, image_shapes=shapes,
            pca_components=f.pca.components if f.pca else None, whiten=bool(f.pca and f.pca.whiten),
            audio=audio, audio_samples=samples, audio_rates=rates, audio_n_mels=f.audio.n_mels,
            audio_hop_ms=f.audio.hop_ms, audio_win_ms=f.audio.win_ms, audio_normalize=f.audio.normalize,
        )

    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword arguments, JSON-able."""
        return {
            "numeric": self.numeric, "categorical": self.categorical, "text": self.text, "image": self.image,
            "impute": self.impute, "fill_value": self.fill_value, "clip": self.clip, "log": self.log, "scale": self.scale,
            "encode": self.encode, "max_categories": self.max_categories, "hash_buckets": self.hash_buckets,
            "text_method": self.text_method, "max_features": self.max_features, "ngram_range": self.ngram_range,
            "min_df": self.min_df, "lowercase": self.lowercase,
            "image_normalize": self.image_normalize, "image_shapes": self.image_shapes,
            "pca_components": self.pca_components, "whiten": self.whiten,
            "datetime": self.datetime, "date_formats": self.date_formats, "sketch_size": self.sketch_size,
            "audio": self.audio, "audio_samples": self.audio_samples, "audio_rates": self.audio_rates,
            "audio_n_mels": self.audio_n_mels, "audio_hop_ms": self.audio_hop_ms, "audio_win_ms": self.audio_win_ms,
            "audio_normalize": self.audio_normalize,
        }

    @property
    def input_columns(self) -> list[str]:
        return [*self.numeric, *self.categorical, *self.datetime, *self.text, *self.image, *self.audio]

    # -- fitting ----------------------------------------------------------------------
    def partial_stats(self, batch: Batch) -> dict[str, Any]:
        """Mergeable, JSON-able statistics of one block, per operator (first pass)."""
        batch = self._as_batch(batch)
        return {op.kind: op.partial_stats(batch) for op in self.operators}

    def fit_from_stats(self, parts: list[dict[str, Any]]) -> FeaturePipeline:
        """Fit the operators from the statistics of every block. With PCA, follow with
        :meth:`pca_partial_stats` over the data and :meth:`fit_pca_from_stats`."""
        for op in self.operators:
            op.fit_from_stats([p[op.kind] for p in parts])
        return self

    def pca_partial_stats(self, batch: Batch) -> dict[str, Any]:
        """PCA statistics of one block (second pass; the operators must be fitted)."""
        if self.pca is None:
            raise RuntimeError("this pipeline has no PCA (pca_components=None)")
        return self.pca.partial_stats(self._operators_transform(self._as_batch(batch)))

    def fit_pca_from_stats(self, parts: list[dict[str, Any]]) -> FeaturePipeline:
        if self.pca is None:
            raise RuntimeError("this pipeline has no PCA (pca_components=None)")
        self.pca.fit_from_stats(parts)
        return self

    def fit(self, data: Any) -> FeaturePipeline:
        """Fit on a pandas DataFrame (or dict of columns) or a ``ray.data.Dataset``.

        A dataset is read once for the operators' statistics (one JSON document per
        block) and, only with PCA, once more for the PCA statistics.
        """
        if isinstance(data, (pd.DataFrame, Mapping)):
            self.fit_from_stats([self.partial_stats(data)])
            return self.fit_pca_from_stats([self.pca_partial_stats(data)]) if self.pca else self
        ds = data.select_columns(self.input_columns) if self.input_columns else data
        self.fit_from_stats(list(_block_stats(ds, self.partial_stats)))
        return self.fit_pca(ds) if self.pca is not None else self

    def fit_pca(self, ds: Any) -> FeaturePipeline:
        """PCA's pass over a ``ray.data.Dataset`` of the input columns, the operators already fitted."""
        merged = None
        for part in _block_stats(ds, self.pca_partial_stats):  # merged as they come: bounded memory
            merged = part if merged is None else PcaReducer.merge_stats([merged, part])
        return self.fit_pca_from_stats([merged] if merged else [])

    # -- transforming -----------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return all(op.fitted_ for op in self.operators) and (self.pca is None or self.pca.fitted_)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("FeaturePipeline must be fitted (fit or from_dict) before transform")

    @property
    def feature_names_(self) -> list[str]:
        self._check_fitted()
        if self.pca is not None:
            return self.pca.feature_names
        return [n for op in self.operators for n in op.feature_names]

    @property
    def n_features(self) -> int:
        return len(self.feature_names_)

    def layout(self) -> list[dict[str, Any]]:
        """Where each block sits in the feature matrix: ``[{kind, columns, start, stop(, shape)}]``.

        One block per image, audio and text column (an image's ``shape`` is ``[h, w, c]``,
        its pixels flattened in that order; an audio column's is ``[n_mels, frames, 1]``, its
        log-mel spectrogram band by band), one per other operator; after PCA, one
        ``pca`` block. Structured models (``torch.cnn``, ``torch.text``) read it.
        """
        self._check_fitted()
        if self.pca is not None:
            return [{"kind": "pca", "columns": self.input_columns, "start": 0, "stop": self.n_features}]
        out, start = [], 0
        for op in self.operators:
            if op.kind in ("image", "text", "audio"):
                per = op.n_features // len(op.columns) if op.kind == "text" else None
                for c in op.columns:
                    if op.kind == "audio":
                        shape = [*op.shape(c), 1]
                        width = int(np.prod(shape))
                    elif op.kind == "image":
                        shape = list(op.shapes[c]) + ([1] if len(op.shapes[c]) == 2 else [])
                        width = int(np.prod(shape))
                    else:
                        shape, width = None, (per if op.method == "hashing" else len(op.vocabulary_[c]))
                    block = {"kind": op.kind, "columns": [c], "start": start, "stop": start + width}
                    out.append(block | ({"shape": shape} if shape else {}))
                    start += width
            else:
                out.append({"kind": op.kind, "columns": list(op.columns), "start": start, "stop": start + op.n_features})
                start += op.n_features
        return out

    def transform(self, batch: Batch | list[dict[str, Any]]) -> np.ndarray:
        """The feature matrix (float32, one row per input row) of a batch."""
        self._check_fitted()
        x = self._records_transform(batch) if isinstance(batch, list) and 0 < len(batch) <= RECORDS_FAST_MAX else None
        if x is None:
            x = self._operators_transform(self._as_batch(batch))
        return self.pca.transform(x) if self.pca is not None else x

    def _records_transform(self, rows: list[Any]) -> np.ndarray | None:
        """A short list of records (a Serve batch) straight to numpy, or None for the general path.

        Building a DataFrame and per-column Series cost ~4-6 ms per call whatever the row
        count; numeric and one-hot/ordinal operators read the records directly instead
        (``Operator.transform_records``), with the same output bit for bit (tested).
        """
        if not all(type(r) is dict for r in rows):
            return None
        blocks = []
        for op in self.operators:
            block = op.transform_records(rows)
            if block is None:
                return None
            blocks.append(block)
        return np.hstack(blocks) if blocks else None

    def _operators_transform(self, batch: Batch) -> np.ndarray:
        blocks = [op.transform(batch) for op in self.operators]
        return np.hstack(blocks) if blocks else np.zeros((num_rows(batch), 0), dtype=np.float32)

    def _as_batch(self, batch: Any) -> Batch:
        """A DataFrame as is; a dict of columns (or a single record) restricted to the inputs."""
        if isinstance(batch, pd.DataFrame):
            return batch
        if isinstance(batch, list):
            return pd.DataFrame.from_records(batch)
        if not isinstance(batch, Mapping):
            raise TypeError(f"transform takes a DataFrame, a dict of columns or a record, not {type(batch).__name__}")
        missing = [c for c in self.input_columns if c not in batch]
        if missing:
            raise KeyError(f"input columns {missing} are missing")
        cols = {c: batch[c] for c in self.input_columns} or dict(batch)
        return {c: [v] for c, v in cols.items()} if cols and self._is_record(cols) else cols

    def _is_record(self, cols: Mapping[str, Any]) -> bool:
        """True when the dict holds one row's values rather than columns."""
        for c, v in cols.items():
            if c in self.audio_samples:
                if v is not None and np.ndim(v) != 1:
                    return False
            elif c in self.image_shapes:
                try:
                    if v is not None and np.ndim(v) != len(self.image_shapes[c]):
                        return False
                except ValueError:  # ragged nested lists: not one image
                    return False
            elif isinstance(v, (list, tuple, np.ndarray, pd.Series, pd.Index)):
                return False
        return True

    # -- serialisation (JSON, no pickle) --------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"format": "raypipe.features/2", "params", "operators": [...], "pca", "feature_names"}``."""
        self._check_fitted()
        return {
            "format": FORMAT,
            "params": self.get_params(),
            "operators": [op.to_dict() for op in self.operators],
            "pca": self.pca.to_dict() if self.pca is not None else None,
            "feature_names": self.feature_names_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturePipeline:
        """A fitted pipeline from :meth:`to_dict` output (``raypipe.features/2``)."""
        fmt = d.get("format") if isinstance(d, dict) else None
        if fmt != FORMAT:
            raise ArtifactError(f"not a raypipe feature pipeline in format {FORMAT} (format {fmt!r}); "
                                "a model saved by an older raypipe must be retrained")
        try:
            obj = cls._from_v2(d)
            names = obj.feature_names_
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"malformed feature pipeline ({fmt}): {e}") from e
        if names != d.get("feature_names"):
            raise ArtifactError(f"feature pipeline ({fmt}) is inconsistent: its state gives other feature names")
        return obj

    @classmethod
    def _from_v2(cls, d: dict[str, Any]) -> FeaturePipeline:
        obj = cls(**d["params"])
        kinds = [o["kind"] for o in d["operators"]]
        if kinds != [op.kind for op in obj.operators]:
            raise ValueError(f"operators {kinds} do not match the params' {[op.kind for op in obj.operators]}")
        obj.operators = [OPERATORS[o["kind"]].from_dict(o) for o in d["operators"]]
        if (d["pca"] is None) != (obj.pca is None):
            raise ValueError("pca state does not match pca_components")
        obj.pca = PcaReducer.from_dict(d["pca"]) if d["pca"] is not None else None
        return obj


def _check_disjoint(groups: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for kind, cols in groups.items():
        for c in cols:
            if c in seen:
                raise ValueError(f"column {c!r} is listed as both {seen[c]} and {kind}")
            seen[c] = kind


def _block_stats(ds: Any, stats: Any) -> Any:
    """One JSON document of statistics per block of a Ray dataset, parsed, as they arrive."""
    parts = ds.map_batches(lambda b: {"stats": [json.dumps(stats(b))]}, batch_format="pandas", batch_size=None)
    for row in parts.iter_rows():
        yield json.loads(row["stats"])
