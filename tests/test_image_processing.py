"""The safe image loader and the Pillow image processor."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from modeling_bioscanclip import BioscanClipImageProcessor, BioscanImageError, load_image_safely


def encode(image: Image.Image, format: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny IDAT: nothing big is ever allocated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (png_header_only(31623, 31623), "exceeds"),  # 1e9 px: Pillow itself would refuse
        (png_header_only(10_000, 10_000), "exceeds"),  # 1e8 px: Pillow only warns; our cap refuses
        (png_header_only(4000, 1), "aspect ratio"),
        (b"this is not an image at all", "not a decodable image"),
        (b"", "no image data"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "not a decodable image"),
    ],
    ids=["1e9-pixels", "1e8-pixels", "4000x1-strip", "random-bytes", "empty", "gif"],
)
def test_unsafe_inputs_are_refused(data, message):
    with pytest.raises(BioscanImageError, match=message):
        load_image_safely(data)


def test_truncated_jpeg_is_refused(realdata):
    data = (realdata / "zahrag__BIOSCAN-1M/cropped_images/BIOUG68001-C12.jpg").read_bytes()
    with pytest.raises(BioscanImageError, match="truncated"):
        load_image_safely(data[: len(data) // 2], name="half.jpg")


def test_library_leaves_pillow_global_flags_alone():
    # In a fresh process: the demo app (imported by other tests) sets its own backstop on purpose.
    code = (
        "import PIL.Image as I, PIL.ImageFile as F, modeling_bioscanclip, bioscan_clip.identification; "
        "print(I.MAX_IMAGE_PIXELS, F.LOAD_TRUNCATED_IMAGES)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["89478485", "False"], result.stderr[-2000:]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(BioscanImageError, match="nope.jpg"):
        load_image_safely(tmp_path / "nope.jpg")


def test_modes_convert_to_rgb_correctly():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image_safely(encode(transparent)).getpixel((0, 0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16))
    value = load_image_safely(encode(grey16)).getpixel((0, 0))
    assert value == (156, 156, 156)  # 40000 / 65535 * 255, not saturated to 255
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert load_image_safely(encode(cmyk, "JPEG")).mode == "RGB"
    palette = Image.new("P", (4, 4))
    assert load_image_safely(encode(palette)).mode == "RGB"
    for mode in ("L", "LA"):
        assert load_image_safely(encode(Image.new(mode, (4, 4)))).mode == "RGB"


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (4, 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    loaded = load_image_safely(encode(image, "JPEG", exif=exif.tobytes()))
    assert loaded.size == (2, 4)


def test_processor_shapes_and_equivalent_inputs():
    processor = BioscanClipImageProcessor(resize_shortest_edge=40, crop_size=32)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    as_pil = processor(Image.fromarray(array))["pixel_values"]
    as_hwc = processor(array)["pixel_values"]
    as_chw = processor(np.moveaxis(array, -1, 0))["pixel_values"]
    as_png = processor(encode(Image.fromarray(array)))["pixel_values"]
    assert as_pil.shape == (1, 3, 32, 32)
    for other in (as_hwc, as_chw, as_png):
        torch.testing.assert_close(other, as_pil, atol=1e-6, rtol=0)
    tiny = processor(Image.new("RGB", (1, 1), (255, 255, 255)))["pixel_values"]
    assert tiny.shape == (1, 3, 32, 32) and torch.allclose(tiny, torch.ones_like(tiny))


def test_reference_normalisation_keeps_unit_range(realdata):
    processor = BioscanClipImageProcessor(do_normalize=False)
    images = sorted((realdata / "zahrag__BIOSCAN-1M/cropped_images").glob("*.jpg"))
    pixels = processor([str(path) for path in images])["pixel_values"]
    assert pixels.shape == (len(images), 3, 224, 224)
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.std() > 0.05


def test_large_real_photo_goes_through(realdata):
    # 2880x2160 order exemplars exercise the resize path.
    path = next(iter(sorted((realdata / "zahrag__BIOSCAN-1M/order_exemplar_images").glob("*.jpg"))))
    pixels = BioscanClipImageProcessor()(str(path))["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and torch.isfinite(pixels).all()


def test_real_photos_load_as_pillow_decodes_them(realdata):
    # The loader hands back the decoded picture itself (no copies): the same pixels as a plain Pillow decode,
    # still usable once the loader has returned, whether it read a path or bytes.
    paths = sorted((realdata / "3dlg-hcvc__Bioscan-ImgFilter/images").glob("*.jpg"))[:4]
    for path in paths:
        with Image.open(path) as plain:
            expected = np.asarray(ImageOps.exif_transpose(plain).convert("RGB"))
        for source in (str(path), path.read_bytes()):
            loaded = load_image_safely(source)
            assert loaded.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(loaded), expected)
            assert loaded.resize((32, 24)).size == (32, 24)


def test_normalisation_uses_each_channels_mean_and_std():
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's
    processor = BioscanClipImageProcessor(resize_shortest_edge=32, crop_size=32, image_mean=mean, image_std=std)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    expected = (np.asarray(image, dtype=np.float64).transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / (
        np.array(std)[:, None, None]
    )
    np.testing.assert_allclose(processor(image)["pixel_values"][0].numpy(), expected, atol=1e-5)


def test_processor_save_load(tmp_path):
    processor = BioscanClipImageProcessor(resize_shortest_edge=72, crop_size=64, do_normalize=False)
    processor.save_pretrained(tmp_path)
    loaded = BioscanClipImageProcessor.from_pretrained(tmp_path)
    assert (loaded.resize_shortest_edge, loaded.crop_size, loaded.do_normalize) == (72, 64, False)


def test_bad_processor_settings():
    with pytest.raises(ValueError, match="crop_size"):
        BioscanClipImageProcessor(resize_shortest_edge=100, crop_size=224)


def test_augmentation_replaces_resize_and_crop():
    processor = BioscanClipImageProcessor(resize_shortest_edge=40, crop_size=32)
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, size=(50, 60, 3), dtype=np.uint8))
    seen = []

    def top_left_crop(pil: Image.Image) -> Image.Image:
        seen.append(pil.size)
        return pil.crop((0, 0, 32, 32))

    pixels = processor([encode(image)], augmentation=top_left_crop)["pixel_values"]
    # The augmentation got the decoded image at full size (no resize first), and its output was only rescaled
    # and normalised.
    assert seen == [(60, 50)]
    expected = (np.asarray(image.crop((0, 0, 32, 32)), dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(pixels[0].numpy(), expected, atol=1e-6)
    assert not torch.allclose(pixels, processor([encode(image)])["pixel_values"])
    # A greyscale result is turned into RGB like any other input.
    grey = processor(image, augmentation=lambda pil: top_left_crop(pil).convert("L"))["pixel_values"]
    assert grey.shape == (1, 3, 32, 32)


def test_augmentation_of_the_wrong_size_is_refused():
    processor = BioscanClipImageProcessor(resize_shortest_edge=40, crop_size=32)
    with pytest.raises(ValueError, match="expected a 32x32 image \\(crop_size\\), got 40x30"):
        processor(Image.new("RGB", (50, 40)), augmentation=lambda pil: pil.resize((40, 30)))
    with pytest.raises(TypeError, match="PIL image"):
        processor(Image.new("RGB", (50, 40)), augmentation=lambda pil: np.asarray(pil))
    # The safe loader still runs first: an unsafe input never reaches the augmentation.
    with pytest.raises(BioscanImageError, match="aspect ratio"):
        processor(png_header_only(4000, 1), augmentation=lambda pil: pil)


def test_image_names_in_errors():
    processor = BioscanClipImageProcessor(resize_shortest_edge=40, crop_size=32)
    with pytest.raises(BioscanImageError, match=r"record BIOUG7 \(image\): not a decodable image"):
        processor([encode(Image.new("RGB", (8, 8))), b"junk"], names=["BIOUG6", "BIOUG7"])


# torchvision's CenterCrop offset is int(round((W - 224) / 2)), half to even; these are the real cropped_resized
# BIOSCAN-1M photos (256 px high), with the left offset worked out by hand from their widths.
REFERENCE_LEFT_OFFSETS = {"BIOUG68001-C12": (291, 34), "BIOUG68020-A01": (375, 76), "BIOUG68021-F12": (279, 28),
                          "BIOUG68104-C02": (354, 65), "BIOUG68134-F03": (345, 60)}  # fmt: skip


def test_reference_mode_crops_real_photos_as_torchvision_does(realdata):
    processor = BioscanClipImageProcessor(do_normalize=False, reference_mode=True)
    default = BioscanClipImageProcessor(do_normalize=False)
    shifted = 0
    for name, (width, left) in REFERENCE_LEFT_OFFSETS.items():
        path = realdata / f"zahrag__BIOSCAN-1M/cropped_images/cropped_resized_{name}.jpg"
        image = Image.open(path).convert("RGB")
        assert image.size == (width, 256)  # already 256 high: ToTensor then the crop, no resampling
        expected = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[:, 16:240, left : left + 224] / 255.0
        np.testing.assert_array_equal(processor(str(path), return_tensors="np")["pixel_values"][0], expected)
        floor_left = (width - 224) // 2
        if floor_left != left:
            shifted += 1
            assert not np.array_equal(default(str(path), return_tensors="np")["pixel_values"][0], expected)
    assert shifted == 3  # 291, 375 and 279 px round up where the default mode floors


def test_reference_mode_resizes_float_pixels_with_a_truncated_long_side():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (768, 1022, 3), dtype=np.uint8))
    processor = BioscanClipImageProcessor(do_normalize=False, reference_mode=True)
    pixels = processor(image)["pixel_values"][0]
    # torchvision: long side int(256 * 1022 / 768) = 340 (Pillow's round would give 341), float, antialiased.
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)[None]
    resized = torch.nn.functional.interpolate(tensor, size=(256, 340), mode="bilinear", antialias=True)[0]
    torch.testing.assert_close(pixels, resized[:, 16:240, 58:282], rtol=0, atol=0)
    assert pixels.dtype == torch.float32 and len(torch.unique(pixels)) > 256  # not rounded back to 8 bits
    with pytest.raises(ValueError, match="jpeg_draft"):
        BioscanClipImageProcessor(reference_mode=True, jpeg_draft=True)
    assert BioscanClipImageProcessor.from_dict(processor.to_dict()).reference_mode  # saved with the processor


def test_train_augmentation_crops_the_full_image_in_one_resample():
    from bioscan_clip.data.specimens import ImageAugmentation

    augmentation = ImageAugmentation(resize_shortest_edge=72, crop_size=64)
    # A smooth 1024x768 picture (the size of a BIOSCAN-1M photo) whose pixels say where they come from.
    y, x = np.mgrid[0:768, 0:1024].astype(np.float32)
    pixels = np.stack([x / 4, y / 3, 127 + 100 * np.sin(x / 90) * np.cos(y / 70)], axis=-1)
    full = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    resized_first = full.resize((96, 72), Image.Resampling.BILINEAR)  # what the original crops from
    for seed in range(8):
        # The crop box is drawn on the shortest-edge size either way, so the same draws give the same crop: from
        # the full image in one resample, and from the image the original resizes first.
        once = np.asarray(augmentation(full, np.random.default_rng(seed)), dtype=np.float32)
        twice = np.asarray(augmentation(resized_first, np.random.default_rng(seed)), dtype=np.float32)
        other = np.asarray(augmentation(full, np.random.default_rng(seed + 100)), dtype=np.float32)
        assert once.shape == (64, 64, 3)
        assert np.abs(once - twice).mean() < 1.0
        assert np.abs(once - other).mean() > 3 * np.abs(once - twice).mean()


def test_train_augmentation_in_one_resample_on_real_photos(realdata):
    from bioscan_clip.data.specimens import ImageAugmentation

    augmentation = ImageAugmentation(resize_shortest_edge=72, crop_size=64)
    for path in sorted((realdata / "3dlg-hcvc__Bioscan-ImgFilter/images").glob("*.jpg"))[:3]:
        full = load_image_safely(str(path))
        resized_first = full.resize((96, 72), Image.Resampling.BILINEAR)
        for seed in range(4):
            once = np.asarray(augmentation(full, np.random.default_rng(seed)), dtype=np.float32)
            twice = np.asarray(augmentation(resized_first, np.random.default_rng(seed)), dtype=np.float32)
            other = np.asarray(augmentation(full, np.random.default_rng(seed + 100)), dtype=np.float32)
            # A real photo's detail survives one resample a little better than two: 0.2-1.2 grey levels apart.
            assert np.abs(once - twice).mean() < 2.0
            assert np.abs(once - other).mean() > 3 * np.abs(once - twice).mean()
