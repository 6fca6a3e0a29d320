"""Text columns (length bins, out-of-vocabulary rate against the fitted TF-IDF vocabulary) and image
columns (pixel statistics) against a reference built the way a registered version carries it."""
from __future__ import annotations

import numpy as np
import pandas as pd

from raypipe.monitor.drift import decide_column
from raypipe.monitor.reference import Reference, build_plan, vocabulary
from raypipe.monitor.window import block_counts
from raypipe.spec import DriftSection
from raypipe.validate.profile import block_profile, finish

SCHEMA = {"columns": {"review": {"type": "text"}, "img": {"type": "image", "shape": [4, 4]}}, "target": None,
          "id_columns": [], "features": {"text": ["review"], "image": ["img"]}}
WORDS = ["good", "bad", "movie", "plot", "actor", "boring", "great"]
FEATURES = {"operators": [{"kind": "text", "params": {}, "state": {"vocabulary_": {"review": WORDS}, "idf_": {}}}]}


def _frame(rng: np.random.Generator, n: int, words: list[str], brightness: float) -> pd.DataFrame:
    texts = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(n)]
    images = [np.clip(rng.normal(brightness, 20, (4, 4)), 0, 255).astype(np.uint8) for _ in range(n)]
    return pd.DataFrame({"review": texts, "img": pd.Series(images, dtype=object)})


def _plan(train: pd.DataFrame) -> dict:
    profile = finish(block_profile(train, SCHEMA))
    preds = {"task": "clustering", "classes": None, "answer": None, "score": None, "calibration": None}
    return build_plan(Reference("t", 1, SCHEMA, profile, preds, train[["review"]], {}, FEATURES, "", 0.5))


def _verdicts(plan: dict, window: pd.DataFrame) -> dict:
    doc = block_counts(window, plan)[0]
    return {c: decide_column(c, plan["columns"][c], p, doc["valid"], DriftSection(), True)
            for c, p in doc["columns"].items()}


def test_the_vocabulary_is_found_in_the_fitted_features() -> None:
    assert vocabulary(FEATURES, "review") == WORDS and vocabulary(FEATURES, "other") is None


def test_unchanged_text_and_images_do_not_drift() -> None:
    rng = np.random.default_rng(0)
    plan = _plan(_frame(rng, 3000, WORDS, 120))
    v = _verdicts(plan, _frame(rng, 2000, WORDS, 120))
    assert not v["review"]["drifted"] and v["review"]["oov_rate"] == 0.0
    assert not v["img"]["drifted"] and v["img"]["pixel_shift"] < 0.05


def test_new_words_and_brighter_images_drift() -> None:
    rng = np.random.default_rng(1)
    plan = _plan(_frame(rng, 3000, WORDS, 120))
    v = _verdicts(plan, _frame(rng, 2000, WORDS + ["refund", "broken", "scam", "late"], 170))
    assert v["review"]["drifted"] and v["review"]["oov_rate"] > 0.3
    assert any("out-of-vocabulary" in r for r in v["review"]["reasons"])
    assert v["img"]["drifted"] and v["img"]["statistic"] == "pixel_shift" and v["img"]["pixel_shift"] > 1.0
