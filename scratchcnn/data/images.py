"""Reading an image file from outside (``scratchcnn predict``, ``filters``) into an array.

Every file is untrusted: it is checked to be a regular file of bounded size, its pixel
count is read from the header and bounded BEFORE anything is decoded, and any decoding
failure (truncated, corrupt, not an image) is one :class:`DataError` line. What is decoded:

* 8-bit images of any mode (L, RGB, P with or without a palette transparency, CMYK, YCbCr,
  LAB, HSV, 1-bit) are converted by Pillow; 16-bit and 32-bit integer images (``I;16*``,
  ``I``) are scaled by their bit depth (/ 65535), not clipped to 8 bits; float images
  (``F``) are taken as intensities in [0, 1], [0, 255] or [0, 65535], whichever their
  maximum fits;
* alpha (RGBA, LA, PA, palette transparency) is composited onto a background: white when
  the image is to be inverted (``invert=True``: dark ink on light paper), black when it is
  not, and with ``invert=None`` the one that contrasts with the visible ink (so transparent
  areas read as paper, never as ink);
* animated images (GIF, APNG, WebP): the first frame.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from scratchcnn.data._files import regular_file_size
from scratchcnn.errors import DataError

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "ImageHeader",
    "load_grayscale_image",
    "load_image",
    "open_image_file",
    "probe_image",
]

#: Largest image file read (bytes): far above any photograph, far below memory trouble.
MAX_IMAGE_BYTES = 64 * 2**20
#: Largest image decoded (width x height): 40 megapixels, a large phone photo. Decoding
#: such an image takes at most ~160 MB (4 bytes a pixel for 16-bit or float images).
MAX_IMAGE_PIXELS = 40_000_000

Fit = Callable[[int, int], tuple[int, int]]
T = TypeVar("T")

_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
_GRAY_MODES = ("1", "L")
# ITU-R 601-2 luma, the weights Pillow's RGB -> L conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def open_image_file(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is a regular, non-empty file of at most MAX_IMAGE_BYTES.

    Refuses folders, FIFOs (which would block), devices (``/dev/zero`` never ends) and
    sockets without opening them."""
    path = Path(path)
    size = regular_file_size(path, "an image file")
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes), not an image")
    if size > MAX_IMAGE_BYTES:
        raise DataError(
            f"{path}: {size:,} bytes is larger than the {MAX_IMAGE_BYTES:,}-byte limit "
            "for an image file"
        )
    return path


@contextmanager
def _open_header(path: Path) -> Iterator[Any]:
    """The Pillow image of ``path`` with only its header read, its pixel count checked
    against MAX_IMAGE_PIXELS before anything is decoded; closed on leaving."""
    from PIL import Image

    from scratchcnn.checkpoint.files import open_regular_file

    # Opened once, guarded: O_NONBLOCK and fstat on the open descriptor, so a file swapped
    # for a FIFO or a device after open_image_file's check is refused, never read.
    with open_regular_file(path, MAX_IMAGE_BYTES, "image file", DataError) as fh:
        # Pillow warns above its own pixel limit and raises at twice it, from the header; we
        # bound the count ourselves right below (before decoding), with our own message
        # naming the size. Its limit is lifted for the header read only.
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(fh)
        except Image.DecompressionBombError:
            raise DataError(_too_many_pixels(path, None)) from None
        except Image.UnidentifiedImageError:  # Pillow would name the descriptor, not the file
            raise DataError(
                f"{path}: cannot read it as an image (cannot identify image file {str(path)!r})"
            ) from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
        with img:
            yield _checked_size(path, img)


def _checked_size(path: Path, img: Any) -> Any:
    """``img`` if its pixel count is within MAX_IMAGE_PIXELS and not zero; else one line."""
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(_too_many_pixels(path, (w, h)))
    if w < 1 or h < 1:
        raise DataError(f"{path}: image of {w}x{h} pixels has nothing to read")
    return img


def _decode(path: Path, fit: Fit, invert: bool | None) -> tuple[np.ndarray, bool]:
    """Decode ``path`` resized to ``fit(width, height)`` = (W, H). Returns ((H, W) or
    (H, W, 3) float32 in [0, 1], composited onto the background, is_rgb)."""
    from PIL import Image

    with _open_header(path) as img:
        size = fit(*img.size)
        img.seek(0)  # animated images: the first frame
        img.draft(None, size)  # JPEG: decode at a reduced scale when that is still >= size
        mode = img.mode
        if mode in _HIGH_DEPTH:
            img = img if mode.startswith("I;16") else img.convert("F")
            scale = 65535.0
        elif mode == "F":
            values = np.asarray(img)
            if not np.isfinite(values).all():
                raise DataError(f"{path}: the image holds NaN or infinite pixel values")
            top = float(values.max())
            scale = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
        else:
            if mode == "P" or (mode in ("L", "RGB") and "transparency" in img.info):
                img = img.convert("RGBA")
            target = _ALPHA_MODES.get(img.mode) or ("L" if img.mode in _GRAY_MODES else "RGB")
            img = img.convert(target)
            scale = 255.0
        # Resizing LA/RGBA premultiplies alpha (Pillow), so transparent pixels do not bleed.
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        arr = np.asarray(img, dtype=np.float32) / np.float32(scale)
        alpha_mode = img.mode in ("LA", "RGBA")
    arr = np.clip(arr, 0.0, 1.0)
    if alpha_mode:
        arr, alpha = arr[..., :-1], arr[..., -1:]
        arr = _composite(arr, alpha, invert)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    return arr, arr.ndim == 3


def _composite(color: np.ndarray, alpha: np.ndarray, invert: bool | None) -> np.ndarray:
    """color * alpha + background * (1 - alpha); the background is described in the module
    docstring."""
    if invert is None:
        weight = float(alpha.sum())
        ink = float((color * alpha).sum()) / weight if weight > 0 else 0.0
        light_background = ink <= 0.5
    else:
        light_background = invert
    background = np.float32(1.0 if light_background else 0.0)
    return color * alpha + background * (1 - alpha)


def _too_many_pixels(path: Path, size: tuple[int, int] | None) -> str:
    what = f"{size[0]:,}x{size[1]:,} pixels" if size else "too many pixels"
    return (
        f"{path}: image of {what} is larger than the {MAX_IMAGE_PIXELS:,}-pixel limit "
        "(a decompression bomb, or a photo to shrink first)"
    )


def load_image(
    path: str | os.PathLike[str], shape: tuple[int, int, int], invert: bool | None = None
) -> np.ndarray:
    """An image file as a (C, H, W) float32 array in [0, 1], resized to ``shape``.

    ``shape`` is the model's input (C, H, W) with C = 1 (grey, ITU-R 601-2 luma) or 3 (RGB).
    ``invert``: True inverts (dark ink on light paper becomes MNIST's light on dark), False
    never does, None decides by the border: a light border (mean > 0.5) is inverted.
    Raises :class:`DataError` (one line) for anything that is not a readable image of at
    most :data:`MAX_IMAGE_PIXELS` pixels in a regular file of at most
    :data:`MAX_IMAGE_BYTES` bytes.
    """
    c, h, w = (int(v) for v in shape)
    if c not in (1, 3) or h < 1 or w < 1:
        raise DataError(f"cannot feed images to a model whose input is {tuple(shape)}")
    arr, is_rgb = _read(path, lambda _w, _h: (w, h), invert)
    if c == 1 and is_rgb:
        arr = arr @ _LUMA
    elif c == 3 and not is_rgb:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    if invert is None:
        # MNIST digits are light on a dark background; a photo of ink on paper is the
        # opposite, which the border (mostly background) shows.
        border = np.concatenate([arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1]], axis=None)
        invert = float(border.mean()) > 0.5
    out = 1.0 - arr if invert else arr
    return np.ascontiguousarray(out, dtype=np.float32)


def load_grayscale_image(path: str | os.PathLike[str], max_side: int) -> np.ndarray:
    """An image file as a float32 (H, W) grayscale array in [0, 1] (alpha composited onto
    white), downscaled keeping its aspect ratio so its longest side is at most ``max_side``.
    The same checks and bounds as :func:`load_image`."""

    def fit(w: int, h: int) -> tuple[int, int]:
        f = min(1.0, max_side / max(w, h))
        return max(1, round(w * f)), max(1, round(h * f))

    arr, is_rgb = _read(path, fit, invert=True)
    return np.ascontiguousarray(arr @ _LUMA if is_rgb else arr, dtype=np.float32)


def _read(path: str | os.PathLike[str], fit: Fit, invert: bool | None) -> tuple[np.ndarray, bool]:
    """open_image_file + _decode, every decoding failure turned into one DataError line."""
    path = open_image_file(path)
    return _foreign(path, lambda: _decode(path, fit, invert))


def _foreign(path: Path, work: Callable[[], T]) -> T:
    """``work()`` on the foreign file ``path``: Pillow's warnings silenced, every failure one
    DataError line naming the file."""
    try:
        # A foreign file can make Pillow warn (corrupt EXIF, odd chunks ...): that would be
        # a second line on stderr, and the file either decodes or is refused anyway.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return work()
    except DataError:
        raise
    except Exception as exc:  # any failure to decode a foreign file is the file's fault
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read it as an image ({reason:.160})") from None


#: Pillow modes that hold colour. A palette image (P, PA) holds colour when it uses a palette
#: entry whose red, green and blue differ; every other mode (1, L, LA, I, I;16, F) is grey.
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image file says, without decoding its pixels."""

    width: int
    height: int
    mode: str  #: Pillow's mode ("RGB", "L", "P", "I;16", "CMYK" ...)
    colour: bool  #: the file stores colour (see :func:`probe_image`)


def probe_image(path: str | os.PathLike[str]) -> ImageHeader:
    """Read only the header of an image file: its size, its mode and whether it holds colour.

    The same checks as :func:`load_image` before anything is decoded (a regular file of at
    most :data:`MAX_IMAGE_BYTES` bytes, at most :data:`MAX_IMAGE_PIXELS` pixels, something
    Pillow recognises as an image), each failure one :class:`DataError` line naming the file.
    ``colour`` is True for RGB, RGBA, CMYK, YCbCr, LAB and HSV images, and for palette images
    that use a palette entry that is not grey (for these, and only these, the pixel indices
    are decoded to know); False for 1-bit, grey, 16-bit, 32-bit and float images. A truncated
    file whose header is whole passes here (palette images aside) and fails when decoded.
    """
    path = open_image_file(path)

    def header() -> ImageHeader:
        with _open_header(path) as img:
            mode = img.mode
            colour = mode in _COLOUR_MODES
            if mode in ("P", "PA"):
                colour = _palette_colour(img)
            return ImageHeader(int(img.size[0]), int(img.size[1]), mode, colour)

    return _foreign(path, header)


def _palette_colour(img: Any) -> bool:
    """Whether a palette image uses a palette entry that is not grey. Palettes often hold
    colours an image never uses (Pillow's RGB -> P conversion gives the 216-colour web
    palette even to a grey image), so the indices are decoded: this mode only."""
    palette = img.getpalette() or []
    rgb = np.asarray(palette, dtype=np.int64)[: len(palette) // 3 * 3].reshape(-1, 3)
    grey = (rgb[:, 0] == rgb[:, 1]) & (rgb[:, 1] == rgb[:, 2])
    if grey.all():
        return False
    counts = img.getcolors(256)  # (count, index) or, for PA, (count, (index, alpha))
    if counts is None:  # pragma: no cover - a palette image has at most 256 indices
        return True
    used = np.array([c if isinstance(c, int) else c[0] for _, c in counts], dtype=np.int64)
    used = used[used < len(grey)]
    return bool((~grey[used]).any())
