"""Sliding-window inference: one window is whole-image inference, several blend as documented, a padded
batch equals single images, a 4096 x 4096 image stays within a memory bound, and the `--slide` flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import scene, tiny_config, tiny_hf_backbone_config
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf import sliding_window
from maskformer_hf.cli import main as cli_main
from maskformer_hf.inference import semantic_scores
from maskformer_hf.sliding_window import sliding_window_inference, window_starts

ROOT = Path(__file__).resolve().parents[1]
LOW = {"threshold": 0.3, "overlap_mask_area_threshold": 0.2}  # the tiny model's scores are modest


@pytest.fixture(scope="module")
def trained(trained_checkpoint):
    model = MaskFormerForUniversalSegmentation.from_pretrained(trained_checkpoint).eval()
    return model, MaskFormerImageProcessor.from_pretrained(trained_checkpoint)


def whole_image(model, processor, images, sizes):
    inputs = processor(images=images)
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    return (processor.post_process_semantic_segmentation(out, target_sizes=sizes),
            processor.post_process_panoptic_segmentation(out, target_sizes=sizes, **LOW))


def assert_same_panoptic(ours, theirs):
    assert ours["segments_info"] == theirs["segments_info"]
    assert torch.equal(ours["segmentation"], theirs["segmentation"])


def test_window_starts_cover_the_axis_flush_with_its_end():
    assert window_starts(100, 64, 48) == [0, 36]
    assert window_starts(64, 64, 16) == [0]
    assert window_starts(40, 64, 48) == [0]  # smaller than the crop: one (padded) window
    assert window_starts(200, 64, 64) == [0, 64, 128, 136]


@pytest.mark.parametrize("general", [False, True])
def test_a_window_the_size_of_the_image_is_whole_image_inference(trained, monkeypatch, general):
    """The image is exactly one 64 x 64 window: the same semantic map and the same panoptic segments
    as whole-image inference. `general`: through the tiled multi-window code, not the one-window path."""
    model, processor = trained
    if general:
        monkeypatch.setattr(sliding_window, "_one_window", lambda rows, cols: False)
    images = [scene(64, 64, 20)[0], scene(64, 64, 21)[0]]
    for sizes in ([(64, 64)] * 2, [(150, 97), (31, 40)]):  # at the model's resolution, and resized
        semantic, panoptic = zip(*[[r[0] for r in whole_image(model, processor, [image], [size])]
                                   for image, size in zip(images, sizes)])  # one image per pass, as its window
        slid = processor.segment_sliding_window(model, images, crop=64, stride=32, task=("semantic", "panoptic"),
                                                target_sizes=sizes, **LOW)
        for k in range(2):
            assert torch.equal(slid["semantic"][k], semantic[k])
            assert_same_panoptic(slid["panoptic"][k], panoptic[k])
        assert any(len(p["segments_info"]) > 1 for p in panoptic)  # the comparison is not empty


def test_overlapping_windows_average_the_class_scores(trained):
    """Several windows: the map is the argmax of each window's class scores, averaged over the windows
    covering a pixel, here against a dense (K, H, W) accumulation of ``semantic_scores`` per window."""
    model, processor = trained
    image = scene(150, 190, 3)[0]
    inputs = processor(images=[image], do_resize=False)
    values = inputs["pixel_values"]
    crop, stride = 64, 48
    total, count = torch.zeros(5, 150, 190), torch.zeros(150, 190)
    with torch.no_grad():
        for y in window_starts(150, crop, stride):
            for x in window_starts(190, crop, stride):
                out = model(pixel_values=values[:, :, y:y + crop, x:x + crop])
                total[:, y:y + crop, x:x + crop] += semantic_scores(out.class_queries_logits, out.masks_queries_logits,
                                                                   None, [(crop, crop)])[0]
                count[y:y + crop, x:x + crop] += 1
    expected = (total / count).argmax(0)
    got = sliding_window_inference(model, values, inputs["pixel_mask"], crop=crop, stride=stride)[0]
    assert got.shape == (150, 190) and got.dtype == torch.int64
    assert (got != expected).float().mean() < 1e-3  # float rounding of the sampling positions only
    assert len(got.unique()) > 1


def test_several_windows_padded_batch_equals_single_images_and_is_deterministic(trained):
    model, processor = trained
    images = [scene(150, 190, 5)[0], scene(96, 130, 6)[0], scene(40, 50, 7)[0]]  # 2-3x the crop, and smaller
    sizes = [(300, 380), (96, 130), (40, 50)]
    kwargs = dict(crop=64, stride=48, task=("semantic", "panoptic", "instance"), target_sizes=sizes, **LOW)
    batch = processor.segment_sliding_window(model, images, do_resize=False, **kwargs)
    again = processor.segment_sliding_window(model, images, do_resize=False, **kwargs)
    for k, image in enumerate(images):
        alone = processor.segment_sliding_window(model, [image], do_resize=False,
                                                 **{**kwargs, "target_sizes": [sizes[k]]})
        for results in (alone, {t: [again[t][k]] for t in again}):
            assert torch.equal(batch["semantic"][k], results["semantic"][0])
            for task in ("panoptic", "instance"):
                assert_same_panoptic(batch[task][k], results[task][0])
        assert batch["semantic"][k].shape == sizes[k]
        panoptic, instance = batch["panoptic"][k], batch["instance"][k]
        ids = {s["id"] for s in panoptic["segments_info"]}
        assert ids == set(range(1, len(ids) + 1)) and set(panoptic["segmentation"].unique().tolist()) <= ids | {0}
        fused = [s["label_id"] for s in panoptic["segments_info"] if s["was_fused"]]
        assert len(fused) == len(set(fused))  # a stuff class is one segment over all windows
        scores = [s["score"] for s in instance["segments_info"]]
        assert scores == sorted(scores, reverse=True) and [s["id"] for s in instance["segments_info"]] == list(
            range(len(scores)))
        assert set(instance["segmentation"].unique().tolist()) <= set(range(len(scores))) | {-1}
    assert sum(len(p["segments_info"]) for p in batch["panoptic"]) > 3


def test_bad_window_settings_raise(trained):
    model, _ = trained
    values = torch.zeros(1, 3, 64, 64)
    for crop, stride, match in ((64, 65, "stride"), (0, 1, "crop"), (64, 0, "stride"), ((64,), 32, "crop")):
        with pytest.raises(ValueError, match=match):
            sliding_window_inference(model, values, crop=crop, stride=stride)
    with pytest.raises(ValueError, match="task"):
        sliding_window_inference(model, values, crop=64, stride=32, task="depth")


MEMORY_SCRIPT = r"""
import json, sys
import torch
sys.path[:0] = sys.argv[1:3]
from conftest import tiny_config, tiny_hf_backbone_config
from memory import peak_extra_memory  # VmHWM, reset first: ru_maxrss would carry the parent's peak
from maskformer_hf import MaskFormerForUniversalSegmentation
from maskformer_hf.sliding_window import sliding_window_inference

torch.manual_seed(0)
model = MaskFormerForUniversalSegmentation(tiny_config(backbone=None, backbone_config=tiny_hf_backbone_config("resnet"))).eval()
pixels = torch.randn(1, 3, 4096, 4096)
out = []
with torch.no_grad():
    increase = peak_extra_memory(lambda: out.append(sliding_window_inference(model, pixels, crop=512, stride=384,
                                                                             batch_size=1)[0]))
print(json.dumps({"increase": increase, "shape": list(out[0].shape), "classes": len(out[0].unique())}))
"""


@pytest.mark.system
def test_a_4096_pixel_image_segments_within_a_memory_bound():
    """Peak RSS growth while segmenting a 4096 x 4096 image (crop 512, stride 384: 121 windows) stays
    below a bound derived from what the window pass holds (which is below the least that whole-image
    inference of the same model must hold at once)."""
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(ROOT / "tests"), str(ROOT / "benchmarks")], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shape"] == [4096, 4096]
    if result["increase"] is None:
        pytest.skip("no /proc/self/clear_refs: peak memory cannot be measured here")
    mib = 1 << 20
    side = 4096
    output = side * side * 8  # the int64 class map itself: 128 MiB
    tiles = 3 * sliding_window.TILE_VALUES * 4  # a tile chunk's sum and sampled values (48 MiB)
    window = 128 * mib  # a 512 x 512 window's forward through this model, with the allocator's slack
    bound = output + tiles + window  # 304 MiB (measured: 258 MiB on the 2-core CPU)
    assert result["increase"] < bound, f"{result['increase'] / mib:.0f} MiB"
    # Whole-image inference would hold at least the stem's output (16 channels at stride 2), the mask
    # features (32 channels at stride 4), the mask logits (Q at stride 4) and the map: 544 MiB, and
    # blending at full resolution as mmsegmentation does adds (K, H, W) float32 scores (256 MiB).


def write_eval_checkpoint(tmp_path):
    from maskformer_hf.training import TrainConfig, load_splits

    data = tmp_path / "data"
    config = TrainConfig(dataset="synthetic", data_dir=str(data), synthetic_num_train=1, synthetic_num_val=2,
                         synthetic_size=96)
    _, _, metadata = load_splits(config)
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(
        backbone=None, backbone_config=tiny_hf_backbone_config("resnet"), num_labels=len(metadata.id2label),
        id2label=dict(metadata.id2label), learned_query_features=True))
    with torch.no_grad():  # queries of their own, confident scores: maps that depend on what a window sees
        model.class_predictor.weight.mul_(50.0)
        model.mask_embedder.layers[-1].weight.mul_(10.0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    MaskFormerImageProcessor(size={"shortest_edge": 96, "longest_edge": 384}).save_pretrained(folder)
    return folder, data


def test_evaluate_slide_command_and_its_errors(tmp_path, capsys):
    folder, data = write_eval_checkpoint(tmp_path)
    common = ["evaluate", "--model", str(folder), "--dataset", "synthetic", "--data_dir", str(data),
              "--threshold", "0.3"]
    reports = {}
    for name, flags in (("whole", []), ("one", ["--slide", "96", "64"]), ("slide", ["--slide", "64", "40"])):
        assert cli_main([*common, *flags, "--output", str(tmp_path / f"{name}.json")]) == 0
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["slide"]["slide"] == [64, 40] and reports["whole"]["slide"] is None
    # 64-pixel windows 40 apart see other context than the whole 96-pixel image: other maps, other scores
    # (an evaluation that ignored --slide would give the whole-image numbers).
    assert reports["slide"]["per_category_iou"] != reports["whole"]["per_category_iou"]
    for key in ("mean_iou", "pq", "sq", "rq"):  # a window as large as the 96-pixel images: whole-image numbers
        assert reports["one"][key] == reports["whole"][key]
    capsys.readouterr()
    for flags, message in ((["--slide", "32", "64"], "STRIDE <= CROP"), (["--slide", "0", "0"], "1 <= STRIDE")):
        assert cli_main([*common, *flags, "--output", str(tmp_path / "bad.json")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.json").exists()
    for flags in (["--slide", "64"], ["--slide", "64", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            cli_main([*common, *flags])
        assert exit_info.value.code == 2


def test_segment_slide_writes_full_size_results(trained_checkpoint, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(scene(150, 190, 9)[0]).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    flags = ["segment", str(tmp_path / "wide.png"), "--model", str(trained_checkpoint), "--quiet", "--task",
             "semantic", "--size", "150", "--out", str(out)]
    assert cli_main([*flags, "--slide", "64", "48"]) == 0
    classes = np.array(Image.open(out / "wide_semantic.png"))
    assert classes.shape == (150, 190) and classes.max() < 5
    capsys.readouterr()
    assert cli_main([*flags, "--slide", "64", "128"]) == 2
    assert "--slide" in capsys.readouterr().err


def test_several_tasks_with_their_own_thresholds_share_one_window_pass():
    """`threshold` / `overlap_mask_area_threshold` per task (what evaluate does for PQ and mask AP at
    once): the results of one pass are those of each task alone."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=4)).eval()
    pixels, mask = torch.randn(2, 3, 150, 170), torch.ones(2, 150, 170, dtype=torch.long)
    mask[1, 120:] = 0
    calls = []
    forward = model.forward
    model.forward = lambda **kw: calls.append(1) or forward(**kw)
    both = sliding_window_inference(model, pixels, mask, crop=64, stride=40, task=("semantic", "panoptic", "instance"),
                                    threshold={"panoptic": 0.2, "instance": 0.0},
                                    overlap_mask_area_threshold={"panoptic": 0.8, "instance": 0.0})
    one_pass, calls[:] = len(calls), []
    alone = {"semantic": sliding_window_inference(model, pixels, mask, crop=64, stride=40),
             "panoptic": sliding_window_inference(model, pixels, mask, crop=64, stride=40, task="panoptic",
                                                  threshold=0.2),
             "instance": sliding_window_inference(model, pixels, mask, crop=64, stride=40, task="instance",
                                                  threshold=0.0, overlap_mask_area_threshold=0.0)}
    assert len(calls) == 3 * one_pass
    for i in range(2):
        assert torch.equal(both["semantic"][i], alone["semantic"][i])
        for task in ("panoptic", "instance"):
            assert torch.equal(both[task][i]["segmentation"], alone[task][i]["segmentation"])
            assert both[task][i]["segments_info"] == alone[task][i]["segments_info"]
    assert len(alone["instance"][0]["segments_info"]) > len(alone["panoptic"][0]["segments_info"]) > 0
    with pytest.raises(ValueError, match="mapping"):
        sliding_window_inference(model, pixels, mask, crop=64, stride=40, task="panoptic", threshold={"semantc": 0.5})
