"""MaskFormerImageProcessor: parity with transformers' processor where it is right, fixes where it is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers import MaskFormerImageProcessor as ReferenceProcessor
from transformers.models.maskformer.image_processing_pil_maskformer import MaskFormerImageProcessorPil

from maskformer_hf import MaskFormerImageProcessor, segmentation_map_to_masks

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def voronoi_map(height: int, width: int, labels: list[int], seed: int) -> np.ndarray:
    """A label map of len(labels) regions (nearest of random centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((len(labels), 2)) * [height, width]
    yy, xx = np.mgrid[:height, :width]
    dist = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return np.asarray(labels)[dist.argmin(0)]


def images_and_maps(count: int = 3, size: tuple[int, int] = (45, 61)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]
    maps = [voronoi_map(*size, [0, 3, 7, 7, 12, 255], seed=i).astype(np.uint8) for i in range(count)]
    return images, maps


def assert_same_outputs(ours, theirs) -> None:
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max() <= 1e-5
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    assert len(ours["mask_labels"]) == len(theirs["mask_labels"])
    for a, b, c, d in zip(ours["mask_labels"], theirs["mask_labels"], ours["class_labels"], theirs["class_labels"]):
        assert a.dtype == torch.float32 and c.dtype == torch.int64
        assert torch.equal(a, b) and torch.equal(c, d)


# --- the label function the training collator imports -------------------------------------------
def test_segmentation_map_to_masks_semantic_golden():
    seg = torch.tensor([[0, 1, 1], [2, 2, 255], [0, 1, 2]], dtype=torch.uint8)
    masks, classes = segmentation_map_to_masks(seg, ignore_index=255)
    assert classes.tolist() == [0, 1, 2]
    assert masks.dtype == torch.float32 and masks.shape == (3, 3, 3)
    assert masks[0].tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert masks.sum(0)[1, 2] == 0  # ignore pixel in no mask
    reduced_masks, reduced = segmentation_map_to_masks(seg, ignore_index=255, do_reduce_labels=True)
    assert reduced.tolist() == [0, 1, 254]  # 0 -> ignore, k -> k - 1 (255 -> 254, as transformers)
    assert torch.equal(reduced_masks[:2], masks[1:])
    padded, _ = segmentation_map_to_masks(seg, ignore_index=255, padded_size=(4, 5))
    assert padded.shape == (3, 4, 5) and torch.equal(padded[:, :3, :3], masks) and padded[:, 3:].sum() == 0


def test_segmentation_map_to_masks_panoptic_ids_above_255():
    # Raw COCO panoptic ids (R + 256 G + 256^2 B), 0 = void; a crowd segment mapped to background (0).
    person, car, crowd = 3 + 256 * 40 + 65536 * 2, 200 + 256 * 7, 70000
    seg = torch.tensor([[0, person, person], [car, car, crowd], [person, 0, car]])
    mapping = {person: 1, car: 3, crowd: 0}
    masks, classes = segmentation_map_to_masks(seg, mapping, ignore_index=255, do_reduce_labels=True)
    assert classes.tolist() == [2, 0]  # ascending ids: car (1799) then person; classes shifted down
    assert masks[0].tolist() == [[0, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert masks[1].tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0]]
    # Without reduction: void handled by ignore_index=0, classes as mapped.
    _, plain = segmentation_map_to_masks(seg, {**mapping, crowd: 9}, ignore_index=0)
    assert plain.tolist() == [3, 9, 1]
    _, class_zero = segmentation_map_to_masks(seg, {**mapping, crowd: 0}, ignore_index=0)
    assert class_zero.tolist() == [3, 0, 1]  # ignore_index names a segment id here, class 0 stays
    only_person, classes = segmentation_map_to_masks(seg, {person: 1}, ignore_index=0)  # unlisted ids: void
    assert classes.tolist() == [1] and torch.equal(only_person[0], masks[1])
    from transformers.models.maskformer.image_processing_maskformer import convert_segmentation_map_to_binary_masks_fast
    with pytest.raises(KeyError):  # transformers: an unlisted id is an error
        convert_segmentation_map_to_binary_masks_fast(seg, {person: 1}, ignore_index=0)


def test_segmentation_map_to_masks_id_256_is_not_ignored():
    """transformers reduces instance ids before looking for ignore_index, so segment id 256 collides
    with 255 (ignore) and silently disappears; here only id 0 is void."""
    from transformers.models.maskformer.image_processing_maskformer import convert_segmentation_map_to_binary_masks_fast

    seg = torch.tensor([[0, 256], [300, 256]])
    mapping = {256: 1, 300: 2}
    _, theirs = convert_segmentation_map_to_binary_masks_fast(seg, mapping, ignore_index=255, do_reduce_labels=True)
    masks, ours = segmentation_map_to_masks(seg, mapping, ignore_index=255, do_reduce_labels=True)
    assert theirs.tolist() == [1]  # the segment with id 256 is lost
    assert ours.tolist() == [0, 1] and masks[0].tolist() == [[0, 1], [0, 1]]


def test_segmentation_map_to_masks_errors():
    seg = torch.tensor([[0, 1], [2, 3]])
    with pytest.raises(TypeError, match="integer ids"):
        segmentation_map_to_masks(seg.float())
    with pytest.raises(ValueError, match=r"expected \(height, width\)"):
        segmentation_map_to_masks(seg[None])
    with pytest.raises(ValueError, match="needs an ignore_index"):
        segmentation_map_to_masks(seg, do_reduce_labels=True)
    with pytest.raises(ValueError, match="num_labels=3"):
        segmentation_map_to_masks(seg, num_labels=3)
    with pytest.raises(ValueError, match=">= 0"):
        segmentation_map_to_masks(seg - 1)


# --- parity with transformers' processor ---------------------------------------------------------
@pytest.mark.parametrize("settings", [
    {},
    {"ignore_index": 255},
    {"ignore_index": 255, "do_reduce_labels": True},
    {"size": {"height": 40, "width": 50}, "ignore_index": 255},
    {"size": {"shortest_edge": 64, "longest_edge": 80}, "size_divisor": 0, "ignore_index": 255},
    {"do_resize": False, "do_normalize": False, "ignore_index": 255},
])
def test_matches_transformers_processor(settings):
    images, maps = images_and_maps()
    ours = MaskFormerImageProcessor(**settings)(images, segmentation_maps=maps, return_tensors="pt")
    theirs = ReferenceProcessor(**settings)(images, segmentation_maps=maps, return_tensors="pt")
    assert_same_outputs(ours, theirs)


def test_matches_transformers_on_instance_maps_and_input_kinds():
    images, _ = images_and_maps(2)
    instance = [voronoi_map(45, 61, [5, 1000, 70001, 333], seed=s).astype(np.int32) for s in (3, 4)]
    mapping = [{5: 1, 1000: 2, 70001: 3, 333: 2}, {5: 4, 1000: 0, 70001: 3, 333: 1}]
    ours = MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 100})(
        [Image.fromarray(images[0]), torch.from_numpy(images[1]).permute(2, 0, 1)],
        segmentation_maps=[Image.fromarray(instance[0]), torch.from_numpy(instance[1])],
        instance_id_to_semantic_id=mapping,
    )
    theirs = ReferenceProcessor(size={"shortest_edge": 64, "longest_edge": 100})(images, segmentation_maps=instance, instance_id_to_semantic_id=mapping,
                                         return_tensors="pt")
    assert_same_outputs(ours, theirs)


def test_padding_is_background_not_ignore_index():
    """transformers pads mask_labels with ignore_index (255): a 'mask' of value 255 over the padding."""
    images, maps = images_and_maps(2)
    images[1], maps[1] = images[1][:30, :50], maps[1][:30, :50]
    settings = {"ignore_index": 255, "do_resize": False}
    ours = MaskFormerImageProcessor(**settings)(images, segmentation_maps=maps)
    theirs = ReferenceProcessor(**settings)(images, segmentation_maps=maps, return_tensors="pt")
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max() <= 1e-5
    padding = theirs["pixel_mask"][1] == 0
    assert (theirs["mask_labels"][1][:, padding] == 255).all()  # the reference's wrong answer
    assert (ours["mask_labels"][1][:, padding] == 0).all()  # background
    valid = ~padding
    assert torch.equal(ours["mask_labels"][1][:, valid], theirs["mask_labels"][1][:, valid])
    assert set(ours["mask_labels"][1].unique().tolist()) == {0.0, 1.0}


def test_panoptic_rgb_png_and_16_bit_maps():
    """COCO panoptic PNGs (RGB-encoded ids) and 16-bit maps work; transformers' PIL-backend processor
    rejects ids above 255 when it resizes (its default torchvision one agrees with ours)."""
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    ids = voronoi_map(20, 30, [0, 5 + 256 * 3, 1 + 65536 * 2, 4000], seed=1)
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    mapping = {5 + 256 * 3: 7, 1 + 65536 * 2: 2, 4000: 9}
    processor = MaskFormerImageProcessor(do_resize=False, ignore_index=0)
    from_rgb = processor(image, segmentation_maps=Image.fromarray(rgb), instance_id_to_semantic_id=mapping)
    from_ids = processor(image, segmentation_maps=torch.from_numpy(ids), instance_id_to_semantic_id=mapping)
    assert from_rgb["class_labels"][0].tolist() == [7, 9, 2]  # ascending ids: 773, 4000, 131073
    assert torch.equal(from_rgb["mask_labels"][0], from_ids["mask_labels"][0])
    resize = {"size": {"shortest_edge": 40, "longest_edge": 80}, "ignore_index": 0}
    ours = MaskFormerImageProcessor(**resize)(image, segmentation_maps=ids, instance_id_to_semantic_id=mapping)
    theirs = ReferenceProcessor(**resize)(image, segmentation_maps=ids, instance_id_to_semantic_id=mapping,
                                          return_tensors="pt")
    assert_same_outputs(ours, theirs)
    with pytest.raises(ValueError, match=r"outside the range \[0, 255\]"):
        MaskFormerImageProcessorPil(**resize)(image, segmentation_maps=ids, instance_id_to_semantic_id=mapping,
                                              return_tensors="pt")

    sixteen = voronoi_map(20, 30, [0, 300, 65000], seed=2).astype(np.uint16)
    ours = processor(image, segmentation_maps=Image.fromarray(sixteen))
    assert ours["class_labels"][0].tolist() == [300, 65000]
    assert torch.equal(ours["mask_labels"][0][1], torch.from_numpy(sixteen == 65000).float())



def test_input_formats_agree():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    processor = MaskFormerImageProcessor(do_resize=False)
    reference = processor(rgb)["pixel_values"]
    for variant in (Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1), torch.from_numpy(rgb).permute(2, 0, 1)[None],
                    Image.fromarray(np.concatenate([rgb, np.full((21, 34, 1), 7, np.uint8)], -1)),  # RGBA: alpha dropped
                    rgb.astype(np.float32)):
        assert torch.allclose(processor(variant)["pixel_values"], reference, atol=1e-6)
    grey = rgb[..., 0]
    out = processor(Image.fromarray(grey))["pixel_values"][0]
    expected = (torch.from_numpy(grey).float() / 255 - MEAN) / STD
    assert out.shape == (3, 21, 34) and torch.allclose(out, expected, atol=1e-5)


def test_augmented_tensor_path_without_resize():
    """The training data path: augmented uint8 CHW tensors and int64 HW maps, do_resize=False."""
    images = [torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), torch.randint(0, 256, (3, 24, 40), dtype=torch.uint8)]
    maps = [torch.randint(0, 4, (32, 48)), torch.full((24, 40), 2)]
    maps[0][:5] = 255
    out = MaskFormerImageProcessor(ignore_index=255)(images, segmentation_maps=maps, do_resize=False)
    assert out["pixel_values"].shape == (2, 3, 32, 48) and out["pixel_mask"][1].sum() == 24 * 40
    assert torch.allclose(out["pixel_values"][1, :, :24, :40], (images[1].float() / 255 - MEAN) / STD, atol=1e-5)
    assert out["pixel_values"][1, :, 24:].abs().sum() == 0
    masks, classes = out["mask_labels"][0], out["class_labels"][0]
    assert torch.equal(classes, maps[0][maps[0] != 255].unique())
    assert torch.equal(masks.argmax(0)[5:], maps[0][5:]) and masks[:, :5].sum() == 0
    assert out["class_labels"][1].tolist() == [2] and out["mask_labels"][1].shape == (1, 32, 48)


def test_save_load_round_trip_and_auto_class(tmp_path):
    processor = MaskFormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048}, ignore_index=255,
                                         do_reduce_labels=True, num_labels=150, label_ids_to_fuse=[5, 2])
    processor.save_pretrained(tmp_path)
    for loaded in (MaskFormerImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MaskFormerImageProcessor
        assert loaded.to_dict() == processor.to_dict()
    assert processor.label_ids_to_fuse == [2, 5]
    override = MaskFormerImageProcessor.from_pretrained(tmp_path, size={"height": 64, "width": 64})
    assert override.size == {"height": 64, "width": 64}


def test_reads_transformers_processor_configs():
    """A Hub checkpoint's preprocessor_config.json (transformers' fields, legacy names included)."""
    config = ReferenceProcessor(ignore_index=255, do_reduce_labels=True, size={"shortest_edge": 512, "longest_edge": 2048},
                                num_labels=150).to_dict()
    config.update({"max_size": 2048, "reduce_labels": True, "feature_extractor_type": "MaskFormerFeatureExtractor"})
    processor = MaskFormerImageProcessor.from_dict(config)
    assert processor.size == {"shortest_edge": 512, "longest_edge": 2048}
    assert processor.do_reduce_labels and processor.ignore_index == 255 and processor.num_labels == 150


def test_integer_pixels_of_any_width_are_0_255_values():
    """transformers accepts int32/int64 images holding 0-255 values; so do we, with the same result."""
    from transformers import MaskFormerImageProcessor as HFProcessor

    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3))
    ours = MaskFormerImageProcessor()(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, MaskFormerImageProcessor()(image.astype(np.uint8), return_tensors="pt")["pixel_values"])
    ours = MaskFormerImageProcessor(do_resize=False)(image, return_tensors="pt")["pixel_values"]
    theirs = HFProcessor(do_resize=False)(image, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_bad_inputs_raise_clear_errors():
    processor = MaskFormerImageProcessor(do_resize=False)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="one per image"):
        processor([image, image], segmentation_maps=[np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="differs from its image"):
        processor(image, segmentation_maps=np.zeros((8, 9), np.uint8))
    with pytest.raises(TypeError, match="integer ids"):
        processor(image, segmentation_maps=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 255\], got values -1\.\.3"):
        processor(np.array([[[-1, 3, 0]]], dtype=np.int32))
    with pytest.raises(TypeError, match="integer \\(0-255\\) or floating"):
        processor(image.astype(bool))
    with pytest.raises(ValueError, match="channels"):
        processor(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(TypeError, match="unknown arguments"):
        processor(image, do_flip=True)
    with pytest.raises(TypeError, match="PIL images, numpy arrays or torch tensors"):
        processor("not an image")
    with pytest.raises(ValueError, match="num_labels=2"):
        processor(image, segmentation_maps=np.full((8, 8), 3, np.uint8), num_labels=2)
    with pytest.raises(ValueError, match="pad_size.*smaller"):  # do_pad=False pads all the same, as transformers
        processor([image, image[:4]], pad_size={"height": 4, "width": 4})
    with pytest.raises(ValueError, match="size"):
        MaskFormerImageProcessor(size={"longest_edge": 5})


def test_16_bit_grey_images_are_scaled_not_clipped():
    """PIL's convert("RGB") clips 16-bit grey at 255 (a white image); the processor scales v -> v / 257."""
    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    processor = MaskFormerImageProcessor(do_resize=False)
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    expected = processor(Image.fromarray(grey))["pixel_values"]
    assert torch.equal(processor(deep)["pixel_values"], expected)
    as_int32 = Image.fromarray(grey.astype(np.int32) * 257)  # mode "I" with 16-bit values
    assert torch.equal(processor(as_int32)["pixel_values"], expected)
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        processor(Image.fromarray(np.full((4, 4), -5, np.int32)))
