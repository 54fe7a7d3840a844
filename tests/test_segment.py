"""`maskformer-hf segment`: files found and read (corrupt, grey, RGBA, 16-bit), batched inference that
batching does not change, and written predictions that decode back to the pipeline's segments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from conftest import SCENE_LABELS as LABELS
from conftest import scene
from maskformer_hf.cli import main as cli_main
from maskformer_hf.data.schema import rgb_to_id
from maskformer_hf.inference import semantic_scores
from maskformer_hf import segment as segment_module
from maskformer_hf.segment import (decode_rle, find_images, load_image, load_segmenter, predict,
                                 release_freed_memory)

THRESHOLDS = ["--threshold", "0.3", "--overlap-threshold", "0.2"]
PIPELINE_THRESHOLDS = {"threshold": 0.3, "mask_threshold": 0.5, "overlap_mask_area_threshold": 0.2}


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint):
    return trained_checkpoint


def picture(height: int, width: int, seed: int) -> np.ndarray:
    return scene(height, width, seed)[0]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """An RGB JPEG, a grey, an RGBA and a 16-bit PNG, a corrupt PNG, a text file; one image in a subfolder."""
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(picture(50, 70, 10)).save(folder / "colour.jpg", quality=95)
    Image.fromarray(picture(60, 44, 11)[..., 0]).save(folder / "grey.png")
    Image.fromarray(np.dstack([picture(45, 80, 12), np.full((45, 80), 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(picture(64, 64, 13)[..., 1].astype(np.uint16) * 257).save(folder / "deep.png")  # 16-bit grey
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    Image.fromarray(picture(90, 40, 14)).save(folder / "sub" / "tall.png")
    return folder


GOOD = ["alpha", "colour", "deep", "grey", "tall"]


def segment(checkpoint, inputs, out, *flags) -> int:
    return cli_main(["segment", *[str(i) for i in inputs], "--model", str(checkpoint), "--out", str(out),
                     "--quiet", *flags])


def test_images_are_found_and_read(image_dir):
    paths, problems = find_images([image_dir, image_dir / "colour.jpg", str(image_dir / "*.png"), "missing/*.jpg"])
    assert [p.name for p in paths] == ["alpha.png", "broken.png", "colour.jpg", "deep.png", "grey.png", "tall.png"]
    assert problems == ["missing/*.jpg: no such file, or no images in it"]
    with pytest.raises(ValueError, match="broken.png: not a readable image"):
        load_image(image_dir / "broken.png")
    deep = np.asarray(load_image(image_dir / "deep.png"))
    expected = picture(64, 64, 13)[..., 1]  # 16-bit v * 257 comes back as v, not clipped at 255
    assert deep.shape == (64, 64, 3) and np.array_equal(deep[..., 0], expected) and np.array_equal(deep[..., 2], expected)
    assert np.asarray(load_image(image_dir / "alpha.png")).shape == (45, 80, 3)


def test_panoptic_files_decode_to_the_pipelines_segments(checkpoint, image_dir, tmp_path, capsys):
    out = tmp_path / "panoptic"
    assert segment(checkpoint, [image_dir], out, "--task", "panoptic", "--batch-size", "1", *THRESHOLDS) == 0
    captured = capsys.readouterr()
    assert "broken.png: not a readable image" in captured.err + captured.out
    assert "5 of 6 images segmented (panoptic), 1 skipped" in captured.out
    segmenter = pipeline("image-segmentation", model=str(checkpoint))
    total = 0
    for name, path in zip(GOOD, [image_dir / "alpha.png", image_dir / "colour.jpg", image_dir / "deep.png",
                                 image_dir / "grey.png", image_dir / "sub" / "tall.png"]):
        image = load_image(path)
        ids = rgb_to_id(np.asarray(Image.open(out / f"{name}_panoptic.png")))
        info = json.loads((out / f"{name}_panoptic.json").read_text())
        assert ids.shape == (image.height, image.width) and info["file_name"] == f"{name}_panoptic.png"
        expected = segmenter(image, subtask="panoptic", **PIPELINE_THRESHOLDS)
        assert [s["label"] for s in info["segments_info"]] == [e["label"] for e in expected]
        for segment_info, reference in zip(info["segments_info"], expected):
            mask = ids == segment_info["id"]
            assert np.array_equal(mask, np.asarray(reference["mask"]) > 0)
            assert segment_info["score"] == pytest.approx(reference["score"], abs=1e-6)
            assert segment_info["area"] == mask.sum() and LABELS[segment_info["category_id"]] == segment_info["label"]
            x, y, w, h = segment_info["bbox"]
            rows, cols = np.nonzero(mask)
            assert (x, y, x + w - 1, y + h - 1) == (cols.min(), rows.min(), cols.max(), rows.max())
            assert segment_info["isthing"] == (segment_info["category_id"] in (2, 3))
        assert set(np.unique(ids)) <= {0} | {s["id"] for s in info["segments_info"]}
        total += len(expected)
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.width == image.width and overlay.height >= image.height
    assert total >= 10  # the comparison is not vacuous
    run = json.loads((out / "predictions_panoptic.json").read_text())
    assert [a["image_id"] for a in run["annotations"]] == list(range(5))  # COCO ids: integers, in run order
    assert [i["file_name"] for i in run["images"]] == ["alpha.png", "colour.jpg", "deep.png", "grey.png", "tall.png"]
    assert [a["file_name"] for a in run["annotations"]] == [f"{name}_panoptic.png" for name in GOOD]
    assert [c["name"] for c in run["categories"]] == list(LABELS.values())
    assert [c["isthing"] for c in run["categories"]] == [0, 0, 1, 1, 0]


def test_semantic_and_instance_files_decode_to_the_pipelines_segments(checkpoint, image_dir, tmp_path):
    segmenter = pipeline("image-segmentation", model=str(checkpoint))
    image = load_image(image_dir / "colour.jpg")
    assert segment(checkpoint, [image_dir / "colour.jpg"], tmp_path / "semantic", "--task", "semantic") == 0
    classes = np.asarray(Image.open(tmp_path / "semantic" / "colour_semantic.png"))
    expected = segmenter(image, subtask="semantic")
    assert sorted(LABELS[c] for c in np.unique(classes)) == sorted(e["label"] for e in expected)
    for reference in expected:
        label = {v: k for k, v in LABELS.items()}[reference["label"]]
        assert np.array_equal(classes == label, np.asarray(reference["mask"]) > 0)

    assert segment(checkpoint, [image_dir / "colour.jpg"], tmp_path / "instance", "--task", "instance",
                   *THRESHOLDS) == 0
    records = json.loads((tmp_path / "instance" / "colour_instances.json").read_text())["instances"]
    expected = segmenter(image, subtask="instance", **PIPELINE_THRESHOLDS)
    assert len(records) == len(expected) >= 2
    for record, reference in zip(records, expected):
        assert record["label"] == reference["label"] and record["score"] == pytest.approx(reference["score"], abs=1e-6)
        mask = decode_rle(record["segmentation"])
        assert np.array_equal(mask, np.asarray(reference["mask"]) > 0) and record["area"] == mask.sum()
    results = json.loads((tmp_path / "instance" / "predictions_instances.json").read_text())
    assert len(results) == len(records) and {"image_id", "category_id", "segmentation", "score"} <= set(results[0])


def test_batching_changes_nothing_but_float_ties(checkpoint, image_dir, tmp_path):
    """Images of different sizes padded into one batch give the results they give alone: logits
    equal to float rounding (the model honours the padding mask), so a pixel may differ only where
    two classes' scores tie to that precision; here each such pixel is shown to be a tie."""
    model, processor = load_segmenter(checkpoint, "cpu")
    paths = [image_dir / "colour.jpg", image_dir / "grey.png", image_dir / "sub" / "tall.png", image_dir / "deep.png"]
    images = [load_image(p) for p in paths]
    batched = predict(model, processor, images, "semantic")
    differing = 0
    for image, together in zip(images, batched):
        alone = predict(model, processor, [image], "semantic")[0]
        inputs = processor(images=[image])
        with torch.inference_mode():
            out = model(**inputs)
        scores = semantic_scores(out.class_queries_logits, out.masks_queries_logits, out.pixel_mask,
                                 [(image.height, image.width)])[0]  # (K, H, W)
        top2 = scores.topk(2, dim=0).values
        changed = together != alone
        differing += int(changed.sum())
        assert torch.all(top2[0][changed] - top2[1][changed] <= 1e-4 * top2[0].max())
    assert differing <= 0.005 * sum(i.width * i.height for i in images)
    # The files of a whole run: batch 1 and batch 4 give the same segments.
    assert segment(checkpoint, [image_dir], tmp_path / "b1", "--batch-size", "1", *THRESHOLDS) == 0
    assert segment(checkpoint, [image_dir], tmp_path / "b4", "--batch-size", "4", *THRESHOLDS) == 0
    for name in GOOD:
        one = json.loads((tmp_path / "b1" / f"{name}_panoptic.json").read_text())["segments_info"]
        four = json.loads((tmp_path / "b4" / f"{name}_panoptic.json").read_text())["segments_info"]
        assert [s["label"] for s in one] == [s["label"] for s in four]
        assert [s["score"] for s in one] == pytest.approx([s["score"] for s in four], abs=1e-5)
        a = rgb_to_id(np.asarray(Image.open(tmp_path / "b1" / f"{name}_panoptic.png")))
        b = rgb_to_id(np.asarray(Image.open(tmp_path / "b4" / f"{name}_panoptic.png")))
        assert (a != b).mean() <= 0.005


def test_exit_status_is_non_zero_only_when_nothing_was_segmented(checkpoint, image_dir, tmp_path, capsys):
    assert segment(checkpoint, [image_dir / "broken.png"], tmp_path / "none") == 1
    assert segment(checkpoint, [tmp_path / "no-such-folder"], tmp_path / "none") == 1
    assert "nothing to segment" in capsys.readouterr().err
    assert segment(checkpoint, [image_dir / "broken.png", image_dir / "grey.png"], tmp_path / "one") == 0
    assert segment(tmp_path / "not-a-checkpoint", [image_dir / "grey.png"], tmp_path / "two") == 2
    assert "could not load a checkpoint" in capsys.readouterr().err
    for flags in (["--task", "depth"], ["--threshold", "2"], ["--batch-size", "0"], ["--size", "-3"],
                  ["--device", "gpu"]):
        with pytest.raises(SystemExit) as exit_info:  # argparse: usage and status 2, before any model is loaded
            cli_main(["segment", str(image_dir), "--model", str(checkpoint), *flags])
        assert exit_info.value.code == 2, flags


def test_names_outputs_and_failures(checkpoint, image_dir, tmp_path, capsys, monkeypatch):
    """Names never collide (case-blind; not with the run's COCO file), the output folder is not read
    back as input, a file that fails in the model is skipped, and --size sets the model's input size."""
    from maskformer_hf import segment as segment_module

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("predictions.png", "A.png", "sub/a.png", "a.jpg"):
        Image.fromarray(picture(40, 50, len(name))).save(folder / name)
    Image.fromarray(np.full((8, 8), -5, np.int32)).save(folder / "negative.tif")
    out = folder / "segmented"
    assert segment(checkpoint, [folder], out, *THRESHOLDS) == 0
    assert segment(checkpoint, [folder], out, *THRESHOLDS) == 0  # again: the overlays of run 1 are not inputs
    err = capsys.readouterr().err
    assert "negative.tif: not a readable image" in err and err.count("skipped") == 2
    stems = sorted(p.name.removesuffix("_panoptic.json") for p in out.glob("*_panoptic.json"))
    assert stems == ["A", "a-2", "a-3", "predictions", "predictions-2"]  # "predictions": the run file
    assert "segments_info" in json.loads((out / "predictions_panoptic.json").read_text())["annotations"][0]
    assert json.loads((out / "predictions_panoptic.json").read_text())["images"][0]["file_name"] == "A.png"

    real_predict = segment_module.predict

    def failing(model, processor, images, *args, **kwargs):
        if any(image.height == 90 for image in images):  # tall.png
            raise RuntimeError("out of memory")
        return real_predict(model, processor, images, *args, **kwargs)

    monkeypatch.setattr(segment_module, "predict", failing)
    assert segment(checkpoint, [image_dir], tmp_path / "oom", "--batch-size", "3") == 0
    err = capsys.readouterr().err
    assert "tall.png: inference failed (RuntimeError: out of memory)" in err
    assert len(list((tmp_path / "oom").glob("*_overlay.png"))) == 4  # the tall image's batch mates survive
    monkeypatch.setattr(segment_module, "predict", real_predict)

    model, processor = load_segmenter(checkpoint, "cpu")
    seen = []
    monkeypatch.setattr(model, "forward", lambda pixel_values, pixel_mask: seen.append(pixel_values.shape) or
                        model.__class__.forward(model, pixel_values=pixel_values, pixel_mask=pixel_mask))
    result = predict(model, processor, [load_image(image_dir / "sub" / "tall.png")], "semantic", size=32)[0]
    assert tuple(result.shape) == (90, 40) and tuple(seen[0][-2:]) == (96, 32)


def test_every_command_line_flag_has_a_help():
    from maskformer_hf.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert set(commands.choices) == {"segment", "train", "evaluate", "push", "card", "convert", "export", "ablate", "recipes"}
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 8, (name, action.dest)
    words = " ".join(commands.choices["train"].format_help().split())
    assert "its classifier is re-sized to the dataset's classes" in words  # the recipe field's own help


@pytest.mark.skipif(segment_module._MALLOC_TRIM is None, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system():
    """64 KiB blocks come from the heap (below glibc's mmap threshold); keeping every 16th one pins the
    heap's top, so freeing the rest leaves free pages that only ``malloc_trim`` returns."""
    def anonymous_mib() -> float:
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        return int(status["RssAnon"].split()[0]) / 1024

    blocks = [bytearray(64 * 1024) for _ in range(3200)]  # 200 MiB, touched (zero-filled)
    kept = blocks[::16]
    del blocks
    before = anonymous_mib()
    assert release_freed_memory()
    assert before - anonymous_mib() > 100, "at least half of the 188 MiB freed should be returned"
    assert len(kept) == 200


def test_memory_is_released_after_every_batch(checkpoint, image_dir, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(segment_module, "release_freed_memory", lambda: calls.append(1) or True)
    model, processor = load_segmenter(checkpoint)
    paths, _ = find_images([image_dir])
    segment_module.segment_files(paths, model, processor, tmp_path, batch_size=2, progress=False)
    assert len(calls) == 3  # 6 files (one unreadable) in batches of 2 readable images: 2 + 2 + 1
