"""Mask AP through evaluate_segmentation and `maskformer-hf evaluate`: on COCO instance data it is
pycocotools' COCOeval of the same predictions against the original JSON (overlapping masks, crowd
RLE, the JSON's areas)."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskformer_hf import MaskFormerImageProcessor
from maskformer_hf.data import get_metadata, load_coco_instances
from maskformer_hf.data.coco_instances import read_instances
from maskformer_hf.evaluation import evaluate_segmentation


class ScriptedModel(torch.nn.Module):
    """Returns, image after image, logits that find the ground truth imperfectly: every instance as a
    query (some shifted, some with the wrong class, confidences spread out) plus false positives."""

    def __init__(self, references, num_labels, num_queries=8, seed=0):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        generator = np.random.default_rng(seed)
        self.outputs = []
        for reference in references:
            height, width = reference["masks"].shape[1:]
            masks = np.full((num_queries, height, width), -6.0, dtype=np.float32)
            classes = np.full((num_queries, num_labels + 1), -4.0, dtype=np.float32)
            classes[:, -1] = 2.0  # "no object" by default
            for q, (mask, label) in enumerate(zip(reference["masks"][:num_queries], reference["labels"])):
                shift = int(generator.integers(-3, 4))
                masks[q] = np.where(np.roll(mask, shift, axis=1), 6.0, -6.0)
                wrong = generator.random() < 0.2
                classes[q, (label + 1) % num_labels if wrong else label] = float(generator.uniform(0.5, 5.0))
            for q in range(len(reference["labels"]), num_queries):  # false positives: random boxes
                y, x = generator.integers(0, height - 4), generator.integers(0, width - 4)
                masks[q, y:y + int(generator.integers(3, 12)), x:x + int(generator.integers(3, 12))] = 6.0
                classes[q, int(generator.integers(num_labels))] = float(generator.uniform(0.0, 3.0))
            self.outputs.append((torch.from_numpy(classes)[None], torch.from_numpy(masks)[None]))
        self.calls = 0

    def forward(self, pixel_values, pixel_mask=None):
        classes, masks = self.outputs[self.calls]
        self.calls += 1
        assert masks.shape[-2:] == pixel_values.shape[-2:]
        return {"class_queries_logits": classes, "masks_queries_logits": masks}


def _pycocotools_stats(json_path, dataset, metadata, model, processor):
    """COCOeval(segm) of the model's instance predictions (the same post-processing evaluate uses)."""
    results = []
    for index, (classes, masks) in enumerate(model.outputs):
        height, width = masks.shape[-2:]
        found = processor.post_process_instance_segmentation(
            {"class_queries_logits": classes, "masks_queries_logits": masks}, threshold=0.0,
            overlap_mask_area_threshold=0.0, target_sizes=[(height, width)], return_binary_maps=True)[0]
        for segment in found["segments_info"]:
            binary = np.asfortranarray((found["segmentation"][segment["id"]] > 0.5).numpy().astype(np.uint8))
            rle = mask_utils.encode(binary)
            rle["counts"] = rle["counts"].decode()
            results.append({"image_id": int(dataset[index]["image_id"]), "segmentation": rle, "score": segment["score"],
                            "category_id": metadata.source_category_ids[segment["label_id"]]})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(json_path))
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="segm")
        evaluation.params.imgIds = [int(i) for i in dataset["image_id"]]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_ap_of_coco_instance_data_is_pycocotools_on_the_original_json(coco_instances_root, seed):
    json_path = coco_instances_root / "annotations" / "instances_val2017.json"
    dataset = load_coco_instances(json_path, coco_instances_root / "val2017")
    metadata = get_metadata(dataset)
    originals = dataset.with_format(None, columns=["instances"])
    model = ScriptedModel([read_instances(originals, i) for i in range(len(dataset))], metadata.num_labels, seed=seed)
    processor = MaskFormerImageProcessor(do_resize=False, num_labels=metadata.num_labels)
    metrics = evaluate_segmentation(model, processor, dataset, metadata, batch_size=1, progress=False)
    assert model.calls == len(dataset)
    model.calls = 0
    expected = _pycocotools_stats(json_path, dataset, metadata, model, processor)
    ours = [metrics[k] for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                                 "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")]
    assert 0.1 < metrics["map"] < 1.0  # imperfect predictions: a figure that can be wrong
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    assert "pq" in metrics and "mean_iou" in metrics  # the panoptic metrics as well


def test_mask_ap_on_panoptic_data_on_request_and_refused_on_semantic_data(coco_instances_root, tmp_path):
    from maskformer_hf.data import load_semantic_folder
    from maskformer_hf.training import TrainConfig, load_splits

    _, dataset, metadata = load_splits(TrainConfig(dataset="synthetic", data_dir=str(tmp_path / "synthetic"),
                                                   synthetic_num_train=1, synthetic_num_val=2, synthetic_size=48))
    from conftest import tiny_config

    from maskformer_hf import MaskFormerForUniversalSegmentation

    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=metadata.num_labels)).eval()
    processor = MaskFormerImageProcessor(size={"shortest_edge": 48}, num_labels=metadata.num_labels)
    assert "map" not in evaluate_segmentation(model, processor, dataset, metadata, progress=False)
    metrics = evaluate_segmentation(model, processor, dataset, metadata, mask_ap=True, progress=False)
    assert 0.0 <= metrics["map"] <= 1.0 and len(metrics["per_category_ap"]) == metadata.num_labels
    with pytest.raises(ValueError, match="gather_object"):
        evaluate_segmentation(model, processor, dataset, metadata, mask_ap=True, num_processes=2, progress=False)
    # two processes' halves, gathered, give the single-process figure
    from maskformer_hf.metrics import MaskAP

    states = []
    for rank in (0, 1):
        evaluate_segmentation(model, processor, dataset, metadata, mask_ap=True, progress=False, rank=rank,
                              num_processes=2, gather_object=lambda state: states.append(state) or [state])
    merged = MaskAP(metadata.num_labels)
    for state in states:
        merged.merge(state)
    assert merged.compute()["map"] == pytest.approx(metrics["map"], abs=1e-12)
    semantic_root = tmp_path / "semantic"
    (semantic_root / "images").mkdir(parents=True)
    (semantic_root / "annotations").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(semantic_root / "images" / "a.png")
    Image.fromarray(np.ones((8, 8), dtype=np.uint8)).save(semantic_root / "annotations" / "a.png")
    (semantic_root / "classes.json").write_text(json.dumps({"classes": ["sky", "road"]}))
    semantic = load_semantic_folder(semantic_root)
    semantic = semantic[next(iter(semantic))]
    with pytest.raises(ValueError, match="mask_ap needs instance or panoptic data"):
        evaluate_segmentation(model, processor, semantic, get_metadata(semantic), mask_ap=True, progress=False)


def test_evaluate_command_reports_mask_ap_on_coco_instances(coco_instances_root, tmp_path, capsys):
    from conftest import tiny_config

    from maskformer_hf import MaskFormerForUniversalSegmentation
    from maskformer_hf.cli import main

    (coco_instances_root / "annotations" / "instances_train2017.json").write_text(
        (coco_instances_root / "annotations" / "instances_val2017.json").read_text())
    (coco_instances_root / "train2017").symlink_to(coco_instances_root / "val2017")
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=3, id2label={0: "person", 1: "dog", 2: "bottle"}))
    model.save_pretrained(tmp_path / "model")
    MaskFormerImageProcessor(size={"shortest_edge": 32}).save_pretrained(tmp_path / "model")
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--dataset", "coco-instances", "--data_dir",
                 str(coco_instances_root), "--output", str(tmp_path / "evaluation.json"), "--device", "cpu"]) == 0
    headline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert {"map", "map_50", "map_75"} <= set(headline) and report["images"] == 3
    assert {"map_small", "map_medium", "map_large", "mar_100", "per_category_ap"} <= set(report)


def test_trainers_compute_metrics_scores_mask_ap_on_the_label_masks():
    from types import SimpleNamespace

    from maskformer_hf.trainer import SegmentationMetrics

    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, 3, 40, 48)  # two images, three label masks each (padded to 40 x 48)
    masks[0, 0, 2:20, 3:30], masks[0, 1, 22:38, 5:15], masks[0, 2, 25:35, 20:44] = 1, 1, 1
    masks[1, 0, 0:10, 0:10], masks[1, 1, 12:30, 12:40], masks[1, 2, 31:33, 1:4] = 1, 1, 1
    classes = torch.tensor([[0, 1, 2], [1, 1, 0]])
    pixel_mask = torch.zeros(2, 40, 48, dtype=torch.long)
    pixel_mask[0], pixel_mask[1, :36, :44] = 1, 1  # the second image is padded
    queries = 5
    mask_logits = torch.full((2, queries, 40, 48), -8.0)
    class_logits = torch.full((2, queries, 4), -6.0)
    class_logits[..., -1] = 3.0
    mask_logits[:, :3] = torch.where(masks > 0, 8.0, -8.0)
    class_logits[torch.arange(2)[:, None], torch.arange(3)[None], classes] = 6.0 + torch.rand(2, 3, generator=generator)

    def score(class_logits, mask_logits):
        metrics = SegmentationMetrics(3, 255, thing_ids=(0, 1, 2), mask_ap=True)
        prediction = SimpleNamespace(predictions=(class_logits, mask_logits, pixel_mask),
                                     label_ids=(list(masks), list(classes)))
        return metrics(prediction, compute_result=True)

    perfect = score(class_logits, mask_logits)
    assert perfect["map"] == pytest.approx(1.0) and perfect["map_50"] == pytest.approx(1.0)
    shifted = mask_logits.clone()
    shifted[1, 1] = torch.roll(shifted[1, 1], 9, dims=1)  # one mask off by 9 columns: IoU about 0.5
    worse = score(class_logits, shifted)
    assert 0.5 < worse["map"] < 1.0 and "mean_iou" in worse and "pq" in worse
    with pytest.raises(ValueError, match="needs thing_ids"):
        SegmentationMetrics(3, 255, thing_ids=None, mask_ap=True)
