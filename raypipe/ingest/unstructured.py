"""Folder trees of images and text files -> ``ray.data.Dataset`` with a ``label`` column.

The layout is ``<path>/<label>/<file>``: a file's label is the name of the folder that
holds it. The driver lists the files (hidden ones skipped); Ray tasks read and decode them.

A file that cannot be decoded stops the read with :class:`UndecodableFileError`, whose
message names the file; it never silently disappears. Through Ray Data it reaches the
caller as ``RayTaskError(UserCodeException)`` whose text holds that message. Images are
decoded here rather than by ``ray.data.read_images``, because in Ray 2.60 that reader
names the file only when Pillow cannot identify it at all; a truncated or damaged PNG
fails later, on resize, with a bare ``OSError: image file is truncated``. Ray's own folder
listing also skips names starting with ``_`` (a ``_background`` class would vanish).
"""
from __future__ import annotations

import io
import posixpath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raypipe.errors import UndecodableFileError

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

    from raypipe.spec import ImagesSource, TextSource


IMAGE_EXTENSIONS = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp"]
TEXT_EXTENSIONS = ["txt"]


def _label(path: str) -> str:
    """The name of the folder holding ``path``."""
    return posixpath.basename(posixpath.dirname(path.replace("\\", "/")))


def list_tree(path: str, extensions: list[str]) -> tuple[Any, list[str]]:
    """The filesystem and the sorted files under ``path`` whose extension is in ``extensions``.

    Hidden files and folders (a name starting with ``.``) are skipped; unlike Ray's own
    folder listing, names starting with ``_`` are kept (a ``_background`` class stays).

    Raises:
        SpecError: ``path`` does not exist or holds no such file.
    """
    import pyarrow.fs as pafs

    from raypipe.errors import SpecError
    from raypipe.ingest.files import filesystem_and_path, redact

    fs, inner = filesystem_and_path(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise SpecError(f"data.source.path: {redact(path)!r} does not exist; point it at a folder <label>/<file>")
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    base = inner.rstrip("/") + "/"
    exts = tuple("." + e.lower().lstrip(".") for e in extensions)
    files = sorted(
        i.path for i in infos
        if i.type == pafs.FileType.File
        and i.path.lower().endswith(exts)
        and not any(part.startswith(".") for part in i.path[len(base):].split("/"))
    )
    if not files:
        raise SpecError(
            f"data.source.path: no {'/'.join(extensions)} files under {redact(path)!r}; "
            "expected <path>/<label>/<file>"
        )
    return fs, files


def _binary_tree(path: str, extensions: list[str]) -> ray.data.Dataset:
    """``bytes`` and ``path`` of every file :func:`list_tree` finds, read by Ray tasks."""
    import ray.data

    fs, files = list_tree(path, extensions)
    return ray.data.read_binary_files(files, filesystem=fs, include_paths=True)


# --- images --------------------------------------------------------------------------


def decode_image(data: bytes, size: tuple[int, int], mode: str, path: str = "<bytes>") -> np.ndarray:
    """Decodes one image to a uint8 array of shape ``size`` (+ ``(3,)`` for RGB).

    The image is converted to ``mode`` first, then resized (bilinear) to ``(height, width)``.

    Raises:
        UndecodableFileError: Pillow cannot read the whole image; the message names ``path``.
    """
    from PIL import Image

    height, width = size
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert(mode)  # loads every pixel: truncated data fails here
            if image.size != (width, height):
                image = image.resize((width, height), resample=Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 -- Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise UndecodableFileError(f"cannot decode image {path!r}: {type(e).__name__}: {e}") from None


def _image_batch(batch: dict[str, Any], size: tuple[int, int], mode: str) -> dict[str, np.ndarray]:
    """``{bytes, path}`` rows -> ``{image, label}`` rows."""
    paths = [str(p) for p in batch["path"]]
    images = [decode_image(bytes(b), size, mode, p) for b, p in zip(batch["bytes"], paths)]
    channels = () if mode == "L" else (3,)
    stacked = np.stack(images) if images else np.zeros((0, *size, *channels), dtype=np.uint8)
    return {"image": stacked, "label": np.array([_label(p) for p in paths], dtype=object)}


def read_images(source: ImagesSource) -> ray.data.Dataset:
    """Reads ``<path>/<label>/<image>`` into columns ``image`` and ``label``.

    ``image`` is a uint8 tensor of shape ``(h, w)`` for mode ``L`` or ``(h, w, 3)`` for
    ``RGB``, resized to ``source.size``; ``label`` is the parent folder's name (str).
    Files without an image extension (README.txt...) and hidden files are skipped.

    Raises:
        SpecError: ``source.path`` does not exist or holds no image (at once).
        UndecodableFileError: an image file cannot be decoded; it names the file (when
            the dataset executes, wrapped by Ray).
    """
    size = (int(source.size[0]), int(source.size[1]))
    mode = source.mode
    return _binary_tree(source.path, IMAGE_EXTENSIONS).map_batches(
        _image_batch, fn_kwargs={"size": size, "mode": mode}, batch_format="numpy", batch_size=256
    )


# --- text ----------------------------------------------------------------------------


def _decode_text(data: bytes, encoding: str, path: str) -> str:
    """``data`` decoded strictly with ``encoding``; a clear error naming ``path`` otherwise."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise UndecodableFileError(
            f"cannot decode text file {path!r} as {encoding}: byte {e.object[e.start:e.start + 1]!r} "
            f"at offset {e.start} ({e.reason}); set data.source.encoding to the file's encoding"
        ) from None


def _text_batch(batch: dict[str, Any], encoding: str) -> dict[str, np.ndarray]:
    """``{bytes, path}`` rows -> ``{text, label}`` rows."""
    paths = [str(p) for p in batch["path"]]
    texts = [_decode_text(bytes(b), encoding, p) for b, p in zip(batch["bytes"], paths)]
    return {
        "text": np.array(texts, dtype=object),
        "label": np.array([_label(p) for p in paths], dtype=object),
    }


def read_text_folder(source: TextSource) -> ray.data.Dataset:
    """Reads ``<path>/<label>/<file>.txt`` into columns ``text`` (str) and ``label`` (str).

    Each file is one row, its whole content decoded with ``source.encoding``.

    Raises:
        SpecError: ``source.path`` does not exist or holds no ``.txt`` file (at once).
        SpecError: ``source.encoding`` is not a codec Python knows (at once).
        UndecodableFileError: a file is not valid in that encoding; it names the file (when
            the dataset executes, wrapped by Ray).
    """
    import codecs

    from raypipe.errors import SpecError

    try:
        encoding = codecs.lookup(source.encoding).name
    except LookupError:
        raise SpecError(
            f"data.source.encoding: {source.encoding!r} is not a known text encoding; try utf-8, latin-1 or cp1252"
        ) from None
    return _binary_tree(source.path, TEXT_EXTENSIONS).map_batches(
        _text_batch, fn_kwargs={"encoding": encoding}, batch_format="numpy", batch_size=256
    )


# --- sample data ---------------------------------------------------------------------


def write_digits_png(root: Path, per_class: int | None = None) -> int:
    """Writes scikit-learn's bundled digits as ``root/<digit>/<index>.png`` (8x8, mode L).

    Pixel values 0..16 are scaled to 0..255; ``<index>`` is the row in ``load_digits()``.

    Args:
        root: Folder to write into (created if missing).
        per_class: Write only the first ``per_class`` images of each digit; all when None.

    Returns:
        The number of files written.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    written: dict[int, int] = {}
    for index, (image, target) in enumerate(zip(pixels, digits.target.tolist())):
        if per_class is not None and written.get(target, 0) >= per_class:
            continue
        folder = Path(root) / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
        written[target] = written.get(target, 0) + 1
    return sum(written.values())


def scan_images(per_class: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic grayscale "scans" and labels (1: lesion, 0: clear), as :func:`write_scans_png` writes them.

    Each image is tissue-like texture (white noise smoothed at two scales, a random overall
    brightness and a soft vignette); half also hold one lesion: a bright, roughly round blob
    of radius 1.5-5 pixels anywhere away from the border, its contrast drawn from faint
    (about the texture's own spread) to obvious. Position and size vary, so a linear model on
    the pixels has little to go on, while a convolution finds a blob wherever it is.

    Returns:
        ``(images, labels)``: uint8 ``(2 * per_class, size, size)`` and int64 ``(2 * per_class,)``,
        clear and lesion interleaved.
    """
    from scipy.ndimage import gaussian_filter

    if per_class < 1 or size < 16:
        raise ValueError(f"scan_images needs per_class >= 1 and size >= 16, got per_class={per_class}, size={size}")
    rng = np.random.default_rng(seed)
    n = 2 * per_class
    labels = np.arange(n, dtype=np.int64) % 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2
    vignette = 1.0 - 0.35 * (((yy - centre) ** 2 + (xx - centre) ** 2) / (2 * centre**2))
    images = np.empty((n, size, size), dtype=np.uint8)
    for i in range(n):
        coarse = gaussian_filter(rng.standard_normal((size, size)), 3.0) * 3.0
        fine = gaussian_filter(rng.standard_normal((size, size)), 0.8)
        tissue = 0.45 + 0.08 * rng.standard_normal() + 0.12 * coarse + 0.05 * fine
        if labels[i]:
            r = rng.uniform(1.5, 5.0)
            cy, cx = rng.uniform(r + 2, size - r - 3, 2)
            stretch = rng.uniform(0.7, 1.4)  # oval, not a perfect disc
            d2 = ((yy - cy) / stretch) ** 2 + ((xx - cx) * stretch) ** 2
            tissue = tissue + rng.uniform(0.08, 0.3) * np.exp(-d2 / (2 * r**2))
        images[i] = np.clip(np.round(tissue * vignette * 255.0), 0, 255).astype(np.uint8)
    return images, labels


def write_scans_png(root: Path, per_class: int = 400, size: int = 32, seed: int = 0) -> int:
    """Writes synthetic scans (see :func:`scan_images`) as ``root/lesion/<n>.png`` and ``root/clear/<n>.png``.

    Grayscale (mode L), ``size`` x ``size`` pixels; seeded: the same arguments write the same files.

    Returns:
        The number of files written.
    """
    from PIL import Image

    images, labels = scan_images(per_class, size, seed)
    for name in ("clear", "lesion"):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(Path(root) / ("lesion" if label else "clear") / f"{i:05d}.png")
    return len(images)


_TICKET_TOPICS: dict[str, list[str]] = {
    "billing": ["I was charged twice for my subscription this month", "the invoice amount does not match my plan",
                "please refund the duplicate payment on my card", "my credit card was billed after I cancelled",
                "how do I get a receipt for the last payment", "the discount code was not applied to the invoice",
                "why did the monthly price go up", "I need to update the billing address on the invoice"],
    "outage": ["the service is down and the dashboard does not load", "we get 502 errors from the API since this morning",
               "the app times out for every user in our office", "status page says operational but nothing works",
               "our integration stopped syncing an hour ago", "pages load very slowly and then fail",
               "the login page returns a server error", "the mobile app cannot connect to the server"],
    "account": ["I cannot reset my password, the email never arrives", "please add a new admin user to our account",
                "how do I enable two factor authentication", "my account was locked after too many attempts",
                "I want to change the email address on my profile", "please delete my account and my data",
                "the invitation link for my colleague expired", "I lost access to my authenticator app"],
    "shipping": ["my parcel has not arrived after two weeks", "the tracking number shows no movement",
                 "the package was delivered to the wrong address", "the box arrived damaged and the item is broken",
                 "can I change the delivery address of my order", "the courier left without ringing the bell",
                 "I received the wrong size, how do I return it", "when will the back-ordered item ship"],
}
_TICKET_NOISE = ["Hello team,", "Hi,", "Thanks in advance.", "Best regards, Sam", "This is urgent for us.",
                 "Order reference attached.", "Sent from my phone", "Kind regards", "Any update would help."]


def write_support_tickets(root: Path, per_class: int = 150, seed: int = 0, mix: float = 0.15) -> int:
    """Writes synthetic support tickets as ``root/<topic>/<n>.txt`` (UTF-8) for the text example.

    Each ticket is a greeting, two or three sentences about its topic and a sign-off; with
    probability ``mix`` a sentence comes from another topic (real tickets wander), so the
    task is not trivially separable. Seeded: the same arguments write the same files.

    Returns:
        The number of files written.
    """
    rng = np.random.default_rng(seed)
    topics = sorted(_TICKET_TOPICS)
    n = 0
    for topic in topics:
        folder = Path(root) / topic
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            lines = [str(rng.choice(_TICKET_NOISE))]
            for _ in range(int(rng.integers(2, 4))):
                source = str(rng.choice(topics)) if rng.random() < mix else topic
                lines.append(str(rng.choice(_TICKET_TOPICS[source])) + ".")
            lines.append(str(rng.choice(_TICKET_NOISE)))
            (folder / f"{i:04d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            n += 1
    return n
