"""The MLflow pyfunc model of a raypipe version, as MLflow "models from code".

MLflow logs this file's source with the model (``python_model=<this file>``) and runs it when
the model is loaded; nothing is pickled. The model's artifact ``version`` is a copy of the
registry version's folder (its sha256 manifest, ``model/`` with safetensors or skops weights,
``features.json``, ``schema.json``); :meth:`RaypipeVersion.load_context` loads it with raypipe's
own :meth:`raypipe.model.predictor.Predictor.from_version`, which checks every file against the
manifest and loads safe formats only (user factories only when ``model_config.trusted`` names
them, as the spec's ``model.trusted`` did). ``predict`` takes a DataFrame of raw input rows and
returns raypipe's answers (``prediction``, ``probability``/``scores`` ...) as a DataFrame.
"""
from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class RaypipeVersion(PythonModel):
    def load_context(self, context: Any) -> None:
        from raypipe.model.predictor import Predictor
        from raypipe.store import Store

        config = context.model_config or {}
        self.predictor = Predictor.from_version(Store(context.artifacts["version"]), config.get("version"),
                                                tuple(config.get("trusted") or ()))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as a signature
        import pandas as pd

        rows = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return pd.DataFrame(self.predictor.predict_records(rows))


mlflow.models.set_model(RaypipeVersion())
