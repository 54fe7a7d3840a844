"""The processor is a drop-in for transformers' ``MaskFormerImageProcessor``: what transformers'
processor accepts (its tests, its common image-processor test mixin and its example scripts' calls),
ours accepts with the same meaning, and on the same inputs gives the same numbers where the meaning is
the same (unpadded inputs, fixed-size resizing, instance masks at mask resolution). Where ours
differs on purpose, docs/processing.md lists the difference; the tests here pin the contract."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as tvF
from transformers import MaskFormerImageProcessor as ReferenceProcessor
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_utils import ChannelDimension, PILImageResampling, SizeDict
from transformers.utils import TensorType

from conftest import fake_segmentation_outputs
from maskformer_hf import MaskFormerImageProcessor
from maskformer_hf.image_inputs import warn_once as _warn_once
from maskformer_hf.inference import instance_inference

FIXED = {"size": {"height": 48, "width": 64}, "size_divisor": 0}  # resizing whose meaning both libraries share


@dataclass
class ModelOutput:
    """What transformers' instance example (run_instance_segmentation.py) passes to post-processing."""

    class_queries_logits: torch.Tensor
    masks_queries_logits: torch.Tensor


def _images(count: int = 2, channels: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (30 + 7 * i, 40 + 5 * i, channels), dtype=np.uint8) for i in range(count)]


def _close(ours: torch.Tensor, theirs: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(torch.as_tensor(ours), torch.as_tensor(theirs), atol=atol, rtol=0)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    _warn_once.cache_clear()  # each test sees its own once-only warnings
    yield


# ---------------------------------------------------------------------------------------------
# Pre-processing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["channels_last", ChannelDimension.LAST, "channels_first", ChannelDimension.FIRST])
def test_input_data_format_is_honoured_as_in_transformers(layout):
    """Every transformers image processor takes ``input_data_format``; the same layout gives the same pixels."""
    images = _images()
    if ChannelDimension(layout) == ChannelDimension.FIRST:
        images = [np.ascontiguousarray(image.transpose(2, 0, 1)) for image in images]
    ours = MaskFormerImageProcessor(**FIXED)(images, input_data_format=layout, return_tensors="pt")
    theirs = ReferenceProcessor(**FIXED)(images, input_data_format=layout, return_tensors="pt")
    _close(ours["pixel_values"], theirs["pixel_values"])
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])


def test_an_ambiguous_layout_is_settled_by_input_data_format():
    """A (3, 20, 4) array is HWC RGBA or CHW RGB: numpy reads HWC unless ``input_data_format`` says
    otherwise (transformers reads channels first; docs/processing.md), and told, both agree."""
    image = np.random.default_rng(1).integers(0, 256, (3, 20, 4), dtype=np.uint8)  # CHW 3x20x4, or HWC 3x20 with 4 ch
    processor = MaskFormerImageProcessor(do_resize=False)
    assert processor(image)["pixel_values"].shape == (1, 3, 3, 20)  # numpy: HWC, RGBA loses its alpha
    told = processor(image, input_data_format="channels_first")["pixel_values"]
    assert told.shape == (1, 3, 20, 4)
    _close(told, ReferenceProcessor(do_resize=False, size_divisor=0)(image, input_data_format="channels_first",
                                                                   return_tensors="pt")["pixel_values"])


def test_return_tensors_values_mean_what_they_mean_in_transformers():
    images = _images()
    processor, reference = MaskFormerImageProcessor(**FIXED), ReferenceProcessor(**FIXED)
    for value in ("pt", TensorType.PYTORCH):
        out = processor(images, return_tensors=value)
        assert isinstance(out["pixel_values"], torch.Tensor) and out["pixel_values"].shape == (2, 3, 48, 64)
    out, ref = processor(images, return_tensors="np"), reference(images, return_tensors="np")
    assert isinstance(out["pixel_values"], np.ndarray) and isinstance(out["pixel_mask"], np.ndarray)
    np.testing.assert_allclose(out["pixel_values"], ref["pixel_values"], atol=1e-5)
    out, ref = processor(images, return_tensors=None), reference(images, return_tensors=None)  # one tensor per image
    assert isinstance(out["pixel_values"], list) and len(out["pixel_values"]) == 2
    for ours, theirs in zip(out["pixel_values"], ref["pixel_values"]):
        _close(ours, theirs)
    assert isinstance(processor(images)["pixel_values"], torch.Tensor)  # not given: "pt" (ours; documented)


def test_transformers_options_are_accepted_with_their_meaning(caplog):
    image = _images(1)[0]
    processor, reference = MaskFormerImageProcessor(**FIXED), ReferenceProcessor(**FIXED)
    ours = processor(image, pad_size={"height": 64, "width": 80}, device="cpu", disable_grouping=True,
                     data_format="channels_first", image_seq_length=4)
    theirs = reference(image, pad_size=SizeDict(height=64, width=80), device="cpu", disable_grouping=True,
                       data_format="channels_first", return_tensors="pt")
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape == (1, 3, 64, 80)
    _close(ours["pixel_values"], theirs["pixel_values"])
    assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    with caplog.at_level(logging.WARNING):  # ignored by transformers' MaskFormer processor too: a warning
        kept = processor(image, data_format="channels_last", do_center_crop=True, crop_size={"height": 8, "width": 8})
    assert kept["pixel_values"].shape == (1, 3, 48, 64)
    assert "data_format" in caplog.text and "do_center_crop" in caplog.text
    with pytest.raises(TypeError, match="unknown arguments.*pad_and_return_pixel_mask"):  # transformers: TypeError too
        processor(image, pad_and_return_pixel_mask=True)
    # BatchFeature.to, as transformers' common tests use it
    batch = processor(image, device="cpu").to(torch.float16)
    assert batch["pixel_values"].dtype == torch.float16 and batch["pixel_mask"].dtype == torch.int64
    assert processor(image).to("cpu", torch.bfloat16)["pixel_values"].dtype == torch.bfloat16
    with pytest.raises(TypeError):
        processor(image).to(torch.bfloat16, "cpu")


def test_do_convert_rgb_converts_as_transformers_does():
    """Grey and RGBA to RGB with transformers' rule (alpha composited over white); without it, RGBA loses
    its alpha (transformers then fails: 4 channels against 3 means)."""
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (30, 40, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 0  # transparent rows: white after conversion
    grey = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    processor, reference = MaskFormerImageProcessor(**FIXED), ReferenceProcessor(**FIXED)
    for image in (rgba, Image.fromarray(rgba), Image.fromarray(grey)):
        ours = processor(image, do_convert_rgb=True)["pixel_values"]
        theirs = reference(image, do_convert_rgb=True, return_tensors="pt")["pixel_values"]
        _close(ours, theirs, atol=0.02)  # one 8-bit level of rounding in the compositing
    white = processor(rgba, do_convert_rgb=True, do_resize=False, do_normalize=False, do_rescale=False)
    assert torch.equal(white["pixel_values"][0, :, :10], torch.full((3, 10, 40), 255.0))
    dropped = processor(rgba, do_resize=False, do_normalize=False, do_rescale=False)["pixel_values"][0]
    assert torch.equal(dropped, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float())


def test_images_keep_any_channel_count_that_image_mean_and_std_describe():
    """transformers' ``test_call_numpy_4_channels``: 4-channel images with one mean/std for all (or one
    per channel) stay 4-channel."""
    images = _images(2, channels=4)
    processor, reference = MaskFormerImageProcessor(**FIXED), ReferenceProcessor(**FIXED)
    for mean, std in ((0.0, 1.0), ([0.5] * 4, [0.25] * 4)):
        ours = processor(images, input_data_format="channels_last", image_mean=mean, image_std=std)["pixel_values"]
        theirs = reference(images, input_data_format="channels_last", image_mean=mean, image_std=std,
                           return_tensors="pt")["pixel_values"]
        assert ours.shape == (2, 4, 48, 64)
        _close(ours, theirs)
    assert processor(images, image_mean=0, image_std=1)["pixel_values"].shape[1] == 4  # ints too (transformers: floats)
    with pytest.raises(ValueError, match="2 channels, but image_mean/image_std have 3 values"):
        processor(np.zeros((8, 8, 2), np.uint8), input_data_format="channels_last")


def test_size_and_resample_in_every_form_transformers_takes():
    images = _images()
    sizes = [(40, 56), [40, 56], {"max_height": 40, "max_width": 90}, SizeDict(height=40, width=56),
             {"shortest_edge": 32, "longest_edge": 50}]
    for size in sizes:
        plain = dict(size) if isinstance(size, SizeDict) else size  # transformers: a SizeDict only when constructed
        for settings, call in (({"size": size}, {}), ({}, {"size": size})):  # in the constructor, and per call
            ours = MaskFormerImageProcessor(size_divisor=0, **settings)(images, **call)
            theirs = ReferenceProcessor(size_divisor=0, **settings)(images, return_tensors="pt",
                                                                     **({"size": plain} if call else {}))
            assert ours["pixel_values"].shape == theirs["pixel_values"].shape, size
            _close(ours["pixel_values"], theirs["pixel_values"])
            assert torch.equal(ours["pixel_mask"], theirs["pixel_mask"])
    for resample in (PILImageResampling.BICUBIC, 3, tvF.InterpolationMode.BICUBIC, PILImageResampling.LANCZOS,
                     PILImageResampling.NEAREST):
        ours = MaskFormerImageProcessor(resample=resample, **FIXED)(images)["pixel_values"]
        theirs = ReferenceProcessor(resample=resample, **FIXED)(images, return_tensors="pt")["pixel_values"]
        _close(ours, theirs, atol=1e-4)
        _close(MaskFormerImageProcessor(**FIXED)(images, resample=resample)["pixel_values"], ours)
    with pytest.raises(ValueError, match="resample.*HAMMING"):  # no tensor kernel: transformers fails on it
        MaskFormerImageProcessor(resample=PILImageResampling.HAMMING)


def test_images_as_nested_lists_and_batched_arrays():
    image = _images(1)[0]
    processor = MaskFormerImageProcessor(**FIXED)
    expected = processor([image] * 3)["pixel_values"]
    for images in (np.stack([image] * 3), torch.from_numpy(np.stack([image] * 3)).permute(0, 3, 1, 2),
                   [[image], [image, image]], [np.stack([image] * 2), image]):
        _close(processor(images)["pixel_values"], expected)


def test_segmentation_maps_as_the_instance_example_passes_them():
    """run_instance_segmentation.py: one image and its instance map in lists, ``instance_id_to_semantic_id``
    keyed by numpy integers (from ``np.unique``), a fixed ``(height, width)`` size, ``reduce_labels``."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    semantic = np.zeros((40, 50), np.uint8)
    instance = np.zeros((40, 50), np.uint8)
    semantic[5:20, 5:25], instance[5:20, 5:25] = 3, 1
    semantic[22:38, 10:45], instance[22:38, 10:45] = 5, 2
    semantic[22:38, 30:45], instance[22:38, 30:45] = 5, 3
    pairs = np.unique(np.stack([semantic, instance], -1).reshape(-1, 2), axis=0)
    mapping = {instance_id: semantic_id for semantic_id, instance_id in pairs}
    assert all(isinstance(k, np.integer) for k in mapping)
    settings = {"size": (48, 64), "size_divisor": 0, "ignore_index": 255}
    for reduce in (False, True):
        ours = MaskFormerImageProcessor(**settings)(images=[image], segmentation_maps=[instance],
                                                    instance_id_to_semantic_id=mapping, return_tensors="pt",
                                                    reduce_labels=reduce)
        theirs = ReferenceProcessor(do_reduce_labels=reduce, **settings)(
            images=[image], segmentation_maps=[instance], instance_id_to_semantic_id=mapping, return_tensors="pt")
        _close(ours["pixel_values"], theirs["pixel_values"])
        assert torch.equal(ours["class_labels"][0], theirs["class_labels"][0])
        assert torch.equal(ours["mask_labels"][0], theirs["mask_labels"][0])
    assert ours["class_labels"][0].tolist() == [2, 4, 4]  # reduced: instances 1..3 of classes 3, 5, 5


def test_semantic_maps_stacked_and_per_call_settings_match_transformers():
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(2)]
    maps = rng.integers(0, 6, (2, 40, 50)).astype(np.uint8)  # a batched array of maps
    reference = ReferenceProcessor(size=(48, 64), size_divisor=0, ignore_index=255, do_reduce_labels=True)
    theirs = reference(images, maps, return_tensors="pt")
    ours = MaskFormerImageProcessor(size=(48, 64), size_divisor=0)(images, maps, ignore_index=255,
                                                                    do_reduce_labels=True, return_tensors=None)
    for i in range(2):
        _close(ours["pixel_values"][i], theirs["pixel_values"][i])
        assert torch.equal(ours["class_labels"][i], theirs["class_labels"][i])
        assert torch.equal(ours["mask_labels"][i], theirs["mask_labels"][i])


def test_from_pretrained_as_the_instance_example_calls_it(tmp_path):
    MaskFormerImageProcessor(ignore_index=255).save_pretrained(tmp_path)
    processor = MaskFormerImageProcessor.from_pretrained(tmp_path, do_resize=True, size={"height": 48, "width": 64},
                                                         do_reduce_labels=True, reduce_labels=True, token=None)
    assert processor.size == {"height": 48, "width": 64} and processor.do_reduce_labels and processor.do_resize
    loaded = MaskFormerImageProcessor.from_dict(processor.to_dict(), size=(40, 40),
                                                pad_size={"height": 64, "width": 64})
    assert loaded.size == {"height": 40, "width": 40} and loaded.pad_size == {"height": 64, "width": 64}


def test_settings_round_trip_through_json_and_save_pretrained(tmp_path):
    """transformers' common tests: ``to_json_string`` holds every constructor argument; ``to_json_file`` /
    ``save_pretrained`` + loading give an equal ``to_dict``."""
    settings = {"do_resize": True, "size": {"shortest_edge": 32, "longest_edge": 1333}, "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size_divisor": 0, "num_labels": 10,
                "do_reduce_labels": True, "ignore_index": 255, "do_convert_rgb": True,
                "pad_size": {"height": 64, "width": 64}, "input_data_format": "channels_last"}
    processor = MaskFormerImageProcessor(**settings)
    saved = json.loads(processor.to_json_string())
    for key, value in settings.items():
        assert saved[key] == value, key
    processor.to_json_file(tmp_path / "processor.json")
    assert MaskFormerImageProcessor.from_json_file(tmp_path / "processor.json").to_dict() == processor.to_dict()
    processor.save_pretrained(tmp_path)
    loaded = MaskFormerImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    image = _images(1)[0]
    assert torch.equal(loaded(image)["pixel_values"], processor(image)["pixel_values"])
    assert processor(image)["pixel_values"].shape == (1, 3, 64, 64)  # pad_size and input_data_format are used
    scalar = MaskFormerImageProcessor(image_mean=0.5, image_std=0.5, resample=tvF.InterpolationMode.BICUBIC)
    assert json.loads(scalar.to_json_string())["resample"] == int(PILImageResampling.BICUBIC)


# ---------------------------------------------------------------------------------------------
# Post-processing
# ---------------------------------------------------------------------------------------------
def _outputs(batch: int = 2, layout: str = "overlap", seed: int = 1, **kwargs) -> ModelOutput:
    class_logits, mask_logits = fake_segmentation_outputs(batch=batch, queries=12, classes=4, size=(24, 32),
                                                          confident=6, layout=layout, seed=seed, **kwargs)
    return ModelOutput(class_logits, mask_logits)


def test_semantic_segmentation_scores_as_transformers_returns_them():
    out = _outputs(layout="partition")
    processor, reference = MaskFormerImageProcessor(), ReferenceProcessor()
    for sizes in (None, [(48, 64), (30, 50)]):
        ours = processor.post_process_semantic_segmentation(out, target_sizes=sizes, return_segmentation_scores=True)
        theirs = reference.post_process_semantic_segmentation(out, target_sizes=sizes, return_segmentation_scores=True)
        for o, t in zip(ours, theirs):
            assert isinstance(o, SemanticSegmentationPostProcessorOutput)
            assert o.segmentation.shape == t.segmentation.shape
            _close(o.segmentation_scores, t.segmentation_scores)
            assert torch.equal(o.segmentation, o.segmentation_scores.argmax(0))
            assert (o.segmentation != t.segmentation).float().mean() < 1e-3  # float ties at most
        plain = processor.post_process_semantic_segmentation(out, target_sizes=sizes)
        assert all(p.shape == o.segmentation.shape for p, o in zip(plain, ours))


def _by_score(result: dict) -> list[tuple[int, float]]:
    return sorted(((s["label_id"], s["score"]) for s in result["segments_info"]), key=lambda p: (-p[1], p[0]))


def test_instance_binary_maps_follow_transformers_convention():
    """``return_binary_maps=True``: every (query, class) candidate among the top ``num_queries`` scoring
    ``>= threshold`` with a non-empty mask, each with its full mask; no overlap rule (transformers'
    convention; mask AP wants every candidate). The segmentation map keeps the paper's overlap rule."""
    out = _outputs(layout="overlap")
    processor, reference = MaskFormerImageProcessor(), ReferenceProcessor()
    for threshold in (0.0, 0.3):
        ours = processor.post_process_instance_segmentation(out, threshold=threshold, return_binary_maps=True)
        theirs = reference.post_process_instance_segmentation(out, threshold=threshold, return_binary_maps=True)
        for o, t in zip(ours, theirs):
            assert len(o["segments_info"]) == len(t["segments_info"]) > 0
            assert [label for label, _ in _by_score(o)] == [label for label, _ in _by_score(t)]
            _close(torch.tensor([s for _, s in _by_score(o)]), torch.tensor([s for _, s in _by_score(t)]), atol=2e-6)
            masks = {(s["label_id"], s["score"]): m for s, m in zip(t["segments_info"], t["segmentation"])}
            for s, mask in zip(o["segments_info"], o["segmentation"]):
                assert torch.equal(mask, masks[(s["label_id"], s["score"])])
    mapped = processor.post_process_instance_segmentation(out, threshold=0.0)
    assert all(len(m["segments_info"]) < len(o["segments_info"]) for m, o in zip(mapped, ours))  # paper rule


def test_instance_mask_ap_means_what_it_means_for_transformers():
    """The instance example's evaluator (torchmetrics' ``MeanAveragePrecision(iou_type="segm")`` on
    ``post_process_instance_segmentation(threshold=0.0, target_sizes=..., return_binary_maps=True)``)
    reports the same mAP for our processor as for transformers' on the same outputs."""
    mean_ap = pytest.importorskip("torchmetrics.detection.mean_ap")
    out = _outputs(layout="overlap")
    targets = []
    for b in range(2):
        confident = out.class_queries_logits[b].argmax(-1) != out.class_queries_logits.shape[-1] - 1
        targets.append({"masks": out.masks_queries_logits[b][confident] > 0,
                        "labels": out.class_queries_logits[b][confident].argmax(-1)})
    sizes = [t["masks"].shape[-2:] for t in targets]
    maps = []
    for processor in (MaskFormerImageProcessor(), ReferenceProcessor()):
        metric = mean_ap.MeanAveragePrecision(iou_type="segm", class_metrics=True)
        found = processor.post_process_instance_segmentation(out, threshold=0.0, target_sizes=sizes,
                                                             return_binary_maps=True)
        metric.update([{"masks": r["segmentation"].to(torch.bool),
                        "labels": torch.tensor([s["label_id"] for s in r["segments_info"]]),
                        "scores": torch.tensor([s["score"] for s in r["segments_info"]])} for r in found], targets)
        result = metric.compute()
        maps.append((float(result["map"]), result["map_per_class"].tolist()))
    assert maps[0] == maps[1] and maps[0][0] > 0.5


def test_instance_binary_maps_are_each_candidates_own_mask_at_the_target_size():
    """The binary-map rule in plain torch: candidates (top Q (query, class) pairs, score >= threshold),
    each mask the bilinearly resized probability > mask_threshold, kept when non-empty. Our evaluation
    (threshold 0, overlap 0) and any overlap threshold give exactly this."""
    out = _outputs(batch=1, layout="overlap", seed=5)
    size = (57, 75)
    probs = out.class_queries_logits[0].softmax(-1)[:, :-1]
    top, index = probs.flatten().topk(probs.shape[0])
    query, label = index // probs.shape[1], index % probs.shape[1]
    logits = out.masks_queries_logits[0][query]
    score = top * (logits.sigmoid() * (logits > 0)).flatten(1).sum(1) / ((logits > 0).flatten(1).sum(1) + 1e-6)
    masks = torch.nn.functional.interpolate(logits.sigmoid()[None], size=size, mode="bilinear")[0] > 0.5
    keep = masks.flatten(1).any(1)
    expected = sorted(zip(score[keep].tolist(), label[keep].tolist()), reverse=True)
    for overlap in (0.0, 0.8, 1.0):
        found = instance_inference(out.class_queries_logits, out.masks_queries_logits, target_sizes=[size],
                                   threshold=0.0, overlap_mask_area_threshold=overlap, return_binary_maps=True)[0]
        assert [(s["label_id"]) for s in found["segments_info"]] == [c for _, c in expected]
        _close(torch.tensor([s["score"] for s in found["segments_info"]]), torch.tensor([p for p, _ in expected]),
               atol=1e-6)
        assert torch.equal(found["segmentation"].bool(), masks[keep][score[keep].argsort(descending=True, stable=True)])


def test_instance_coco_annotation_is_one_rle_per_instance():
    """``return_coco_annotation=True``: transformers' RLE format (``binary_mask_to_rle``: 1-based starts
    and run lengths, row-major), one per ``segments_info`` entry, of the same masks as
    ``return_binary_maps``; both at once is a ValueError, as in transformers."""
    out = _outputs()
    processor = MaskFormerImageProcessor()
    coded = processor.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[(30, 40)] * 2,
                                                         return_coco_annotation=True)
    binary = processor.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[(30, 40)] * 2,
                                                          return_binary_maps=True)
    for c, b in zip(coded, binary):
        assert c["segments_info"] == b["segments_info"] and len(c["segmentation"]) == len(b["segmentation"]) > 0
        for rle, mask in zip(c["segmentation"], b["segmentation"]):
            decoded = torch.zeros(mask.numel())
            for start, length in zip(rle[::2], rle[1::2]):
                decoded[start - 1:start - 1 + length] = 1
            assert torch.equal(decoded.view(mask.shape), mask)
    with pytest.raises(ValueError, match="can not be both set to True"):
        processor.post_process_instance_segmentation(out, return_coco_annotation=True, return_binary_maps=True)
    with pytest.raises(ValueError, match="can not be both set to True"):
        ReferenceProcessor().post_process_instance_segmentation(out, return_coco_annotation=True,
                                                                return_binary_maps=True)


def test_post_processing_takes_logits_of_any_class_count_with_a_warning(caplog):
    """transformers post-processes logits whatever the processor's ``num_labels`` (it needs none); a
    processor saved for another label set (e.g. before fine-tuning) warns and goes on, and its
    ``label_ids_to_fuse`` beyond the model's classes fuse nothing."""
    out = _outputs(layout="partition")  # 4 classes
    stale = MaskFormerImageProcessor(num_labels=150, label_ids_to_fuse=[1, 120])
    plain = MaskFormerImageProcessor()
    with caplog.at_level(logging.WARNING):
        semantic = stale.post_process_semantic_segmentation(out, target_sizes=[(30, 40)] * 2)
        instance = stale.post_process_instance_segmentation(out, threshold=0.0, return_binary_maps=True)
        panoptic = stale.post_process_panoptic_segmentation(out, threshold=0.5)
    assert "num_labels=150" in caplog.text and "[120]" in caplog.text
    for ours, expected in zip(semantic, plain.post_process_semantic_segmentation(out, target_sizes=[(30, 40)] * 2)):
        assert torch.equal(ours, expected)
    for ours, expected in zip(instance, plain.post_process_instance_segmentation(out, threshold=0.0,
                                                                                return_binary_maps=True)):
        assert ours["segments_info"] == expected["segments_info"]
    for ours, expected in zip(panoptic, plain.post_process_panoptic_segmentation(out, threshold=0.5,
                                                                                label_ids_to_fuse=[1])):
        assert ours["segments_info"] == expected["segments_info"] and torch.equal(ours["segmentation"],
                                                                                  expected["segmentation"])
    reference = ReferenceProcessor(num_labels=150).post_process_semantic_segmentation(out, target_sizes=[(30, 40)] * 2)
    assert all(torch.equal(o, t) for o, t in zip(semantic, reference))


def test_outputs_of_transformers_shape_go_through_every_method_and_option():
    """transformers' processor tests: fake outputs of 3 queries, 2 classes, 3x4 masks, ``threshold=0``."""
    torch.manual_seed(0)
    out = ModelOutput(torch.randn(2, 3, 3), torch.randn(2, 3, 3, 4))
    processor = MaskFormerImageProcessor(num_labels=2)
    assert [s.shape for s in processor.post_process_semantic_segmentation(out)] == [(3, 4)] * 2
    resized = processor.post_process_semantic_segmentation(out, target_sizes=[(1, 4)] * 2)
    assert [s.shape for s in resized] == [(1, 4)] * 2
    for r in processor.post_process_instance_segmentation(out, threshold=0):
        assert r["segmentation"].shape == (3, 4) and isinstance(r["segments_info"], list)
    for r in processor.post_process_instance_segmentation(out, threshold=0, return_binary_maps=True):
        assert r["segmentation"].ndim == 3 and r["segmentation"].shape[1:] == (3, 4)
    for r in processor.post_process_instance_segmentation(out, threshold=0, return_coco_annotation=True):
        assert isinstance(r["segmentation"], list) and len(r["segmentation"]) == len(r["segments_info"])
    for r in processor.post_process_semantic_segmentation(out, return_segmentation_scores=True):
        assert r.segmentation.shape == (3, 4) and r.segmentation_scores.shape == (2, 3, 4)
    unfused = processor.post_process_panoptic_segmentation(out, threshold=0, mask_threshold=0,
                                                           overlap_mask_area_threshold=0)
    fused = processor.post_process_panoptic_segmentation(out, threshold=0, mask_threshold=0,
                                                         overlap_mask_area_threshold=0, label_ids_to_fuse={1})
    for u, f in zip(unfused, fused):
        ones = sum(s["label_id"] == 1 for s in u["segments_info"])
        assert len(f["segments_info"]) == len(u["segments_info"]) - max(0, ones - 1)
