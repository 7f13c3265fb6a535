"""Decoding: images in any mode become RGB, masks become 0/1, label masks become class ids through a palette."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from sam_peft.data import (
    DataFileError,
    SegmentationDecoder,
    open_image,
    thresholded_masks,
    to_binary_mask,
    to_label_map,
    to_rgb,
)
from sam_peft.data.decoding import palette_table


def _saved(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return str(path)


def _roundtrip(image: Image.Image, suffix: str, tmp_path) -> Image.Image:
    return open_image(_saved(image, tmp_path / f"image{suffix}"))


GREY = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("RGBA", ".png"), ("LA", ".png"), ("L", ".png"), ("P", ".png"), ("1", ".png"), ("CMYK", ".jpg"), ("L", ".tif")],
)
def test_common_modes_load_as_rgb(tmp_path, mode, suffix):
    rgb = to_rgb(_roundtrip(Image.fromarray(GREY).convert(mode), suffix, tmp_path))
    assert rgb.mode == "RGB" and rgb.size == (8, 6)


def test_palette_with_transparency_loads_as_rgb(tmp_path):
    image = Image.fromarray(GREY).convert("P")
    image.info["transparency"] = 0
    assert to_rgb(_roundtrip(image, ".png", tmp_path)).mode == "RGB"


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_sixteen_bit_images_are_rescaled_to_eight_bits(tmp_path, suffix):
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image = _roundtrip(Image.fromarray(values), suffix, tmp_path)
    assert image.mode.startswith("I")
    rgb = np.asarray(to_rgb(image))
    assert rgb.dtype == np.uint8 and rgb[0, :, 0].tolist() == [0, 128, 255] and (rgb[..., 0] == rgb[..., 2]).all()


def test_float_images_in_unit_range_are_scaled(tmp_path):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    rgb = np.asarray(to_rgb(_roundtrip(Image.fromarray(values), ".tif", tmp_path)))
    assert rgb[0, :, 1].tolist() == [0, 128, 255]


def test_in_memory_values_are_accepted():
    array = np.zeros((4, 5, 3), np.uint8)
    assert open_image(array).size == (5, 4)
    assert open_image({"bytes": _png_bytes(array), "path": "x.png"}).size == (5, 4)
    assert open_image(Image.fromarray(array)).size == (5, 4)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_unreadable_bytes_are_named_by_their_path():
    with pytest.raises(DataFileError, match=r"Cannot read image file shots/broken\.png"):
        open_image({"bytes": b"garbage", "path": "shots/broken.png"})


def test_masks_are_thresholded_at_128():
    mask = Image.fromarray(np.array([[0, 127, 128, 255]], np.uint8))
    assert to_binary_mask(mask).tolist() == [[0, 0, 1, 1]]
    assert to_binary_mask(mask, threshold=200).tolist() == [[0, 0, 0, 1]]


def test_anti_aliased_jpeg_masks_become_binary(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    decoded = to_binary_mask(_roundtrip(Image.fromarray(mask), ".jpg", tmp_path))
    assert set(np.unique(decoded)) == {0, 1} and abs(int(decoded.sum()) - 256) <= 16


def test_zero_one_masks_are_kept():
    mask = Image.fromarray(np.array([[0, 1, 1]], np.uint8))
    assert to_binary_mask(mask).tolist() == [[0, 1, 1]]


def test_colour_and_alpha_masks():
    red = np.zeros((2, 2, 3), np.uint8)
    red[0] = (255, 0, 0)
    assert to_binary_mask(Image.fromarray(red)).tolist() == [[1, 1], [0, 0]]
    white_on_transparent = np.full((2, 2, 4), 255, np.uint8)
    white_on_transparent[1, :, 3] = 0
    assert to_binary_mask(Image.fromarray(white_on_transparent)).tolist() == [[1, 1], [0, 0]]


def test_sixteen_bit_masks():
    assert to_binary_mask(Image.fromarray(np.array([[0, 65535]], np.uint16))).tolist() == [[0, 1]]
    assert to_binary_mask(Image.fromarray(np.array([[0, 255]], np.uint16))).tolist() == [[0, 1]]


PALETTE = palette_table({(0, 0, 0): 0, (255, 0, 0): 1, (255, 255, 255): 2})


def test_colour_coded_labels_map_through_the_palette():
    rgb = np.array([[[0, 0, 0], [255, 0, 0]], [[255, 255, 255], [255, 0, 0]]], np.uint8)
    assert to_label_map(Image.fromarray(rgb), PALETTE).tolist() == [[0, 1], [2, 1]]


def test_palette_may_be_a_list_of_colours():
    assert palette_table([(0, 0, 0), (9, 9, 9)]) == ((0, 0, 0, 0), (9, 9, 9, 1))


def test_unknown_colour_is_an_error_naming_the_file():
    rgb = np.array([[[0, 0, 0], [1, 2, 3]]], np.uint8)
    with pytest.raises(DataFileError, match=r"masks/a\.png has 1 colour\(s\) not in the palette: \(1, 2, 3\)"):
        to_label_map(Image.fromarray(rgb), PALETTE, source="masks/a.png")


def test_index_masks_keep_their_ids_and_are_checked():
    image = Image.fromarray(np.array([[0, 3, 255]], np.uint8)).convert("P")
    assert to_label_map(image, num_labels=4).tolist() == [[0, 3, 255]]
    with pytest.raises(DataFileError, match=r"m\.png has class ids \[3\] outside 0\.\.2"):
        to_label_map(image, num_labels=3, source="m.png")


def test_colour_coded_mask_without_palette_is_an_error():
    rgb = np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8)
    with pytest.raises(DataFileError, match="pass a palette"):
        to_label_map(Image.fromarray(rgb), source="m.png")


def test_decoder_checks_sizes_and_returns_pil_images(tmp_path):
    image = _saved(Image.new("RGB", (6, 4)), tmp_path / "a.jpg")
    mask = _saved(Image.new("L", (6, 4), 255), tmp_path / "a.png")
    small = _saved(Image.new("L", (3, 4)), tmp_path / "b.png")
    decoded = SegmentationDecoder()({"image": [image], "mask": [mask], "id": ["a"]})
    assert decoded["image"][0].mode == "RGB" and np.asarray(decoded["mask"][0]).max() == 1
    with pytest.raises(DataFileError, match=r"b\.png is 3x4 but its image .*a\.jpg is 6x4.*row 'a'"):
        SegmentationDecoder()({"image": [image], "mask": [small], "id": ["a"]})


def test_decoder_rejects_an_unknown_target():
    with pytest.raises(ValueError, match="target"):
        SegmentationDecoder(target="masks")


def test_palette_masks_with_zero_one_indices_use_the_indices():
    image = Image.fromarray(np.array([[0, 1]], np.uint8)).convert("P")
    image.putpalette([0, 0, 0, 64, 0, 0])
    assert to_binary_mask(image).tolist() == [[0, 1]]
    grey = Image.fromarray(np.array([[0, 2]], np.uint8)).convert("P")
    grey.putpalette([0, 0, 0, 9, 9, 9, 200, 200, 200])
    assert to_binary_mask(grey).tolist() == [[0, 1]]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [((0, 100), np.uint8), ((0, 1), np.uint8), ((0, 255), np.uint8), ((0, 65535), np.uint16), ((0, 40), np.uint16)],
)
def test_two_valued_masks_take_the_larger_value_as_foreground(values, dtype):
    mask = np.array([[values[0], values[1], values[1]], [values[0], values[0], values[1]]], dtype)
    assert to_binary_mask(Image.fromarray(mask)).tolist() == [[0, 1, 1], [0, 0, 1]]


def test_two_valued_mask_below_the_threshold_is_read_through_the_decoder(tmp_path):
    """A 0/100 PNG used to decode as all background (IoU 0 in training, without a word)."""
    image = _saved(Image.new("RGB", (3, 2)), tmp_path / "a.png")
    mask = _saved(Image.fromarray(np.array([[0, 100, 100], [0, 0, 0]], np.uint8)), tmp_path / "a_mask.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two values: no thresholding, no warning
        decoded = SegmentationDecoder()({"image": [image], "mask": [mask], "id": ["a"]})
    assert np.asarray(decoded["mask"][0]).tolist() == [[0, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (0, np.uint8, 0),
        (1, np.uint8, 1),
        (100, np.uint8, 0),
        (128, np.uint8, 1),
        (255, np.uint8, 1),
        (300, np.uint16, 0),
        (65535, np.uint16, 1),
    ],
)
def test_one_valued_masks_are_all_background_or_all_foreground_by_the_threshold(value, dtype, expected):
    mask = np.full((2, 3), value, dtype)
    assert to_binary_mask(Image.fromarray(mask)).tolist() == [[expected] * 3] * 2


def test_masks_of_more_than_two_values_are_thresholded_with_one_warning_per_process():
    thresholded_masks(reset=True)
    soft = Image.fromarray(np.array([[0, 60, 127, 128, 250]], np.uint8))
    with pytest.warns(UserWarning, match=r"Mask masks/a\.jpg has more than two values.*thresholded at 128") as caught:
        assert to_binary_mask(soft, source="masks/a.jpg").tolist() == [[0, 0, 0, 1, 1]]
        assert to_binary_mask(soft, threshold=60, source="masks/b.jpg").tolist() == [[0, 1, 1, 1, 1]]
        to_binary_mask(Image.fromarray(np.array([[0, 255]], np.uint8)), source="masks/c.png")  # two values
    assert len(caught) == 1
    assert thresholded_masks(reset=True) == ["masks/a.jpg", "masks/b.jpg"]
    assert thresholded_masks() == []
    with pytest.warns(UserWarning, match=r"masks/b\.jpg"):  # warns again after a reset
        to_binary_mask(soft, source="masks/b.jpg")
    thresholded_masks(reset=True)


def test_sixteen_bit_soft_masks_are_thresholded_on_the_sixteen_bit_scale():
    thresholded_masks(reset=True)
    mask = np.array([[0, 257 * 127, 257 * 128, 65535]], np.uint16)
    with pytest.warns(UserWarning, match="more than two values"):
        assert to_binary_mask(Image.fromarray(mask)).tolist() == [[0, 0, 1, 1]]
    assert thresholded_masks(reset=True) == ["<mask>"]


EXIF_ROTATE_CLOCKWISE = 6  # EXIF orientation: display the stored pixels turned 90 degrees clockwise


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_CLOCKWISE
    return exif


def _quadrants(height: int, width: int) -> np.ndarray:
    """An RGB image of flat blocks (robust to JPEG), different under every rotation and flip."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2, : width // 2] = (255, 0, 0)
    rgb[height // 2 :, width // 2 :] = (0, 0, 255)
    rgb[: height // 2, width // 2 :] = (0, 255, 0)
    return rgb


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
    stored = _quadrants(32, 48)
    path = _saved(Image.fromarray(stored), tmp_path / "phone.jpg", exif=_rotated_exif(), quality=95)
    image = open_image(path)
    assert image.size == (32, 48)  # (width, height) of the displayed image
    upright = np.rot90(stored, k=-1)
    assert np.abs(np.asarray(to_rgb(image)).astype(int) - upright).mean() < 6
    assert image.getexif().get(0x0112) in (None, 1)  # turned once: the tag is gone


def test_exif_rotated_png_mask_is_read_upright_exactly(tmp_path):
    stored = np.zeros((6, 8), np.uint8)
    stored[0, :3] = 255
    stored[5, 7] = 255
    mask = open_image(_saved(Image.fromarray(stored), tmp_path / "m.png", exif=_rotated_exif()))
    assert mask.size == (6, 8) and np.array_equal(to_binary_mask(mask), np.rot90(stored, k=-1) // 255)


def test_in_memory_images_are_turned_upright_too(tmp_path):
    stored = _quadrants(32, 48)
    with Image.open(_saved(Image.fromarray(stored), tmp_path / "phone.jpg", exif=_rotated_exif())) as image:
        assert open_image(image).size == (32, 48)
        assert image.size == (48, 32)  # the caller's image is left as it is


def test_decoder_pairs_an_exif_rotated_photo_with_a_mask_drawn_on_the_displayed_image(tmp_path):
    image = _saved(Image.fromarray(_quadrants(32, 48)), tmp_path / "a.jpg", exif=_rotated_exif())
    drawn = np.zeros((48, 32), np.uint8)  # (height, width) of the displayed photo
    drawn[4:20, 20:28] = 255  # inside the red block as displayed (top right), away from JPEG-blurred edges
    mask = _saved(Image.fromarray(drawn), tmp_path / "a.png")
    decoded = SegmentationDecoder()({"image": [image], "mask": [mask], "id": ["a"]})
    rgb, target = np.asarray(decoded["image"][0]), np.asarray(decoded["mask"][0])
    assert rgb.shape == (48, 32, 3) and target.shape == (48, 32) and target.sum() == 16 * 8
    assert rgb[target == 1, 0].min() > 200 and rgb[target == 1, 1:].max() < 60  # the mask lies on red pixels
