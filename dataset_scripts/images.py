"""Image checks at preparation time: by header (the default), by full decode, or none; in parallel when asked.

Why a header mode: decoding every image to verify it costs ~0.3 ms per BIOSCAN crop (about 25 core-minutes for
BIOSCAN-5M's 5.15 M images) and the pixels are thrown away. The header check opens the file with Pillow (format,
size) and applies the safe loader's limits (pixels, aspect ratio, allowed formats) without decoding, and then
catches truncation cheaply: a JPEG must end with its end-of-image marker, a PNG's chunks must pass their CRCs up
to ``IEND`` (Pillow's ``verify``). Any other format, or a file that fails any of these, is decoded by the safe
loader, which then either accepts it or gives its own one-line error. What header mode does not catch is damage
inside a structurally complete file (e.g. flipped bytes in a JPEG's compressed data); such a file fails, by name,
when it is decoded for training or embedding instead (``RELIABILITY.md``).
"""

from __future__ import annotations

import io
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from modeling_bioscanclip.constants_bioscanclip import (
    IMAGE_FORMATS,
    MAX_IMAGE_ASPECT_RATIO,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
)
from modeling_bioscanclip.errors_bioscanclip import BioscanImageError

__all__ = ["VERIFY_MODES", "image_problems", "verify_image"]

VERIFY_MODES = ("header", "decode", "none")
"""How images are checked while preparing: header and structure only (default), a full decode, or not at all."""

_JPEG_END = b"\xff\xd9"
_PARALLEL_MIN = 512  # fewer images than this are checked in the calling process (a pool costs ~0.1 s to start)


def verify_image(data: bytes, *, name: str, mode: str = "header") -> None:
    """Raises :class:`BioscanImageError` (one line naming ``name``) when ``data`` is not a usable image.

    Example:

    ```python
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGB", (8, 4)).save(buffer, format="JPEG")
    >>> verify_image(buffer.getvalue(), name="ok.jpg")
    >>> try:
    ...     verify_image(buffer.getvalue()[:-40], name="cut.jpg")  # no end marker: decoded, and refused
    ... except BioscanImageError as error:
    ...     print(str(error).split(" (")[0])
    cut.jpg: corrupt image

    ```
    """
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {mode!r}")
    if mode == "none":
        return
    if mode == "header" and _header_complete(data, name):
        return
    # Imported here: the safe loader lives in the Hub code, which must never import dataset_scripts.
    from modeling_bioscanclip.image_processing_bioscanclip import load_image_safely

    load_image_safely(data, name=name)


def _header_complete(data: bytes, name: str) -> bool:
    """Whether the header check alone accepts ``data``; ``False`` sends it to the full decode."""
    from modeling_bioscanclip.image_processing_bioscanclip import _check_geometry  # the safe loader's own limits

    if not data or len(data) > MAX_IMAGE_BYTES:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
        with opened:
            _check_geometry(opened.width, opened.height, name, MAX_IMAGE_PIXELS, MAX_IMAGE_ASPECT_RATIO)
            if opened.format == "JPEG":
                return data[-64:].rstrip(b"\x00")[-2:] == _JPEG_END  # NUL padding allowed
            if opened.format == "PNG":
                opened.verify()  # chunk CRCs up to IEND, without inflating the pixels
                return True
    except BioscanImageError:
        raise
    except Exception:  # noqa: BLE001 (any Pillow failure: the full decode gives the error its one line)
        return False
    return False


def _file_problem(path: str, mode: str) -> str | None:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error})"
    try:
        verify_image(data, name=path, mode=mode)
    except BioscanImageError as error:
        return f"corrupt ({error})"
    return None


def _problems(paths: list[str], mode: str) -> list[str | None]:
    return [_file_problem(path, mode) for path in paths]


def image_problems(paths: list[str], mode: str = "header", num_proc: int | None = None) -> list[str | None]:
    """What is wrong with each image file (``None``: usable; ``"missing"``, ``"unreadable (...)"``, ``"corrupt
    (...)"``), in the order given; ``num_proc`` > 1 checks them in that many processes."""
    if mode == "none":
        return [None] * len(paths)
    if not num_proc or num_proc < 2 or len(paths) < _PARALLEL_MIN:
        return _problems(paths, mode)
    step = -(-len(paths) // (num_proc * 8))  # several pieces per process, so one slow piece does not stall
    pieces = [paths[start : start + step] for start in range(0, len(paths), step)]
    with ProcessPoolExecutor(max_workers=num_proc) as pool:
        return [problem for part in pool.map(_problems, pieces, [mode] * len(pieces)) for problem in part]
