"""Unit tests for ``raypipe.validate.profile`` and the one-pass ``checks.check_block`` (no Ray)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raypipe.rowchecks import REASON, annotate
from raypipe.validate.checks import check_block
from raypipe.validate.profile import (
    HIST_BINS,
    MAX_DISTINCT,
    QUANTILES,
    block_profile,
    count_duplicates,
    finish,
    merge_profiles,
    quantiles,
    reference_bounds,
    row_hashes,
)
from raypipe.schema import feature_columns, infer_schema

N = 20_000
SIZES = [5000, 3, 7000, 1, 2996, 5000]  # uneven blocks, some smaller than a sketch
SCHEMA = {
    "columns": {
        "id": {"type": "integer"}, "x": {"type": "number"}, "k": {"type": "integer"}, "b": {"type": "boolean"},
        "c": {"type": "string"}, "t": {"type": "text"}, "img": {"type": "image", "shape": [2, 3]},
        "y": {"type": "integer"},
    },
    "target": {"name": "y", "type": "integer", "task": "classification"},
    "id_columns": ["id"],
}


def frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(3, 1, n)
    x[rng.random(n) < 0.1] = np.nan
    x[:50] = 0.0
    return pd.DataFrame({
        "id": np.arange(n),
        "x": x,
        "k": rng.integers(-5, 6, n),
        "b": rng.random(n) < 0.3,
        "c": pd.Series(rng.choice(["a", "b", "c", "d", None], n, p=[0.4, 0.3, 0.2, 0.05, 0.05]), dtype=object),
        "t": pd.Series(rng.choice(["hello world", "", "  ", "a much longer piece of text"], n), dtype=object),
        "img": [np.full((2, 3), i % 256, dtype=np.uint8) for i in range(n)],
        "y": rng.integers(0, 2, n),
    })


def blocks(df: pd.DataFrame) -> list[pd.DataFrame]:
    edges = np.cumsum([0] + SIZES)
    return [df.iloc[a:b] for a, b in itertools.pairwise(edges)]


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return frame()


@pytest.fixture(scope="module")
def profiles(df):
    one = finish(merge_profiles([block_profile(df, SCHEMA)]))
    many = finish(merge_profiles([block_profile(b, SCHEMA) for b in blocks(df)]))
    return one, many


def test_merged_counts_equal_one_block(profiles) -> None:
    one, many = profiles
    assert many["rows"] == one["rows"] == N
    for name, p in one["columns"].items():
        q = many["columns"][name]
        for key in ("count", "nulls", "min", "max", "zeros", "distinct", "top", "values", "empty", "shape", "shapes"):
            assert q.get(key) == p.get(key), (name, key)
        for key in ("mean", "std", "pixel_mean", "pixel_std"):
            if p.get(key) is not None:
                assert q[key] == pytest.approx(p[key], rel=1e-9), (name, key)
    assert one["columns"]["x"]["nulls"] == pytest.approx(0.1 * N, rel=0.1)
    assert one["columns"]["x"]["zeros"] == 50
    assert many["columns"]["t"]["length"] == one["columns"]["t"]["length"]


def test_profile_values_are_right(df, profiles) -> None:
    _, p = profiles
    x = df["x"].dropna()
    col = p["columns"]["x"]
    assert col["count"] == len(x) and col["missing_rate"] == pytest.approx(df["x"].isna().mean())
    assert col["mean"] == pytest.approx(x.mean()) and col["std"] == pytest.approx(x.std(ddof=0))
    c = p["columns"]["c"]
    assert c["distinct"] == 4 and c["values"] == ["a", "b", "c", "d"]
    assert c["top"][0] == ["a", int((df["c"] == "a").sum())]
    t = p["columns"]["t"]
    assert t["empty"] == int(df["t"].str.strip().eq("").sum())
    assert t["length"]["max"] == len("a much longer piece of text") and t["length"]["min"] == 0
    img = p["columns"]["img"]
    pixels = np.stack(df["img"].to_list()).astype(float)
    assert img["shape"] == [2, 3] and img["pixel_mean"] == pytest.approx(pixels.mean())
    assert img["pixel_std"] == pytest.approx(pixels.std())
    assert p["columns"]["id"]["kind"] == "id" and "min" not in p["columns"]["id"]
    assert p["columns"]["b"]["mean"] == pytest.approx(df["b"].mean())


def test_merged_quantiles_within_tolerance(df, profiles) -> None:
    x = np.sort(df["x"].dropna().to_numpy())
    for prof in profiles:
        est = prof["columns"]["x"]["quantiles"]
        assert list(est) == list(QUANTILES)
        for key, q in QUANTILES.items():
            rank = np.searchsorted(x, est[key]) / len(x)
            assert abs(rank - q) < 0.01, (key, rank, q)


def test_histogram_approximates_exact_counts(df, profiles) -> None:
    _, p = profiles
    h = p["columns"]["x"]["histogram"]
    assert len(h["counts"]) == HIST_BINS and len(h["edges"]) == HIST_BINS + 1
    assert sum(h["counts"]) == p["columns"]["x"]["count"]
    exact, _ = np.histogram(df["x"].dropna(), bins=h["edges"])
    assert np.abs(np.asarray(h["counts"]) - exact).max() <= 0.01 * N


def test_merge_is_associative(df) -> None:
    parts = [block_profile(b, SCHEMA) for b in blocks(df)]
    flat = finish(merge_profiles(parts))
    nested = finish(merge_profiles([merge_profiles(parts[:2]), merge_profiles(parts[2:4]), merge_profiles(parts[4:])]))
    assert rounded(flat) == rounded(nested)


def rounded(doc):
    """Floats to 9 significant digits: merge order changes the last bits of a mean."""
    if isinstance(doc, float):
        return float(f"{doc:.9g}")
    if isinstance(doc, dict):
        return {k: rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded(v) for v in doc]
    return doc


def test_quantiles_of_small_exact_sketch() -> None:
    q = quantiles([[5, [1.0, 2.0, 3.0, 4.0, 5.0]]], {"p50": 0.5, "p0": 0.0, "p100": 1.0})
    assert q == {"p50": 3.0, "p0": 1.0, "p100": 5.0}


def test_duplicates_counted_exactly_across_blocks() -> None:
    base = frame(3000, seed=4).drop(columns=["img"])
    dup_idx = np.random.default_rng(1).choice(3000, 400, replace=False)
    data = pd.concat([base, base.iloc[dup_idx[:300]], base.iloc[dup_idx[:100]]], ignore_index=True)  # 400 copies
    data = data.sample(frac=1.0, random_state=0).reset_index(drop=True)
    parts = [data.iloc[i : i + 700] for i in range(0, len(data), 700)]
    # the same values in other dtypes: an int column as float with a null elsewhere, numbers as text
    parts[1] = parts[1].assign(k=parts[1]["k"].astype(float), x=parts[1]["x"].map(lambda v: None if pd.isna(v) else repr(v)))
    hashes = [row_hashes(p, SCHEMA) for p in parts]
    assert sum(len(h) for h in hashes) == len(data)
    assert count_duplicates(hashes) == 400  # rows - distinct rows
    assert count_duplicates([]) == 0
    prof = finish(merge_profiles([block_profile(p, SCHEMA) for p in parts]), duplicates=count_duplicates(hashes))
    assert prof["duplicates"] == 400 and prof["duplicate_fraction"] == pytest.approx(400 / len(data))


def test_images_enter_row_hashes_by_their_pixels_and_shape() -> None:
    a = pd.DataFrame({"y": [1, 1, 1, 1], "img": [np.zeros((2, 3)), np.ones((2, 3)), np.zeros((3, 2)), np.zeros((2, 3))]})
    assert count_duplicates([row_hashes(a, SCHEMA)]) == 1


def test_categorical_overflow_and_constant_columns() -> None:
    n = MAX_DISTINCT + 2000
    data = pd.DataFrame({"c": [f"v{i}" for i in range(n)], "k": 7, "x": np.arange(n, dtype=float), "y": 0})
    parts = [data.iloc[i : i + 5000] for i in range(0, n, 5000)]
    p = finish(merge_profiles([block_profile(b, SCHEMA) for b in parts]))
    assert p["columns"]["c"]["distinct"] == f"{MAX_DISTINCT}+"
    assert p["columns"]["c"]["values"] is None and len(p["columns"]["c"]["top"]) == 20
    assert set(p["constant_columns"]) == {"k", "y"}
    assert p["columns"]["k"]["constant_value"] == 7


def test_reference_bounds_count_out_of_range_and_unseen() -> None:
    ref = finish(merge_profiles([block_profile(pd.DataFrame({"x": [0.0, 10.0], "c": ["a", "b"], "k": [1, 2]}), SCHEMA)]))
    bounds = reference_bounds(ref)
    assert bounds["ranges"]["x"] == [0.0, 10.0] and bounds["values"]["c"] == ["a", "b"]
    new = pd.DataFrame({"x": [-1.0, 5.0, 11.0, np.nan], "c": ["a", "z", "z", None], "k": [1, 2, 3, 4]})
    parts = [block_profile(new.iloc[:2], SCHEMA, bounds), block_profile(new.iloc[2:], SCHEMA, bounds)]
    p = finish(merge_profiles(parts))
    assert p["columns"]["x"]["out_of_range"] == 2
    assert p["columns"]["c"]["unseen"] == 2 and p["columns"]["c"]["unseen_examples"] == ["z"]
    assert p["columns"]["k"]["out_of_range"] == 2
    assert reference_bounds(None) == {}


def test_numeric_categories_count_as_text_labels() -> None:
    schema = {"columns": {"c": {"type": "string"}}, "id_columns": []}
    a = block_profile(pd.DataFrame({"c": [1.0, 2.0, None]}), schema)
    b = block_profile(pd.DataFrame({"c": ["1", "3"]}), schema)
    p = finish(merge_profiles([a, b]))
    assert p["columns"]["c"]["top"] == [["1", 2], ["2", 1], ["3", 1]]


# --- the one pass ---------------------------------------------------------------------------------
def test_check_block_annotates_counts_profiles_and_hashes_in_one_go() -> None:
    schema = {**SCHEMA, "columns": {**SCHEMA["columns"], "x": {"type": "number", "min": 0, "max": 100},
                                    "c": {"type": "string", "values": ["a", "b"]}}}
    df = pd.DataFrame({
        "id": [1, 2, 3, 4, 5, 6],
        "x": pd.Series([1.0, "nope", 500.0, 2.0, 3.0, 3.0], dtype=object),
        "k": [1, 2, 3, 4, 5, 5], "b": [True] * 6,
        "c": ["a", "a", "a", "zz", "b", "b"], "t": ["x"] * 6,
        "img": [np.zeros((2, 3))] * 4 + [np.zeros((3, 3)), np.zeros((2, 3, 1))],
        "y": [0, 1, 0, 1, 0, 0],
    })
    out = check_block(df, schema, classes=["0", "1"], bounds=None)
    reasons = [None if pd.isna(r) else r for r in out.rows[REASON]]
    assert reasons[:5] == [None, "x: not a number: 'nope'", "x: above the schema maximum 100",
                           "c: value not among the schema's allowed values", "img: image of the wrong shape (expected 2x3)"]
    assert reasons[5] is None  # (2, 3, 1) is a (2, 3) image with one channel
    doc = out.summary
    assert doc["stats"]["rows"] == 6 and doc["stats"]["invalid"] == 4
    assert doc["stats"]["examples"]["img: image of the wrong shape (expected 2x3)"] == ["<array of shape [3, 3]>"]
    assert doc["profile"]["rows"] == 2  # only valid rows are profiled
    assert out.hashes.dtype == np.uint64 and len(out.hashes) == 2
    json.dumps(doc)  # the summary travels to the driver as JSON
    empty = check_block(df.iloc[:0].copy(), schema, classes=None, bounds=None)
    assert len(empty.rows) == 0 and empty.summary["stats"]["rows"] == 0 and len(empty.hashes) == 0


def test_annotate_schema_min_max_values_numeric() -> None:
    schema = {"columns": {"n": {"type": "integer", "min": 1, "values": [1, 2, 3]}}, "target": None}
    out = annotate(pd.DataFrame({"n": [0, 1, 4, None]}), schema)
    reasons = [None if pd.isna(r) else r for r in out[REASON]]
    assert reasons == ["n: below the schema minimum 1", None, "n: value not among the schema's allowed values", None]


# --- schema types -----------------------------------------------------------------------------------
def test_infer_schema_text_and_image_columns() -> None:
    from ray.data.extensions import ArrowTensorArray, ArrowVariableShapedTensorArray

    fixed = ArrowTensorArray.from_numpy(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    varied = ArrowVariableShapedTensorArray.from_numpy(np.array([np.zeros((2, 2)), np.zeros((3, 2))], dtype=object))
    arrow = pa.schema([("image", fixed.type), ("scan", varied.type), ("review", pa.string()), ("city", pa.string()),
                       ("n", pa.float64()), ("label", pa.string())])
    s = infer_schema(arrow, target="label", task="classification", id_columns=[], text_columns=["review"])
    assert s["columns"]["image"] == {"type": "image", "nullable": True, "shape": [8, 8, 3]}
    assert s["columns"]["scan"]["type"] == "image" and s["columns"]["scan"]["shape"] is None
    assert s["columns"]["review"]["type"] == "text"
    assert s["features"] == {"numeric": ["n"], "categorical": ["city"], "datetime": [], "text": ["review"],
                             "image": ["image", "scan"], "audio": []}
    assert feature_columns(s) == ["n", "city", "review", "image", "scan"]


def test_infer_schema_bad_text_columns() -> None:
    from raypipe.errors import DataValidationError

    arrow = pa.schema([("n", pa.float64()), ("label", pa.string())])
    with pytest.raises(DataValidationError) as info:
        infer_schema(arrow, target="label", task="classification", id_columns=[], text_columns=["n", "nope"])
    text = "\n".join(info.value.problems)
    assert "'n' is number, not text" in text and "'nope' not found" in text
