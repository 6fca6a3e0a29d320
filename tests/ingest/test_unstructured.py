"""Tests for folder-tree sources: images (digits as PNG) and text files."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raypipe.errors import RaypipeError, SpecError
from raypipe.ingest.unstructured import (
    UndecodableFileError,
    decode_image,
    list_tree,
    read_images,
    read_text_folder,
    write_digits_png,
)
from raypipe.spec import ImagesSource, TextSource


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as uint8 0..255 images and their integer targets."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 1797 digits, plus files that must be ignored."""
    root = tmp_path_factory.mktemp("digits")
    assert write_digits_png(root) == 1797
    (root / "README.txt").write_text("not an image")
    (root / "3" / "notes.txt").write_text("not an image either")
    (root / ".cache").mkdir()
    (root / ".cache" / "0.png").write_bytes((root / "0" / "0.png").read_bytes())
    return root


@pytest.fixture(scope="module")
def one_per_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits1")
    assert write_digits_png(root, per_class=1) == 10
    return root


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --- write_digits_png and decode_image (no Ray) ----------------------------------------


def test_write_digits_png_layout(one_per_class: Path) -> None:
    images, target = _digits()
    files = sorted(one_per_class.rglob("*.png"))
    assert [f.parent.name for f in files] == [str(d) for d in range(10)]
    for f in files:
        index = int(f.stem)
        assert target[index] == int(f.parent.name)
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (8, 8)
            np.testing.assert_array_equal(np.asarray(im), images[index])


def test_decode_image_modes_and_resize() -> None:
    images, _ = _digits()
    data = _png_bytes(images[0])
    np.testing.assert_array_equal(decode_image(data, (8, 8), "L"), images[0])
    rgb = decode_image(data, (16, 12), "RGB")
    assert rgb.shape == (16, 12, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "empty", "flipped"])
def test_decode_image_corrupt_names_file(corrupt: str) -> None:
    images, _ = _digits()
    good = _png_bytes(np.tile(images[5], (8, 8)))  # 64x64: several data chunks to damage
    data = {
        "truncated": good[: len(good) // 2],
        "garbage": b"this is not a png",
        "empty": b"",
        "flipped": good[:60] + bytes(b ^ 0xFF for b in good[60:90]) + good[90:],
    }[corrupt]
    with pytest.raises(UndecodableFileError, match=r"cannot decode image '/data/7/bad\.png'"):
        decode_image(data, (8, 8), "L", "/data/7/bad.png")
    assert issubclass(UndecodableFileError, RaypipeError) and issubclass(UndecodableFileError, ValueError)
    assert UndecodableFileError.exit_code == 3  # a data problem


def test_list_tree_skips_hidden_and_other_extensions(digits_tree: Path, tmp_path: Path) -> None:
    _, files = list_tree(str(digits_tree), ["png"])
    assert len(files) == 1797 and not any("/.cache/" in f for f in files)
    (tmp_path / "_background").mkdir()
    (tmp_path / "_background" / "a.TXT").write_text("kept")
    (tmp_path / "_background" / ".hidden.txt").write_text("skipped")
    assert [Path(f).name for f in list_tree(str(tmp_path), ["txt"])[1]] == ["a.TXT"]
    with pytest.raises(SpecError, match="does not exist"):
        list_tree(str(tmp_path / "nope"), ["png"])
    with pytest.raises(SpecError, match="no png files under"):
        list_tree(str(tmp_path), ["png"])


# --- images through Ray -------------------------------------------------------------------


def test_read_digits_images(ray_session, digits_tree: Path) -> None:
    images, target = _digits()
    ds = read_images(ImagesSource(type="images", path=str(digits_tree), size=(8, 8), mode="L"))
    assert ds.schema().names == ["image", "label"]
    rows = ds.take_all()
    assert len(rows) == 1797
    assert all(r["image"].shape == (8, 8) and r["image"].dtype == np.uint8 for r in rows)
    assert Counter(r["label"] for r in rows) == {str(d): int(n) for d, n in enumerate(np.bincount(target))}
    # Every image, pixel for pixel, under its own label.
    got = Counter((r["label"], r["image"].tobytes()) for r in rows)
    assert got == Counter((str(t), im.tobytes()) for im, t in zip(images, target))


def test_read_images_resized_rgb(ray_session, one_per_class: Path) -> None:
    images, target = _digits()
    first = {int(target[i]): images[i] for i in sorted(range(len(target)), reverse=True)}  # first of each class
    ds = read_images(ImagesSource(type="images", path=str(one_per_class), size=(16, 12), mode="RGB"))
    rows = ds.take_all()
    assert sorted(r["label"] for r in rows) == [str(d) for d in range(10)]
    for r in rows:
        img = r["image"]
        assert img.shape == (16, 12, 3) and img.dtype == np.uint8
        original = first[int(r["label"])]
        expected = Image.fromarray(original).convert("RGB").resize((12, 16), resample=Image.BILINEAR)
        np.testing.assert_array_equal(img, np.asarray(expected))
        nearest = np.asarray(Image.fromarray(original).resize((12, 16), resample=Image.NEAREST), dtype=float)
        assert np.corrcoef(img[..., 0].ravel(), nearest.ravel())[0, 1] > 0.8


def test_corrupt_png_is_a_clear_error(ray_session, one_per_class: Path, tmp_path: Path) -> None:
    """A truncated PNG: ray.data.read_images would fail with a bare 'image file is truncated'."""
    for f in one_per_class.rglob("*.png"):
        (tmp_path / f.parent.name).mkdir(exist_ok=True)
        (tmp_path / f.parent.name / f.name).write_bytes(f.read_bytes())
    images, _ = _digits()
    good = _png_bytes(np.tile(images[7], (8, 8)))
    (tmp_path / "7" / "bad.png").write_bytes(good[: len(good) // 2])
    ds = read_images(ImagesSource(type="images", path=str(tmp_path), size=(8, 8)))
    with pytest.raises(Exception, match=r"cannot decode image '[^']*/7/bad\.png': OSError: image file is truncated"):
        ds.materialize()


# --- text ------------------------------------------------------------------------------------


@pytest.fixture
def text_tree(tmp_path: Path) -> Path:
    (tmp_path / "pos").mkdir()
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos" / "a.txt").write_text("Très bien ✓ — 很好\nsecond line", encoding="utf-8")
    (tmp_path / "pos" / "b.txt").write_text("good", encoding="utf-8")
    (tmp_path / "neg" / "c.txt").write_text("bad 😞", encoding="utf-8")
    (tmp_path / "neg" / "skip.md").write_text("not a .txt file")
    return tmp_path


def test_read_text_folder(ray_session, text_tree: Path) -> None:
    ds = read_text_folder(TextSource(type="text", path=str(text_tree)))
    assert ds.schema().names == ["text", "label"]
    rows = sorted((r["label"], r["text"]) for r in ds.take_all())
    assert rows == [
        ("neg", "bad 😞"),
        ("pos", "Très bien ✓ — 很好\nsecond line"),
        ("pos", "good"),
    ]


def test_read_text_folder_bad_encoding(ray_session, text_tree: Path) -> None:
    (text_tree / "neg" / "latin.txt").write_bytes("café".encode("latin-1"))
    ds = read_text_folder(TextSource(type="text", path=str(text_tree)))
    with pytest.raises(Exception, match=r"cannot decode text file '[^']*/neg/latin\.txt' as utf-8: byte b'\\xe9'"):
        ds.materialize()
    with pytest.raises(SpecError, match="not a known text encoding"):
        read_text_folder(TextSource(type="text", path=str(text_tree), encoding="utf-9"))


def test_read_text_folder_other_encoding(ray_session, tmp_path: Path) -> None:
    (tmp_path / "fr").mkdir()
    (tmp_path / "fr" / "a.txt").write_bytes("café crème".encode("latin-1"))
    rows = read_text_folder(TextSource(type="text", path=str(tmp_path), encoding="latin-1")).take_all()
    assert rows == [{"text": "café crème", "label": "fr"}]
