"""The torch model zoo: each kind's shapes, what it reads from the layout, and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raypipe.errors import SpecError
from raypipe.model.features.pipeline import FeaturePipeline
from raypipe.store import Store
from raypipe.model.formats import TorchModel, load_model, model_meta, save_model
from raypipe.model.zoo import build_model, check_layout

IMAGE = [{"kind": "numeric", "start": 0, "stop": 2}, {"kind": "image", "start": 2, "stop": 66, "shape": [8, 8, 1]}]
TEXT = [{"kind": "numeric", "start": 0, "stop": 2}, {"kind": "text", "start": 2, "stop": 42}]


def test_mlp_default_and_regression_head() -> None:
    net = build_model("torch.mlp", input_dim=5, n_outputs=1, params={"hidden": [4]})
    assert net(torch.randn(3, 5)).shape == (3, 1)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [4, 1]


def test_cnn_sees_the_image_as_an_image_and_the_other_features() -> None:
    torch.manual_seed(0)
    net = build_model("torch.cnn", input_dim=66, n_outputs=10, layout=IMAGE, params={"channels": [4, 8]}).eval()
    x = torch.randn(4, 66)
    out = net(x)
    assert out.shape == (4, 10)
    convs = [m for m in net.convs if isinstance(m, torch.nn.Conv2d)]
    assert [c.in_channels for c in convs] == [1, 4] and [c.out_channels for c in convs] == [4, 8]
    for col in (0, 2 + 27):  # a numeric column and one pixel both change the output
        y = x.clone()
        y[:, col] += 1.0
        assert not torch.allclose(net(y), out)


def test_cnn_pools_to_a_grid_that_keeps_where_strokes_are_and_old_models_load_as_trained(tmp_path: Path) -> None:
    from raypipe.model.zoo import CNN_POOL, TRAIN_PARAMS

    big = [{"kind": "image", "start": 0, "stop": 24 * 24, "shape": [24, 24, 1]}]
    net = build_model("torch.cnn", input_dim=576, n_outputs=10, layout=big, params={"channels": [4, 8], "pool": 4})
    assert net.head[0].in_features == 8 * 4 * 4  # 24 -> 12 -> 6, pooled to 4x4
    small = build_model("torch.cnn", input_dim=66, n_outputs=10, layout=IMAGE, params={"channels": [4, 8], "pool": 4})
    assert small.head[0].in_features == 8 * 2 * 2 + 2  # 8 -> 4 -> 2: the grid is at most the map
    # The global pool ignores where in the image a pattern is; the grid does not.
    torch.manual_seed(0)
    flat = build_model("torch.cnn", input_dim=576, n_outputs=10, layout=big, params={"channels": [4], "pool": 1}).eval()
    grid = build_model("torch.cnn", input_dim=576, n_outputs=10, layout=big, params={"channels": [4], "pool": 4}).eval()
    left, right = torch.zeros(1, 24, 24), torch.zeros(1, 24, 24)
    left[0, 4:8, 2:6], right[0, 4:8, 16:20] = 1.0, 1.0  # the same stroke, moved within the pooled map
    a, b = left.reshape(1, -1), right.reshape(1, -1)
    assert torch.allclose(flat(a), flat(b), atol=1e-6) and not torch.allclose(grid(a), grid(b), atol=1e-4)
    # A newly trained torch.cnn stores its pool; a model.json from before stores none and keeps the global pool.
    assert TRAIN_PARAMS["torch.cnn"] == {"pool": CNN_POOL}
    old = build_model("torch.cnn", input_dim=66, n_outputs=10, layout=IMAGE, params={"channels": [4, 8]})
    assert old.head[0].in_features == 8 + 2
    store = Store(tmp_path)
    save_model(store, model_meta("torch.cnn", "classification", 10, input_dim=66, layout=IMAGE,
                                 params={"channels": [4, 8]}), torch_state=old.state_dict())
    assert load_model(store).net.head[0].in_features == 8 + 2


def test_cnn_reads_pixels_in_hwc_order() -> None:
    layout = [{"kind": "image", "start": 0, "stop": 2 * 3 * 3, "shape": [2, 3, 3]}]
    net = build_model("torch.cnn", input_dim=18, n_outputs=2, layout=layout, params={"channels": [1]})
    seen = {}
    net.convs[0].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0]))
    img = np.arange(18, dtype=np.float32).reshape(2, 3, 3)  # (h, w, c), as ImageTransformer flattens it
    net(torch.from_numpy(img.reshape(1, -1)))
    assert torch.equal(seen["x"][0], torch.from_numpy(img).permute(2, 0, 1))


def test_text_bag_is_the_weighted_sum_of_term_embeddings() -> None:
    torch.manual_seed(0)
    net = build_model("torch.text", input_dim=42, n_outputs=3, layout=TEXT, params={"embed_dim": 6}).eval()
    x = torch.zeros(3, 42)
    x[0, 2 + 5], x[0, 2 + 7], x[2, 2 + 39] = 0.6, 0.8, 1.0  # row 1 has no terms
    seen = {}
    net.head.register_forward_hook(lambda m, inp, out: seen.update(z=inp[0]))
    net(x)
    emb = net.bag.weight.detach()
    z = seen["z"][:, :6]
    assert torch.allclose(z[0], 0.6 * emb[5] + 0.8 * emb[7])
    assert torch.equal(z[1], torch.zeros(6)) and torch.allclose(z[2], emb[39])
    assert torch.equal(seen["z"][:, 6:], x[:, :2])  # the other features join after the bag


def test_user_factory_by_import_path() -> None:
    net = build_model("torch:tests.train.factories:tiny", input_dim=5, n_outputs=2, params={"width": 3})
    assert net(torch.randn(2, 5)).shape == (2, 2) and net[0].out_features == 3
    with pytest.raises(SpecError, match="returned str, not a torch.nn.Module"):
        build_model("torch:tests.train.factories:not_a_module", input_dim=5, n_outputs=2)
    with pytest.raises(SpecError, match="cannot import 'tests.train.factories:missing'"):
        build_model("torch:tests.train.factories:missing", input_dim=5, n_outputs=2)


@pytest.mark.parametrize("kind, layout, match", [
    ("torch.cnn", TEXT, "torch.cnn needs exactly one image column"),
    ("torch.cnn", IMAGE + [{"kind": "image", "start": 66, "stop": 130, "shape": [8, 8, 1]}], "found 2"),
    ("torch.text", IMAGE, "torch.text needs a text column"),
    ("torch.cnn", [{"kind": "pca", "start": 0, "stop": 9}], "PCA flattens images"),
])
def test_layout_mismatch_is_a_spec_error(kind, layout, match) -> None:
    with pytest.raises(SpecError, match=match):
        check_layout(kind, layout)


def test_pipeline_layout_matches_the_feature_matrix() -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"a": rng.normal(size=30), "c": rng.choice(["x", "y"], 30),
                       "t": rng.choice(["red fox", "blue fox jumps", "lazy dog"], 30)})
    df["img"] = list(rng.integers(0, 255, size=(30, 2, 3, 3)).astype(np.uint8))
    p = FeaturePipeline(numeric=["a"], categorical=["c"], text=["t"], image=["img"], min_df=1,
                        image_shapes={"img": [2, 3, 3]}, image_normalize="unit").fit(df)
    layout = p.layout()
    assert [b["kind"] for b in layout] == ["numeric", "categorical", "text", "image"]
    assert [b["start"] for b in layout[1:]] == [b["stop"] for b in layout[:-1]] and layout[-1]["stop"] == p.n_features
    names = p.feature_names_
    img = layout[-1]
    assert img["shape"] == [2, 3, 3] and names[img["start"]].startswith("img[")
    assert all(n.startswith("t:") for n in names[layout[2]["start"]:layout[2]["stop"]])
    x = p.transform(df)
    block = x[0, img["start"]:img["stop"]].reshape(img["shape"])  # the (h, w, c) image back
    assert np.allclose(block, df["img"].iloc[0] / 255.0)


@pytest.mark.parametrize("kind, layout, params", [
    ("torch.cnn", IMAGE, {"channels": [4]}),
    ("torch.text", TEXT, {"embed_dim": 4}),
    ("torch:tests.train.factories:tiny", None, {"width": 4}),
])
def test_saved_zoo_model_serves_the_same_scores(tmp_path: Path, kind, layout, params) -> None:
    torch.manual_seed(0)
    d = 66 if layout is IMAGE else 42
    net = build_model(kind, input_dim=d, n_outputs=3, layout=layout, params=params).eval()
    store = Store(tmp_path / "model")
    save_model(store, model_meta(kind, "classification", 3, input_dim=d, layout=layout, params=params),
               torch_state=net.state_dict())
    model = load_model(store, trusted=(kind,))  # a user factory loads only when the loader trusts it
    assert isinstance(model, TorchModel)
    x = np.abs(np.random.default_rng(1).normal(size=(7, d))).astype(np.float32)
    x[x < 0.8] = 0.0
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy().astype(np.float64)
    assert np.allclose(model.predict_scores(x), expected, atol=1e-6)
