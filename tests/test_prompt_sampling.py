"""Prompts from ground truth (`sam_peft.data.prompts`): the geometry of boxes, points and corrective clicks, their
reproducibility, and their acceptance by transformers' SAM and SAM 2 prompt encoders."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam_peft.data import PADDING_POINT_LABEL, boxes_from_masks, next_click, sample_points
from sam_peft.modeling import random_sam

SIZE = 32


def rectangles(*spans: tuple[int, int, int, int], size: int = SIZE) -> torch.Tensor:
    """`(N, size, size)` bool masks, one filled rectangle `(row0, row1, col0, col1)` (inclusive) each."""
    masks = torch.zeros(len(spans), size, size, dtype=torch.bool)
    for mask, (row0, row1, col0, col1) in zip(masks, spans, strict=True):
        mask[row0 : row1 + 1, col0 : col1 + 1] = True
    return masks


def disc(radius: float, size: int, centre: float) -> torch.Tensor:
    """`(size, size)` bool: the pixels whose centre (row, col) lies within `radius` of `(centre, centre)`."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows - centre) ** 2 + (cols - centre) ** 2).sqrt() <= radius


def at(masks: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """The value of each object's mask under each of its points `(N, 1, k, 2)` (x, y) pixel indices: `(N, k)`."""
    cols, rows = points[:, 0, :, 0].long(), points[:, 0, :, 1].long()
    return masks[torch.arange(len(masks))[:, None], rows, cols]


# --- boxes


def test_boxes_are_the_tight_inclusive_boxes():
    masks = rectangles((3, 5, 4, 8), (10, 31, 0, 1), (0, 0, 31, 31))
    masks[0, 6, 2] = True  # an L: one more pixel below-left of the rectangle
    expected = torch.tensor([[2, 3, 8, 6], [0, 10, 1, 31], [31, 0, 31, 0]], dtype=torch.float32)
    boxes = boxes_from_masks(masks)
    assert boxes.shape == (3, 1, 4) and boxes.dtype == torch.float32
    assert torch.equal(boxes[:, 0], expected)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes[:, 0].long().tolist(), strict=True):
        assert mask[y0 : y1 + 1, x0 : x1 + 1].sum() == mask.sum()  # the box holds the whole object
        assert mask[y0].any() and mask[y1].any() and mask[:, x0].any() and mask[:, x1].any()  # and no more


def test_boxes_hold_the_valid_part_and_stay_in_it():
    valid = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    valid[:20, :24] = True  # the image; the rest is padding
    masks = rectangles((15, 25, 20, 28))
    assert torch.equal(boxes_from_masks(masks, valid=valid)[0, 0], torch.tensor([20.0, 15.0, 23.0, 19.0]))
    jittered = boxes_from_masks(masks.expand(50, -1, -1), jitter=(5, 5), generator=0, valid=valid)
    assert torch.equal(jittered[:, 0, 2:], torch.tensor([[23.0, 19.0]]).expand(50, -1))  # clipped at the image


def test_box_jitter_stays_within_bounds():
    spans = [(8, 20, 6, 25), (0, 3, 28, 31), (14, 15, 14, 14)]
    masks = rectangles(*spans).repeat(100, 1, 1)
    tight = boxes_from_masks(masks)[:, 0]
    boxes = boxes_from_masks(masks, jitter=5, generator=0)[:, 0]
    shift = torch.cat([tight[:, :2] - boxes[:, :2], boxes[:, 2:] - tight[:, 2:]], dim=1)  # outwards positive
    assert shift.abs().max() <= 5
    assert (shift > 0).any() and (shift < 0).any()  # outwards and inwards
    assert ((boxes >= 0) & (boxes <= SIZE - 1)).all()  # clipped to the image
    centre = (tight[:, :2] + tight[:, 2:]) / 2
    assert (boxes[:, :2] <= centre.ceil()).all() and (boxes[:, 2:] >= centre.floor()).all()  # never inside out
    # the first object is far enough from the border and big enough: every shift of [-5, 5] occurs
    first = shift[0::3]
    assert set(first.unique().tolist()) == set(range(-5, 6))
    # the second touches the top and right borders: outward shifts are clipped away
    second = boxes[1::3]
    assert (second[:, 1] == 0).sum() > 30 and (second[:, 2] == 31).sum() > 30
    # MedSAM's jitter: 0 to 20 px outwards only, the box always holds the object
    medsam = boxes_from_masks(masks, jitter=(0, 20), generator=0)[:, 0]
    assert (medsam[:, :2] <= tight[:, :2]).all() and (medsam[:, 2:] >= tight[:, 2:]).all()
    assert (tight[:, :2] - medsam[:, :2] > 5).any() and (medsam[:, 2:] - tight[:, 2:] > 5).any()


def test_box_jitter_is_reproducible():
    masks = rectangles((8, 20, 6, 25), (2, 9, 3, 5))
    first = boxes_from_masks(masks, jitter=8, generator=3)
    assert torch.equal(first, boxes_from_masks(masks, jitter=8, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(first, boxes_from_masks(masks, jitter=8, generator=4))


def test_empty_mask_has_no_box():
    masks = rectangles((1, 2, 1, 2), (0, 0, 0, 0))
    masks[1] = False
    with pytest.raises(ValueError, match="object 1: empty mask: no box"):
        boxes_from_masks(masks)
    valid = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    with pytest.raises(ValueError, match="object 0: empty mask: no box"):  # all of it in the padding
        boxes_from_masks(masks[:1], valid=valid)


# --- points


def test_points_fall_inside_and_outside_their_objects():
    masks = rectangles((2, 12, 3, 20), (20, 30, 15, 29), (0, 31, 0, 9))
    valid = torch.ones(SIZE, SIZE, dtype=torch.bool)
    valid[:, 26:] = False  # padding on the right
    valid[28:] = False  # and at the bottom
    for strategy in ("uniform", "interior"):
        points, labels = sample_points(masks, 4, 6, strategy, generator=0, valid=valid)
        assert points.shape == (3, 1, 10, 2) and points.dtype == torch.float32
        assert labels.shape == (3, 1, 10) and labels.dtype == torch.long
        assert (labels[:, 0, :4] == 1).all() and (labels[:, 0, 4:] == 0).all()
        assert torch.equal(points, points.round())  # pixel indices
        assert at(masks, points[:, :, :4]).all() and at(valid.expand(3, -1, -1), points).all()
        assert not at(masks, points[:, :, 4:]).any()
        for object_points in points[:, 0]:  # distinct pixels
            assert len({tuple(point) for point in object_points.tolist()}) == 10


def test_uniform_points_are_uniform():
    # 2 of the 4 pixels of a 2 x 2 square, 600 times: each of the 6 pairs about 100 times
    masks = rectangles((5, 6, 5, 6)).expand(600, -1, -1)
    points, _ = sample_points(masks, 2, generator=0)
    pairs = [frozenset(map(tuple, object_points)) for object_points in points[:, 0].tolist()]
    counts = {pair: pairs.count(pair) for pair in set(pairs)}
    assert len(counts) == 6 and all(len(pair) == 2 for pair in counts)
    assert all(60 < count < 140 for count in counts.values()), counts


def test_interior_points_keep_away_from_the_boundary():
    radius, centre = 40.0, 63.5
    masks = disc(radius, 128, centre)[None].expand(4, -1, -1)
    depths = {}
    for strategy in ("uniform", "interior"):
        points, _ = sample_points(masks, 100, strategy=strategy, generator=0)
        offsets = points[:, 0] - centre  # (x, y) pixel indices are the pixel centres' coordinates
        depths[strategy] = (radius - offsets.norm(dim=-1)).mean().item()
    # expected depths in a disc: radius / 3 (uniform), radius / 2 (proportional to the depth)
    assert depths["uniform"] == pytest.approx(radius / 3, abs=2.5)
    assert depths["interior"] == pytest.approx(radius / 2, abs=2.5)
    assert depths["interior"] > depths["uniform"] + 4


def test_too_few_pixels_give_padding_points():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1, 1:4] = True  # 3 pixels: 3 of 5 positives
    masks[1] = True
    masks[1, 0, 0] = False  # one background pixel: 1 of 2 negatives
    points, labels = sample_points(masks, 5, 2, generator=0)
    assert labels[0, 0].tolist() == [1, 1, 1, PADDING_POINT_LABEL, PADDING_POINT_LABEL, 0, 0]
    assert labels[1, 0].tolist() == [1] * 5 + [0, PADDING_POINT_LABEL]
    assert sorted(map(tuple, points[0, 0, :3].tolist())) == [(1.0, 1.0), (2.0, 1.0), (3.0, 1.0)]  # all of them
    assert points[1, 0, 5].tolist() == [0.0, 0.0]
    _, interior = sample_points(masks, 5, 2, "interior", generator=0)
    assert torch.equal(interior, labels)
    _, empty = sample_points(torch.zeros(1, 4, 4, dtype=torch.bool), 2, 1, generator=0)
    assert empty[0, 0].tolist() == [PADDING_POINT_LABEL, PADDING_POINT_LABEL, 0]


def test_points_are_reproducible():
    masks = rectangles((2, 12, 3, 20), (20, 30, 15, 29))
    for strategy in ("uniform", "interior"):
        first = sample_points(masks, 3, 3, strategy, generator=5)
        again = sample_points(masks, 3, 3, strategy, generator=torch.Generator().manual_seed(5))
        other = sample_points(masks, 3, 3, strategy, generator=6)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
        assert not torch.equal(first[0], other[0])


def test_bad_inputs_are_refused():
    masks = rectangles((2, 12, 3, 20))
    with pytest.raises(ValueError, match="binary"):
        sample_points(masks.float() * 0.7)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        boxes_from_masks(masks[0])
    with pytest.raises(ValueError, match="strategy"):
        sample_points(masks, strategy="edge")
    with pytest.raises(ValueError, match="at least one point"):
        sample_points(masks, 0, 0)
    with pytest.raises(ValueError, match="valid"):
        sample_points(masks, valid=torch.ones(3, SIZE, SIZE, dtype=torch.bool))
    with pytest.raises(ValueError, match="mode"):
        next_click(masks, masks, mode="nearest")
    with pytest.raises(ValueError, match="jitter"):
        boxes_from_masks(masks, jitter=(3, 1))
    with pytest.raises(TypeError, match="generator"):
        sample_points(masks, generator=1.5)


# --- corrective clicks


def test_click_at_the_centre_of_a_missed_object():
    target = rectangles((10, 14, 20, 24))  # a 5 x 5 square, missed entirely: its centre pixel is (12, 22)
    points, labels = next_click(torch.zeros_like(target), target)
    assert points.shape == (1, 1, 1, 2) and labels.shape == (1, 1, 1) and labels.dtype == torch.long
    assert points[0, 0, 0].tolist() == [22.0, 12.0] and labels.item() == 1


def test_negative_click_in_a_false_positive():
    target = rectangles((2, 8, 2, 8))
    pred = target | rectangles((20, 26, 10, 16))[0]  # a 7 x 7 blob more: its centre pixel is (23, 13)
    points, labels = next_click(pred, target)
    assert points[0, 0, 0].tolist() == [13.0, 23.0] and labels.item() == 0


def test_the_largest_error_region_wins():
    target = rectangles((2, 4, 2, 4), (2, 8, 2, 8))  # 0: a missed 3 x 3; 1: a missed 7 x 7
    false_positive = rectangles((20, 24, 20, 24))[0]  # 5 x 5 predicted outside both
    pred = false_positive.expand(2, -1, -1)
    points, labels = next_click(pred, target)
    assert points[0, 0, 0].tolist() == [22.0, 22.0] and labels[0].item() == 0
    assert points[1, 0, 0].tolist() == [5.0, 5.0] and labels[1].item() == 1
    # a tie goes to the false negative
    tie = next_click(rectangles((20, 24, 20, 24)), rectangles((2, 6, 2, 6)))
    assert tie[0][0, 0, 0].tolist() == [4.0, 4.0] and tie[1].item() == 1


def test_regions_touching_at_a_corner_are_apart():
    # 4-connectivity: two 3 x 3 false negatives touching at a corner (18 pixels) are two regions of 9, smaller
    # than one 4 x 4 false positive (16)
    target = rectangles((0, 2, 10, 12))
    target[0, 3:6, 13:16] = True
    pred = rectangles((20, 23, 20, 23))
    points, labels = next_click(pred, target)
    assert labels.item() == 0 and points[0, 0, 0].tolist() == [21.0, 21.0]  # the first of its 4 centre pixels


def test_the_image_border_is_a_boundary():
    # a square missed in the image's corner: its centre, not the corner pixel farthest from the rest of it
    target = rectangles((0, 4, 0, 4))
    points, labels = next_click(torch.zeros_like(target), target)
    assert points[0, 0, 0].tolist() == [2.0, 2.0] and labels.item() == 1


def test_no_error_gives_a_padding_point():
    target = rectangles((3, 9, 3, 9), (10, 20, 5, 6))
    pred = target.clone()
    pred[1, 25:, :] = True  # an error in the padding only
    valid = torch.ones(2, SIZE, SIZE, dtype=torch.bool)
    valid[:, 24:] = False
    points, labels = next_click(pred, target, valid)
    assert (labels == PADDING_POINT_LABEL).all() and (points == 0).all()
    _, labels = next_click(pred, target)  # without the valid mask, object 1 has a false positive
    assert labels[:, 0, 0].tolist() == [PADDING_POINT_LABEL, 0]


def test_random_clicks_stay_in_the_largest_region():
    target = rectangles((2, 9, 2, 11), (2, 9, 2, 11))
    pred = torch.zeros_like(target)
    pred[1] = target[1]
    pred[1, 5:9, 4:10] = False  # object 1: a 4 x 6 false negative
    pred[1, 20:22, 20:22] = True  # and a smaller 2 x 2 false positive
    largest = torch.stack([target[0], target[1] & ~pred[1]])
    seen = set()
    for seed in range(30):
        points, labels = next_click(pred, target, mode="random", generator=seed)
        assert labels[:, 0, 0].tolist() == [1, 1]
        assert at(largest, points).all()
        seen.add(tuple(points[1, 0, 0].tolist()))
    assert len(seen) > 5  # not one fixed pixel
    first = next_click(pred, target, mode="random", generator=7)
    again = next_click(pred, target, mode="random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


# --- transformers' prompt encoders


@pytest.mark.parametrize("variant", ["tiny", "sam2-tiny"])
def test_prompts_drive_transformers_sam(variant):
    torch.manual_seed(0)
    model = random_sam(variant, seed=0)
    size = model.prompt_encoder.input_image_size
    masks = torch.stack([disc(30, size, 60), disc(12, size, 30), torch.zeros(size, size, dtype=torch.bool)])
    masks[2, 100:103, 90:91] = True  # 3 pixels: padding among the positives
    points, labels = sample_points(masks, 4, 2, "interior", generator=0)
    boxes = boxes_from_masks(masks, jitter=(0, 5), generator=0)
    assert (labels == PADDING_POINT_LABEL).any()
    with torch.no_grad():
        sparse, _ = model.prompt_encoder(points, labels, None, None)
        padding = labels[..., None].expand_as(sparse[:, :, : labels.shape[-1]]) == PADDING_POINT_LABEL
        assert (sparse[:, :, : labels.shape[-1]][padding] == 0).all()  # the encoder ignores the padding points
        embeddings = model.get_image_embeddings(torch.randn(1, 3, size, size))
        per_object = (
            embeddings.expand(3, -1, -1, -1)
            if isinstance(embeddings, torch.Tensor)
            else [level.expand(3, -1, -1, -1) for level in embeddings]
        )
        outputs = model(
            image_embeddings=per_object,
            input_points=points,
            input_labels=labels,
            input_boxes=boxes,
            multimask_output=False,
        )
        assert torch.isfinite(outputs.pred_masks).all()
        # the interactive scheme: corrective clicks and the previous logits as the mask prompt
        mask_prompt = None
        for _ in range(2):
            low_res = outputs.pred_masks[:, 0]  # (N, 1, 4h, 4w)
            pred = F.interpolate(low_res, size=(size, size), mode="bilinear")[:, 0] > 0
            new_points, new_labels = next_click(pred, masks, mode="random", generator=0)
            points, labels = torch.cat([points, new_points], dim=2), torch.cat([labels, new_labels], dim=2)
            mask_prompt = low_res
            outputs = model(
                image_embeddings=per_object,
                input_points=points,
                input_labels=labels,
                input_masks=mask_prompt,
                multimask_output=False,
            )
        assert outputs.pred_masks.shape[:3] == (3, 1, 1) and torch.isfinite(outputs.pred_masks).all()
        assert points.shape == (3, 1, 8, 2)


def test_points_are_pixel_indices_for_the_encoder():
    # SamPromptEncoder adds 0.5 itself: a point (x, y) = (c, r) is embedded at the centre of pixel (r, c)
    model = random_sam("tiny", seed=0)
    encoder = model.prompt_encoder
    points = torch.tensor([[[[22.0, 12.0]]]])
    with torch.no_grad():
        sparse, _ = encoder(points, torch.ones(1, 1, 1, dtype=torch.long), None, None)
        centre = encoder.shared_embedding(points + 0.5, (encoder.input_image_size,) * 2)
    assert torch.allclose(sparse[0, 0, 0], centre[0, 0, 0] + encoder.point_embed[1].weight[0])
