"""Synthetic scans for the medical-images example: the lesion is there, faint or not, and nowhere fixed."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raypipe.ingest.unstructured import scan_images, write_scans_png


def test_scans_are_seeded_and_balanced() -> None:
    images, labels = scan_images(40, size=32, seed=3)
    again, _ = scan_images(40, size=32, seed=3)
    assert images.shape == (80, 32, 32) and images.dtype == np.uint8
    assert (images == again).all() and not (images == scan_images(40, size=32, seed=4)[0]).all()
    assert labels.sum() == 40
    with pytest.raises(ValueError, match="per_class >= 1 and size >= 16"):
        scan_images(0)


def test_a_lesion_is_a_local_bright_spot_of_varying_place_and_contrast() -> None:
    images, labels = scan_images(200, size=32, seed=0)
    x = images.astype(np.float64)
    # brightest pixel over the image's median: higher with a lesion on average, yet the classes overlap
    peak = (x.reshape(len(x), -1).max(axis=1) - np.median(x.reshape(len(x), -1), axis=1))
    assert peak[labels == 1].mean() > peak[labels == 0].mean() + 10
    assert (peak[labels == 1] < np.percentile(peak[labels == 0], 90)).mean() > 0.05  # faint ones hide in the texture
    # the lesion is anywhere: the mean lesion image is nearly as flat as the mean clear one
    diff = x[labels == 1].mean(axis=0) - x[labels == 0].mean(axis=0)
    assert diff.max() < 0.5 * (peak[labels == 1].mean() - peak[labels == 0].mean())
    where = np.array([np.unravel_index(np.argmax(img), img.shape) for img in x[labels == 1]])
    assert where[:, 0].std() > 4 and where[:, 1].std() > 4


def test_write_scans_png_writes_labelled_folders(tmp_path) -> None:
    assert write_scans_png(tmp_path, per_class=5, size=24, seed=1) == 10
    files = {p.parent.name: 0 for p in tmp_path.glob("*/*.png")}
    for p in tmp_path.glob("*/*.png"):
        files[p.parent.name] += 1
    assert files == {"clear": 5, "lesion": 5}
    image = Image.open(next((tmp_path / "lesion").glob("*.png")))
    assert image.mode == "L" and image.size == (24, 24)
