"""Image processor for BIOSCAN-CLIP, on Pillow and numpy only (no torchvision), and the one safe image loader.

Every entry point of the package (processor, data builders, demo) decodes images through
:func:`load_image_safely`, which reads the size from the header before decoding, restricts the formats, and
converts every mode to RGB the right way (see ``shared/reference/STYLE_AND_RELIABILITY.md`` §2b).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import BaseImageProcessor, BatchFeature

from .constants_bioscanclip import (
    IMAGE_CROP,
    IMAGE_FORMATS,
    IMAGE_RESIZE,
    MAX_IMAGE_ASPECT_RATIO,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
)
from .errors_bioscanclip import BioscanImageError, check_names, record_label

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image | np.ndarray
Augmentation = Callable[[Image.Image], Image.Image]


def _check_geometry(width: int, height: int, name: str, max_pixels: int, max_aspect_ratio: float) -> None:
    if width < 1 or height < 1:
        raise BioscanImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BioscanImageError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} pixels"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect_ratio:
        raise BioscanImageError(
            f"{name}: aspect ratio {aspect:.1f} ({width}x{height}) exceeds the limit of {max_aspect_ratio:g}; "
            "resizing such a strip would allocate a huge image"
        )


def to_rgb(image: Image.Image, name: str = "image") -> Image.Image:
    """Converts any Pillow mode to 8-bit RGB without the usual pitfalls.

    16/32-bit greyscale is scaled to 8 bits (a plain ``convert("RGB")`` saturates it to white); float greyscale
    (mode ``F``, e.g. a 32-bit TIFF) by its range, see :func:`_float_grey_scale`; images with transparency are
    composited on white (a plain conversion leaks the colour hidden under alpha 0). ``name`` names the image in
    errors.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = _float_grey_scale(array, name)
        else:
            top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _float_grey_scale(array: np.ndarray, name: str) -> float:
    """The white of float pixels: 1 when they lie in [0, 1] (the usual range of float images; dividing them by 255
    made them near-black), else 255 or 65535 for float-stored 8- or 16-bit counts. Anything else is refused, not
    clipped."""
    if not np.isfinite(array).all():
        raise BioscanImageError(f"{name}: float pixels must be finite, got NaN or infinity")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > 65535:
        raise BioscanImageError(
            f"{name}: float pixels range over [{low:g}, {high:g}]; expected [0, 1] (or 8- or 16-bit counts)"
        )
    return 1.0 if high <= 1 else 255.0 if high <= 255 else 65535.0


def load_image_safely(
    source: ImageSource,
    *,
    name: str | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_IMAGE_ASPECT_RATIO,
    formats: Sequence[str] = IMAGE_FORMATS,
    min_side: int | None = None,
) -> Image.Image:
    """Decodes an image into an RGB ``PIL.Image``, refusing anything unsafe with one typed error.

    Args:
        source (`str`, `os.PathLike`, `bytes`, binary file object, `PIL.Image.Image` or `np.ndarray`):
            The image. Paths, bytes and file objects are decoded here; PIL images and arrays are checked and
            converted.
        name (`str`, *optional*):
            How to call the image in error messages; defaults to the path, or ``"<bytes>"``.
        max_bytes (`int`, *optional*, defaults to 50 MiB):
            Largest encoded size accepted, checked before reading.
        max_pixels (`int`, *optional*, defaults to 40 million):
            Largest ``width * height`` accepted, read from the header before any pixel is decoded.
        max_aspect_ratio (`float`, *optional*, defaults to 20):
            Largest ``long side / short side``; a 4000x1 strip would explode when its short side is resized.
        formats (`Sequence[str]`, *optional*):
            Pillow decoders allowed (JPEG, PNG, WEBP, TIFF, BMP by default).
        min_side (`int`, *optional*):
            A JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8: Pillow's draft mode) whose shorter side is
            still at least this; several times faster than a full decode that is then downscaled anyway.

    Returns:
        `PIL.Image.Image`: the first frame, EXIF orientation applied, mode RGB, fully loaded.

    Raises:
        `BioscanImageError`: unreadable, truncated, unsupported format, too many bytes or pixels, too elongated.

    Example:

    ```python
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("RGBA", (8, 4), (255, 0, 0, 0)).save(buffer, format="PNG")
    >>> image = load_image_safely(buffer.getvalue())
    >>> image.mode, image.size, image.getpixel((0, 0))
    ('RGB', (8, 4), (255, 255, 255))

    ```
    """
    if isinstance(source, Image.Image):
        label = name or "<PIL image>"
        _check_geometry(source.width, source.height, label, max_pixels, max_aspect_ratio)
        return to_rgb(source, label)
    if isinstance(source, np.ndarray):
        return load_image_safely(
            _array_to_pil(source, name or "<array>"),
            name=name or "<array>",
            max_pixels=max_pixels,
            max_aspect_ratio=max_aspect_ratio,
        )

    if isinstance(source, (str, os.PathLike)):
        label = name or os.fspath(source)
        try:
            size = os.path.getsize(source)
        except OSError as error:
            raise BioscanImageError(f"{label}: cannot read image file ({error.strerror or error})") from error
        if size > max_bytes:
            raise BioscanImageError(f"{label}: file is {size:,} bytes, over the limit of {max_bytes:,} bytes")
        if size == 0:
            raise BioscanImageError(f"{label}: file is empty")
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as error:  # a directory, no permission, a file gone since the size check
            raise BioscanImageError(f"{label}: cannot read image file ({error.strerror or error})") from error
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
        if len(data) > max_bytes:
            raise BioscanImageError(f"{label}: {len(data):,} bytes, over the limit of {max_bytes:,} bytes")
        if not data:
            raise BioscanImageError(f"{label}: no image data (0 bytes)")
    elif hasattr(source, "read"):
        label = name or getattr(source, "name", "<stream>")
        data = source.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BioscanImageError(f"{label}: stream is over the limit of {max_bytes:,} bytes")
    else:
        prefix = f"{name}: " if name else ""
        raise BioscanImageError(
            f"{prefix}expected a path, bytes, file object, PIL image or array, got {type(source).__name__}"
        )

    try:
        with warnings.catch_warnings():
            # Our own pixel cap below is stricter than the warning zone of Pillow's.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(formats))
        _check_geometry(image.width, image.height, label, max_pixels, max_aspect_ratio)
        image.seek(0)  # first frame only
        if min_side and image.format == "JPEG" and min(image.size) > 2 * min_side:
            factor = min_side / min(image.size)
            image.draft(image.mode, (math.ceil(image.width * factor), math.ceil(image.height * factor)))
        image.load()
        # In place: a copy of the whole picture only when its EXIF orientation asks for a turn. (Two full copies
        # here once cost three times the decode of a 1024x768 photo.) The image reads from bytes in memory, so
        # there is no file to close.
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image, label)
    except BioscanImageError:
        raise
    except UnidentifiedImageError as error:
        raise BioscanImageError(
            f"{label}: not a decodable image in an allowed format ({', '.join(formats)})"
        ) from error
    except Image.DecompressionBombError as error:
        raise BioscanImageError(f"{label}: rejected as a decompression bomb ({error})") from error
    except (OSError, ValueError, SyntaxError, IndexError, TypeError, EOFError) as error:
        reason = "truncated or corrupt" if "truncated" in str(error) else "corrupt"
        raise BioscanImageError(f"{label}: {reason} image ({error})") from error


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """HWC or CHW arrays, uint8 in [0, 255] or float in [0, 1], with 1, 3 or 4 channels."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise BioscanImageError(f"{name}: expected an array of shape (H, W, C) or (C, H, W), got {array.shape}")
    if array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise BioscanImageError(f"{name}: expected 1, 3 or 4 channels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise BioscanImageError(f"{name}: float arrays must hold finite values in [0, 1]")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise BioscanImageError(f"{name}: expected uint8 or float pixels, got dtype {array.dtype}")
    if array.shape[-1] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB" if array.shape[-1] == 3 else "RGBA")


class BioscanClipImageProcessor(BaseImageProcessor):
    r"""Resizes the shorter side, centre-crops, rescales to [0, 1] and optionally normalises.

    The defaults follow the original evaluation transform (resize 256, centre crop 224). The original feeds
    pixels in [0, 1] without normalisation; set ``do_normalize=False`` to reproduce it. For train-time
    augmentation, pass ``augmentation=`` to the call: it replaces the resize and crop, while decoding and
    rescaling stay this processor's.

    Args:
        resize_shortest_edge (`int`, *optional*, defaults to 256):
            Length of the shorter side after resizing (aspect ratio kept).
        crop_size (`int`, *optional*, defaults to 224):
            Side of the square centre crop.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to apply ``(x - image_mean) / image_std`` after rescaling to [0, 1].
        image_mean (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
        image_std (`list[float]`, *optional*, defaults to `[0.5, 0.5, 0.5]`):
            Normalisation statistics (the ViT AugReg weights of the paper expect 0.5/0.5).
        max_pixels (`int`, *optional*, defaults to 40 million):
        max_aspect_ratio (`float`, *optional*, defaults to 20):
            Caps enforced by :func:`load_image_safely` on every input.
        jpeg_draft (`bool`, *optional*, defaults to `False`):
            Decode a large JPEG at the smallest 1/2, 1/4 or 1/8 DCT scale still at least ``resize_shortest_edge``
            (several times faster; the pixels differ from a full decode, so it is opt-in until measured on real
            photos; refused in reference mode).
        reference_mode (`bool`, *optional*, defaults to `False`):
            Reproduce the original's torchvision transform exactly, for converted CLIBD weights: ``ToTensor``, then
            ``Resize`` on the float tensor (the longer side truncated, ``int(256 * long / short)``, bilinear with
            antialiasing, no rounding back to 8 bits), then ``CenterCrop`` with its offsets rounded
            (``round((H - 224) / 2)``, half to even). The default mode resizes with Pillow in 8 bits, rounds the
            longer side and floors the offsets; the two differ by up to one pixel of shift and the 8-bit rounding.

    Example:

    ```python
    >>> from PIL import Image
    >>> processor = BioscanClipImageProcessor(resize_shortest_edge=40, crop_size=32)
    >>> processor(Image.new("RGB", (80, 60)), return_tensors="pt")["pixel_values"].shape
    torch.Size([1, 3, 32, 32])

    ```
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        resize_shortest_edge: int = IMAGE_RESIZE,
        crop_size: int = IMAGE_CROP,
        do_normalize: bool = True,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        max_pixels: int = MAX_IMAGE_PIXELS,
        max_aspect_ratio: float = MAX_IMAGE_ASPECT_RATIO,
        jpeg_draft: bool = False,
        reference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        if reference_mode and jpeg_draft:
            raise ValueError("jpeg_draft changes the decoded pixels, so reference mode cannot use it")
        if crop_size < 1 or resize_shortest_edge < crop_size:
            raise ValueError(
                f"expected 1 <= crop_size <= resize_shortest_edge, got crop_size={crop_size}, "
                f"resize_shortest_edge={resize_shortest_edge}"
            )
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"expected 3 means and 3 positive stds, got mean={image_mean}, std={image_std}")
        super().__init__(**kwargs)
        self.resize_shortest_edge = int(resize_shortest_edge)
        self.crop_size = int(crop_size)
        self.do_normalize = bool(do_normalize)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.max_pixels = int(max_pixels)
        self.max_aspect_ratio = float(max_aspect_ratio)
        self.jpeg_draft = bool(jpeg_draft)
        self.reference_mode = bool(reference_mode)

    def load(self, source: ImageSource, name: str | None = None) -> Image.Image:
        """Decodes one input with this processor's caps (see :func:`load_image_safely`)."""
        return load_image_safely(source, name=name, max_pixels=self.max_pixels, max_aspect_ratio=self.max_aspect_ratio)

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        """Shorter side to ``resize_shortest_edge`` (bilinear, antialiased), then the centre square crop."""
        width, height = image.size
        scale = self.resize_shortest_edge / min(width, height)
        new_size = (max(self.crop_size, round(width * scale)), max(self.crop_size, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        left = (image.width - self.crop_size) // 2
        top = (image.height - self.crop_size) // 2
        return image.crop((left, top, left + self.crop_size, top + self.crop_size))

    def reference_resize_and_crop(self, image: Image.Image) -> np.ndarray:
        """The original's ``ToTensor -> Resize -> CenterCrop`` on float pixels: a float32 (3, crop, crop) array."""
        import torch  # only reference mode needs it; the default path stays on Pillow and numpy

        pixels = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32).transpose(2, 0, 1) / 255.0)
        height, width = pixels.shape[1:]
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.resize_shortest_edge, int(self.resize_shortest_edge * long / short)
        size = (new_long, new_short) if height > width else (new_short, new_long)
        if size != (height, width):
            pixels = torch.nn.functional.interpolate(
                pixels[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        top = int(round((size[0] - self.crop_size) / 2.0))
        left = int(round((size[1] - self.crop_size) / 2.0))
        return pixels[:, top : top + self.crop_size, left : left + self.crop_size].numpy()

    def to_array(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """A crop-size RGB image (or its float (3, H, W) pixels in [0, 1]) as a float32 (3, H, W) array,
        rescaled and optionally normalised."""
        if not self.do_normalize:
            if isinstance(image, np.ndarray):
                return image
            return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        if isinstance(image, np.ndarray):
            return (image - mean[:, None, None]) / std[:, None, None]
        # (x / 255 - mean) / std folded into one scale and one offset on the uint8 (H, W, 3) pixels: this runs for
        # every training image, in the loader, where each pass over the pixels costs loading time.
        array = np.multiply(np.asarray(image), 1.0 / (255.0 * std), dtype=np.float32)
        array -= mean / std
        return array.transpose(2, 0, 1)

    def augment(self, image: Image.Image, augmentation: Augmentation) -> Image.Image:
        """Applies a train-time ``augmentation`` in place of :meth:`resize_and_crop`, checking what it returns."""
        augmented = augmentation(image)
        if not isinstance(augmented, Image.Image):
            raise TypeError(f"augmentation: expected it to return a PIL image, got {type(augmented).__name__}")
        if augmented.size != (self.crop_size, self.crop_size):
            raise ValueError(
                f"augmentation: expected a {self.crop_size}x{self.crop_size} image (crop_size), "
                f"got {augmented.width}x{augmented.height}"
            )
        return to_rgb(augmented)

    def process_one(
        self, source: ImageSource, name: str | None = None, augmentation: Augmentation | None = None
    ) -> np.ndarray:
        """One image as a float32 (3, crop, crop) array: decode, resize and crop (or ``augmentation``), rescale."""
        if self.jpeg_draft:  # a large JPEG decoded straight at a scale near the size it is resized to
            image = load_image_safely(
                source,
                name=name,
                max_pixels=self.max_pixels,
                max_aspect_ratio=self.max_aspect_ratio,
                min_side=self.resize_shortest_edge,
            )
        else:
            image = self.load(source, name)
        if augmentation is not None:
            return self.to_array(self.augment(image, augmentation))
        if self.reference_mode:
            return self.to_array(self.reference_resize_and_crop(image))
        return self.to_array(self.resize_and_crop(image))

    def preprocess(
        self,
        images: ImageSource | Sequence[ImageSource],
        return_tensors: str | None = "pt",
        *,
        names: Sequence[Any] | None = None,
        augmentation: Augmentation | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Turns one image or a list of images into ``pixel_values`` of shape (batch, 3, crop, crop).

        Args:
            images: one image or a list (path, bytes, file object, PIL image or array).
            return_tensors (`str`, *optional*, defaults to ``"pt"``): ``"pt"``, ``"np"`` or `None` (numpy).
            names (`Sequence`, *optional*): one name per image for error messages (``record NAME (image): ...``);
                by default an error names the path, or the kind of input.
            augmentation (`Callable[[PIL.Image.Image], PIL.Image.Image]`, *optional*):
                Train-time transform applied instead of the resize and centre crop; it must return a
                ``crop_size`` x ``crop_size`` image (a `ValueError` names the size otherwise).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for the image processor: {sorted(kwargs)}")
        batch = as_image_list(images)
        if not batch:
            raise BioscanImageError("expected at least one image, got an empty list")
        check_names(names, len(batch), "image")
        arrays = [
            self.process_one(image, None if names is None else record_label(names[index], "image"), augmentation)
            for index, image in enumerate(batch)
        ]
        return BatchFeature({"pixel_values": np.stack(arrays)}, tensor_type=return_tensors)

    def __call__(
        self, images: ImageSource | Sequence[ImageSource], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)


def as_image_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """One image or a batch (a list, a tuple or a 4-D array) as a list of images."""
    if isinstance(images, (list, tuple)) or (isinstance(images, np.ndarray) and images.ndim == 4):
        return list(images)
    return [images]
