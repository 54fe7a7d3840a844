"""Post-processing: identical to transformers' where it is right, and the cases where it is not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import MaskFormerImageProcessor as ReferenceProcessor

from conftest import fake_segmentation_outputs, tiny_config, tiny_hf_model
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor, inference
from maskformer_hf.inference import (
    instance_inference,
    panoptic_inference,
    semantic_inference,
    semantic_inference_tta,
    semantic_scores,
)
from maskformer_hf.resampling import (
    CellMaps,
    resample_dense,
    resampled_above,
    resampled_argmax,
    resampled_count,
    resampling,
)

REFERENCE = ReferenceProcessor()


def outputs(class_logits, mask_logits, pixel_mask=None):
    return SimpleNamespace(class_queries_logits=class_logits, masks_queries_logits=mask_logits, pixel_mask=pixel_mask)


def assert_same_up_to_ties(ours: torch.Tensor, theirs: torch.Tensor, scores: torch.Tensor, tolerance: float = 1e-5):
    """Maps equal except where the reference's two best scores `(C, H, W)` tie within float rounding."""
    differ = ours != theirs
    if differ.any():
        top2 = scores.topk(2, dim=0).values
        gap = (top2[0] - top2[1]) / top2[0].abs().clamp(min=1e-12)
        assert (gap[differ] < tolerance).all(), "maps differ beyond float ties"
        assert differ.float().mean() < 1e-4


def segments(result, background):
    """{(label, mask bytes)}: a segmentation compared without its ids."""
    seg = result["segmentation"]
    return sorted((s["label_id"], round(s["score"], 4), (seg == s["id"]).numpy().tobytes())
                  for s in result["segments_info"] if s["id"] != background)


# --- the cell-bounded machinery equals evaluating every pixel --------------------------------------
@pytest.mark.parametrize("target,extent", [((151, 203), None), ((30, 25), None), ((97, 131), (19.25, 26.5)),
                                           ((19, 27), (19.0, 27.0))])
def test_cell_bounded_rules_equal_dense_evaluation(target, extent):
    torch.manual_seed(0)
    n, m = 20, 27
    values = torch.nn.functional.interpolate(torch.randn(2, 9, 5, 6) * 4, size=(n, m), mode="bicubic").sigmoid()
    res = resampling((n, m), target, extent)
    dense = resample_dense(values, res)  # (2, 9, T_h, T_w)
    weights = torch.rand(2, 9)
    maps = CellMaps(values)  # a batch of two images sharing the sampling plan
    assignment = resampled_argmax(maps, res, weights=weights)
    expected = (dense * weights[:, :, None, None]).argmax(1)
    assert torch.equal(assignment.paint(res), expected)
    assert assignment.settled.float().mean() > 0.3  # most cells never evaluated per pixel
    for b in range(2):
        assert torch.equal(assignment.areas(res, 9)[b], torch.bincount(expected[b].flatten(), minlength=9))
    for strict in (False, True):
        assert torch.equal(resampled_count(maps, res, 0.5, strict), ((dense > 0.5) if strict else (dense >= 0.5)).sum((2, 3)))
    assert torch.equal(resampled_above(maps, res, 0.4), dense > 0.4)
    on = torch.where(dense > 0.6, dense * weights[:, :, None, None], torch.tensor(-1.0))
    best, index = on.max(1)
    masked = resampled_argmax(maps, res, weights=weights, on_threshold=0.6)
    assert torch.equal(masked.paint(res), torch.where(best < 0, -1, index))
    lut = torch.tensor([[5, 4, 3, 2, 1, 0, 9, 9, 9]] * 2, dtype=torch.int32)
    assert torch.equal(masked.paint(res, lut, fill=-7), torch.where(best < 0, -7, lut[0][index]))


def test_resampling_without_crop_is_f_interpolate():
    values = torch.randn(3, 16, 24)
    for size in ((64, 96), (50, 77), (9, 11)):
        expected = torch.nn.functional.interpolate(values[None], size=size, mode="bilinear", align_corners=False)[0]
        assert torch.allclose(resample_dense(values, resampling((16, 24), size)), expected, atol=1e-5)


# --- semantic ----------------------------------------------------------------------------------
def test_semantic_matches_transformers_on_a_transformers_model(hf_kind):
    model = tiny_hf_model(hf_kind)
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    for target_sizes in (None, [(64, 96), (131, 77)]):
        ours = MaskFormerImageProcessor().post_process_semantic_segmentation(out, target_sizes=target_sizes)
        theirs = REFERENCE.post_process_semantic_segmentation(out, target_sizes=target_sizes,
                                                              return_segmentation_scores=True)
        for a, b in zip(ours, theirs):
            assert a.shape == b.segmentation.shape and a.dtype == b.segmentation.dtype == torch.int64
            if target_sizes is None:
                assert torch.equal(a, b.segmentation)
            else:
                assert_same_up_to_ties(a, b.segmentation, b.segmentation_scores)


def test_semantic_matches_transformers_on_realistic_logits():
    class_logits, mask_logits = fake_segmentation_outputs(batch=3, queries=30, classes=20, size=(40, 48), confident=8)
    sizes = [(160, 192), (123, 301), (40, 48)]
    ours = semantic_inference(class_logits, mask_logits, target_sizes=sizes)
    theirs = REFERENCE.post_process_semantic_segmentation(outputs(class_logits, mask_logits), target_sizes=sizes,
                                                          return_segmentation_scores=True)
    for a, b in zip(ours, theirs):
        assert_same_up_to_ties(a, b.segmentation, b.segmentation_scores)
        assert len(a.unique()) >= 4
    assert all(torch.equal(a, b.segmentation) for a, b in zip(ours, theirs))  # no tie in this case


def test_padding_is_cropped_before_resizing():
    """Mask logits of a padded input: ours crops the padding away, transformers stretches it in."""
    class_logits, mask_logits = fake_segmentation_outputs(batch=1, size=(16, 32), confident=5, seed=3)
    pixel_mask = torch.zeros(1, 64, 128, dtype=torch.long)
    pixel_mask[:, :, :96] = 1  # a 64 x 96 image padded to 64 x 128: its mask logits are the first 24 columns
    target = [(48, 72)]
    ours = semantic_inference(class_logits, mask_logits, pixel_mask, target)[0]
    alone = semantic_inference(class_logits, mask_logits[..., :24], None, target)[0]
    theirs = REFERENCE.post_process_semantic_segmentation(outputs(class_logits, mask_logits), target_sizes=target)[0]
    assert torch.equal(ours, alone)
    assert (theirs != alone).float().mean() > 0.05
    # Fractional extents: a 64 x 90 image covers 22.5 mask columns; the result is its own crop, resized.
    pixel_mask[:, :, 90:] = 0
    cropped = semantic_inference(class_logits, mask_logits, pixel_mask, None)[0]
    assert cropped.shape == (16, 23)
    for rule in (panoptic_inference, instance_inference):
        result = rule(class_logits, mask_logits, pixel_mask, target)[0]
        assert result["segmentation"].shape == (48, 72)


# --- panoptic ----------------------------------------------------------------------------------
def test_panoptic_matches_transformers():
    # Confident classes (score 1.0 in float32): transformers' score-weighted mask area equals the paper's.
    class_logits, mask_logits = fake_segmentation_outputs(batch=3, queries=30, classes=20, size=(40, 48), confident=8,
                                                          class_margin=40.0, edge_sharpness=20.0, seed=5)
    sizes = [(160, 192), (123, 301), (40, 48)]
    ours = panoptic_inference(class_logits, mask_logits, target_sizes=sizes)
    theirs = REFERENCE.post_process_panoptic_segmentation(outputs(class_logits, mask_logits), target_sizes=sizes,
                                                          label_ids_to_fuse=set())
    for a, b in zip(ours, theirs):
        assert a["segmentation"].dtype == torch.int32 and len(a["segments_info"]) >= 5
        assert [s["id"] for s in a["segments_info"]] == list(range(1, len(a["segments_info"]) + 1))
        assert segments(a, 0) == segments(b, 0)
        assert torch.equal(a["segmentation"], b["segmentation"])


def test_panoptic_mask_area_is_unweighted_and_fused_segments_are_listed_once():
    """transformers measures a query's own mask on score-weighted probabilities, so a confident query
    (0.7) whose mask is on (0.55) loses its whole segment; and a fused class gets one segments_info
    entry per query. Ours: the paper's m_i >= 0.5, one entry per segment."""
    class_logits = torch.full((1, 4, 4), -20.0)
    class_logits[0, :, -1] = 0.0
    class_logits[0, 0, 0] = 0.85  # class 0, p ~ 0.70
    class_logits[0, 1, 1] = 8.0  # class 1 ("stuff"), two queries
    class_logits[0, 2, 1] = 7.0
    class_logits[0, 3, 2] = 8.0
    mask_logits = torch.full((1, 4, 8, 8), -8.0)
    mask_logits[0, 0, :, :4] = 0.2  # p = 0.55
    mask_logits[0, 1, :4, 4:] = 8.0
    mask_logits[0, 2, 4:, 4:] = 8.0
    out = outputs(class_logits, mask_logits)
    theirs = REFERENCE.post_process_panoptic_segmentation(out, label_ids_to_fuse={1})[0]
    ours = MaskFormerImageProcessor(label_ids_to_fuse=[1]).post_process_panoptic_segmentation(out)[0]
    assert (theirs["segmentation"][:, :4] == 0).all()  # the left half is void
    assert [s["id"] for s in theirs["segments_info"]] == [1, 1]  # duplicated id
    assert [(s["label_id"], s["was_fused"]) for s in ours["segments_info"]] == [(0, False), (1, True)]
    assert (ours["segmentation"][:, :4] == 1).all() and (ours["segmentation"][:, 4:] == 2).all()
    assert ours["segments_info"][1]["score"] == pytest.approx(torch.softmax(class_logits[0, 1], -1).max().item(), abs=1e-6)
    # Nothing above the threshold: an all-void map (transformers returns -1s).
    empty = panoptic_inference(class_logits, mask_logits, threshold=0.9999)[0]
    assert empty["segments_info"] == [] and (empty["segmentation"] == 0).all()


def test_panoptic_overlap_threshold_and_mask_threshold_are_honoured():
    class_logits = torch.full((1, 2, 3), -20.0)
    class_logits[0, 0, 0] = class_logits[0, 1, 1] = 10.0
    mask_logits = torch.full((1, 2, 10, 10), -10.0)
    mask_logits[0, 0, :, 3:] = 10.0  # query 0: columns 3-9, all its own
    mask_logits[0, 1, :, :3] = 12.0  # query 1 wins columns 0-2 ...
    mask_logits[0, 1, :, 3:6] = 0.5  # ... and loses 3-5 (p = 0.62: in its mask at 0.5, not at 0.7)
    for overlap, mask_threshold, kept in ((0.8, 0.5, [0]), (0.5, 0.5, [0, 1]), (0.8, 0.7, [0, 1])):
        result = panoptic_inference(class_logits, mask_logits, mask_threshold=mask_threshold,
                                    overlap_mask_area_threshold=overlap)[0]
        assert [s["label_id"] for s in result["segments_info"]] == kept


# --- instance ----------------------------------------------------------------------------------
def test_instance_matches_transformers_at_mask_resolution():
    # Instances that do not overlap: then transformers' painting order does not matter.
    class_logits, mask_logits = fake_segmentation_outputs(batch=2, queries=30, classes=20, size=(40, 48), confident=8,
                                                          edge_sharpness=1000.0, seed=7)
    confident = (class_logits.softmax(-1)[..., :-1].amax(-1) > 0.5)[..., None, None]  # (B, Q, 1, 1)
    winner = mask_logits.masked_fill(~confident, -1e9).argmax(1, keepdim=True)
    is_winner = torch.arange(mask_logits.shape[1])[None, :, None, None] == winner
    mask_logits = torch.where(confident & ~is_winner, -mask_logits.abs() - 1, mask_logits)
    assert (((mask_logits > 0) & confident).sum(1) <= 1).all()
    ours = instance_inference(class_logits, mask_logits, threshold=0.5)
    theirs = REFERENCE.post_process_instance_segmentation(outputs(class_logits, mask_logits), threshold=0.5)
    for a, b in zip(ours, theirs):
        assert len(a["segments_info"]) >= 5
        assert segments(a, -1) == segments(b, -1)
        assert torch.equal(a["segmentation"] >= 0, b["segmentation"] >= 0)
        assert [s["score"] for s in a["segments_info"]] == sorted([s["score"] for s in a["segments_info"]], reverse=True)


def test_instance_honours_mask_threshold_and_overlap():
    """transformers binarises at 0.5 whatever mask_threshold is, and keeps a duplicate query (same
    mask, second-best class) painted over the first; ours honours both thresholds."""
    class_logits = torch.full((1, 3, 4), -20.0)
    class_logits[0, 0, 0], class_logits[0, 0, 1] = 3.0, 2.5  # query 0: class 0 (0.62) or class 1 (0.38)
    class_logits[0, 1, 2] = 10.0
    class_logits[0, 2, 3] = 10.0  # query 2: no object
    mask_logits = torch.full((1, 3, 8, 8), -10.0)
    mask_logits[0, 0, :, :4] = 10.0
    mask_logits[0, 0, :, 4:6] = 0.4  # p = 0.6: inside the mask at 0.5, outside at 0.7
    mask_logits[0, 1, :, 6:] = 10.0
    out = outputs(class_logits, mask_logits)
    theirs = [REFERENCE.post_process_instance_segmentation(out, threshold=0.3, mask_threshold=t)[0] for t in (0.5, 0.7)]
    assert torch.equal(theirs[0]["segmentation"], theirs[1]["segmentation"])  # mask_threshold ignored
    assert sorted(s["label_id"] for s in theirs[0]["segments_info"]) == [0, 1, 2]  # duplicate kept
    ours = [instance_inference(class_logits, mask_logits, threshold=0.3, mask_threshold=t)[0] for t in (0.5, 0.7)]
    assert [s["label_id"] for s in ours[0]["segments_info"]] == [2, 0]  # the duplicate is hidden: dropped
    assert (ours[0]["segmentation"] == 1).sum() == 48 and (ours[1]["segmentation"] == 1).sum() == 32
    both = instance_inference(class_logits, mask_logits, threshold=0.3, overlap_mask_area_threshold=0.0,
                              return_binary_maps=True)[0]
    assert [s["label_id"] for s in both["segments_info"]] == [2, 0, 1]
    assert both["segmentation"].shape == (3, 8, 8) and torch.equal(both["segmentation"][1], both["segmentation"][2])


def test_instance_masks_are_resized_smoothly():
    """transformers binarises at mask resolution and resizes the binary mask (4x4 staircases); ours
    thresholds the bilinearly resized probability, as its panoptic rule does."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    mask_logits = (3.0 * (xx - yy + 0.3))[None, None]  # a diagonal edge
    class_logits = torch.tensor([[[10.0, -10.0]]])
    target = [(64, 64)]
    ours = instance_inference(class_logits, mask_logits, target_sizes=target)[0]["segmentation"] == 0
    theirs = REFERENCE.post_process_instance_segmentation(outputs(class_logits, mask_logits), target_sizes=target)[0]
    expected = torch.nn.functional.interpolate(mask_logits.sigmoid(), size=target[0], mode="bilinear")[0, 0] > 0.5
    assert torch.equal(ours, expected)
    assert (theirs["segmentation"] == 0).ne(expected).sum() > 50


# --- end to end with our model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MaskFormerForUniversalSegmentation(tiny_config(num_labels=5)).eval()


def test_batched_and_single_images_agree(tiny_model):
    """The processor pads, the model honours the padding, post-processing crops it: a padded batch
    gives each image's own result."""
    torch.manual_seed(2)
    images = [torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), torch.randint(0, 256, (3, 40, 44), dtype=torch.uint8)]
    processor = MaskFormerImageProcessor(do_resize=False, size_divisor=0)
    sizes = [(48, 64), (40, 44)]
    with torch.no_grad():
        batch = tiny_model(**processor(images))
        singles = [tiny_model(**processor(image)) for image in images]
    together = processor.post_process_semantic_segmentation(batch, target_sizes=sizes)
    for i, single in enumerate(singles):
        alone = processor.post_process_semantic_segmentation(single, target_sizes=[sizes[i]])[0]
        assert (together[i] == alone).float().mean() > 0.999


def test_tta_is_flip_equivariant_and_reduces_to_plain_inference(tiny_model):
    torch.manual_seed(3)
    pixel_values = torch.randn(1, 3, 32, 64)
    pixel_mask = torch.ones(1, 32, 64, dtype=torch.long)
    pixel_mask[:, :, 48:] = 0
    with torch.no_grad():
        out = tiny_model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    plain = semantic_inference(out.class_queries_logits, out.masks_queries_logits, pixel_mask)
    single = semantic_inference_tta(tiny_model, pixel_values, pixel_mask, scales=(1.0,), flip=False, size_divisor=0)
    assert torch.equal(single[0], semantic_scores(out.class_queries_logits, out.masks_queries_logits, pixel_mask,
                                                  [(32, 48)])[0].argmax(0))
    assert single[0].shape == (32, 48) and plain[0].shape == (8, 12)
    scales = (0.75, 1.25)
    full = semantic_inference_tta(tiny_model, pixel_values, pixel_mask, scales=scales, target_sizes=[(24, 36)])[0]
    mirrored = pixel_values[..., :48].flip(-1)
    flipped = semantic_inference_tta(tiny_model, mirrored, None, scales=scales, target_sizes=[(24, 36)])[0]
    assert full.shape == (24, 36) and (flipped.flip(-1) == full).float().mean() > 0.999


def test_processor_methods_and_errors():
    class_logits, mask_logits = fake_segmentation_outputs(batch=2)
    processor = MaskFormerImageProcessor()
    out = {"class_queries_logits": class_logits, "masks_queries_logits": mask_logits}
    assert len(processor.post_process_semantic_segmentation(out)) == 2
    with pytest.raises(ValueError, match="one \\(height, width\\) per image"):
        processor.post_process_semantic_segmentation(out, target_sizes=[(4, 4)])
    with pytest.raises(ValueError, match="mask_threshold"):
        processor.post_process_instance_segmentation(out, mask_threshold=1.5)
    with pytest.raises(ValueError, match="class_queries_logits and masks_queries_logits"):
        processor.post_process_panoptic_segmentation({"logits": class_logits})
    with pytest.raises(ValueError, match="no valid pixel"):
        inference.semantic_inference(class_logits, mask_logits, torch.zeros(2, 8, 8))
