"""Tiny models shared by the tests: ours and transformers' (the oracle), built offline."""

from __future__ import annotations

import os

# torch.compile compiles on first use in every process that computes a loss (tens of seconds on 2 cores,
# again per process and shape): off for the whole suite, child processes included. The tests of the
# compiled kernels switch it on themselves (tests/test_swin_and_ops.py).
os.environ.setdefault("MASKFORMER_HF_COMPILE", "0")
# Under pytest-xdist (`make test` runs two workers on the two cores): one thread per worker, and per process
# it starts, so that two workers never oversubscribe the cores (the variable is read when torch loads;
# children inherit it, so a process and its children still compute alike).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import MaskFormerConfig as HFMaskFormerConfig  # noqa: E402
from transformers import MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

from maskformer_hf import MaskFormerConfig

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def tiny_hf_backbone_config(kind: str):
    if kind == "swin":
        return SwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=4, image_size=64,
                          out_features=STAGES)
    if kind == "resnet":
        return ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=STAGES)
    raise ValueError(kind)


def tiny_hf_model(kind: str, num_labels: int = 5, seed: int = 0) -> MaskFormerForInstanceSegmentation:
    """A randomly initialised transformers MaskFormer with a tiny Swin or ResNet backbone."""
    torch.manual_seed(seed)
    config = HFMaskFormerConfig(
        backbone_config=tiny_hf_backbone_config(kind),
        num_labels=num_labels,
        decoder_config=dict(model_type="detr", decoder_layers=3, d_model=64, decoder_ffn_dim=96, num_queries=10,
                            decoder_attention_heads=4),
        fpn_feature_size=32,
        mask_feature_size=32,
    )
    return MaskFormerForInstanceSegmentation(config).eval()


def tiny_config(**overrides) -> MaskFormerConfig:
    """Our tiny config: timm ResNet-18 features, 32-wide FPN, 3 decoder layers of width 64."""
    values = dict(backbone="resnet18", num_labels=4, num_queries=8, hidden_size=64, decoder_layers=3,
                  decoder_attention_heads=4, decoder_ffn_dim=96, fpn_feature_size=32, mask_feature_size=32)
    values.update(overrides)
    return MaskFormerConfig(**values)


@pytest.fixture(params=["swin", "resnet"])
def hf_kind(request) -> str:
    return request.param


def distributed_case(batch_size: int = 4, segments: int = 3):
    """A tiny model (LayerNorm backbone, no dropout nor drop-path: per-process and whole-batch steps
    are comparable)
    and a fixed batch whose images all hold `segments` segments (so that the class term's weighting
    coincides across processes)."""
    from maskformer_hf import MaskFormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone_config = tiny_hf_backbone_config("swin")
    backbone_config.drop_path_rate = 0.0
    config = tiny_config(backbone=None, backbone_config=backbone_config, dropout=0.0)
    model = MaskFormerForUniversalSegmentation(config).train()
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(batch_size, 3, 64, 64, generator=generator)
    mask_labels, class_labels = [], []
    for _ in range(batch_size):
        ids = torch.randint(0, segments, (64, 64), generator=generator)
        ids[0, :segments] = torch.arange(segments)
        mask_labels.append(torch.stack([(ids == k).float() for k in range(segments)]))
        class_labels.append(torch.randperm(config.num_labels, generator=generator)[:segments])
    return model, pixel_values, mask_labels, class_labels


def fake_segmentation_outputs(batch: int = 2, queries: int = 20, classes: int = 10, size: tuple[int, int] = (32, 40),
                              confident: int = 6, class_margin: float = 14.0, edge_sharpness: float = 4.0,
                              seed: int = 0, noise: float = 0.0, layout: str = "partition"):
    """Logits shaped like a trained MaskFormer's: `confident` queries own the regions of a random
    partition (``layout="partition"``: Voronoi cells, soft edges) or of overlapping discs of random
    radii (``"overlap"``: queries compete for the same pixels, as duplicate predictions do) with a
    confident class each; the others predict "no object" and weak, smooth masks. `noise`: std of
    i.i.d. Gaussian noise added to every mask logit. Returns `(class_queries_logits (B, Q, K + 1),
    masks_queries_logits (B, Q, h, w))`."""
    if layout not in ("partition", "overlap"):
        raise ValueError(f"layout: expected 'partition' or 'overlap', got {layout!r}")
    g = torch.Generator().manual_seed(seed)
    h, w = size
    class_logits = torch.randn(batch, queries, classes + 1, generator=g)
    class_logits[..., -1] += 8.0
    noise_maps = torch.nn.functional.interpolate(torch.randn(batch * queries, 1, 6, 6, generator=g), size=size,
                                                 mode="bicubic", align_corners=False)
    mask_logits = torch.randn(batch, queries, 1, 1, generator=g) - 6.0 + 2.0 * noise_maps.view(batch, queries, h, w)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for b in range(batch):
        owners = torch.randperm(queries, generator=g)[:confident]
        class_logits[b, owners, torch.randint(0, classes, (confident,), generator=g)] += class_margin
        centres = torch.rand(confident, 2, generator=g) * torch.tensor([h, w])
        dist = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2).sqrt()  # (confident, h, w)
        if layout == "partition":
            shapes = 6.0 - edge_sharpness * (dist - dist.min(0).values)
        else:
            radii = (0.1 + 0.3 * torch.rand(confident, 1, 1, generator=g)) * min(h, w)
            shapes = edge_sharpness / 4 * (radii - dist)
        mask_logits[b, owners] = shapes + 0.5 * torch.randn(confident, h, w, generator=g)
    if noise:
        mask_logits += noise * torch.randn(mask_logits.shape, generator=g)
    return class_logits, mask_logits


def write_coco_panoptic_fixture(root, num_classes: int = 12, num_things: int = 8, num_train: int = 6,
                                num_val: int = 3, size: tuple[int, int] = (64, 80), seed: int = 0):
    """A small COCO-panoptic folder with `num_classes` categories (ids 1, 3, 5, ...: not contiguous; the
    last `num_classes - num_things` are stuff): each image has two stuff bands and two or three thing
    rectangles of random classes. Returns the category names in label order."""
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from maskformer_hf.data.schema import id_to_rgb

    root, rng = Path(root), np.random.default_rng(seed)
    names = [f"thing{k}" if k < num_things else f"stuff{k}" for k in range(num_classes)]
    categories = [{"id": 2 * k + 1, "name": n, "isthing": int(k < num_things)} for k, n in enumerate(names)]
    h, w = size
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"panoptic_{split}").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            ids = np.zeros((h, w), np.int64)
            stuff = rng.choice(np.arange(num_things, num_classes), 2, replace=False)
            ids[: h // 2], ids[h // 2:] = 1000 * (stuff[0] + 1), 1000 * (stuff[1] + 1)
            for k in range(int(rng.integers(2, 4))):
                label = int(rng.integers(0, num_things))
                y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
                ids[y:y + 14, x:x + 14] = 1000 * (label + 1) + k + 1
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            stem = f"{index:04d}"
            Image.fromarray(pixels).save(root / split / f"{stem}.jpg")
            Image.fromarray(id_to_rgb(ids)).save(root / f"panoptic_{split}" / f"{stem}.png")
            segments = [{"id": int(i), "category_id": categories[int(i) // 1000 - 1]["id"], "iscrowd": 0,
                         "area": int((ids == i).sum()), "bbox": [0, 0, 1, 1]} for i in np.unique(ids)]
            images.append({"id": index, "file_name": f"{stem}.jpg", "height": h, "width": w})
            annotations.append({"image_id": index, "file_name": f"{stem}.png", "segments_info": segments})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return names


SCENE_LABELS = {0: "sky", 1: "road", 2: "car", 3: "person", 4: "tree"}
SCENE_COLOURS = {0: (90, 160, 230), 1: (90, 90, 90), 4: (40, 150, 40), 100: (220, 40, 40), 101: (240, 200, 30)}


def scene(height: int, width: int, seed: int):
    """A picture a tiny model learns in seconds: two stuff bands (sky / road / tree) and two things
    (a red "car" and a yellow "person" block), with noise. Returns `(pixels (H, W, 3) uint8,
    segment ids (H, W))`: stuff ids are the class ids, things are 100 (car) and 101 (person)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = np.zeros((height, width), np.int64)
    stuff = rng.choice([0, 1, 4], 2, replace=False)
    ids[: height // 2], ids[height // 2:] = stuff[0], stuff[1]
    for k in range(2):
        y, x = rng.integers(0, height - height // 3), rng.integers(0, width - width // 4)
        ids[y:y + height // 3, x:x + width // 4] = 100 + k
    pixels = np.zeros((height, width, 3), np.uint8)
    for value, colour in SCENE_COLOURS.items():
        pixels[ids == value] = colour
    return np.clip(pixels + rng.integers(0, 30, pixels.shape), 0, 255).astype(np.uint8), ids


def assert_learns(run: Path, margin: float = 0.9) -> None:
    """The logged training loss of a run folder falls: some later step below ``margin`` x the first
    step's (seeds 42, 1 and 7 of tests/test_train_script.py's tiny recipe give 0.80, 0.83 and 0.73
    within 4 steps)."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if "loss" in record]
    assert len(losses) >= 2 and min(losses[1:]) < margin * losses[0], losses


def built_once(tmp_path_factory, name: str, build) -> Path:
    """``build(folder)`` run once per test run, whatever the number of pytest-xdist workers: the first
    worker to ask builds it under a file lock in the run's shared temporary folder, the others wait and
    reuse it (pytest-xdist's recipe for session fixtures). Returns the folder."""
    from filelock import FileLock

    worker_root = tmp_path_factory.getbasetemp()
    root = worker_root.parent if os.environ.get("PYTEST_XDIST_WORKER") else worker_root
    folder = root / f"built-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            if folder.exists():
                shutil.rmtree(folder)  # a build that failed half-way
            folder.mkdir()
            build(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory):
    """A tiny MaskFormer trained for 80 steps on six 64x64 scenes (about 10 s): unlike a random
    model, it predicts several classes and segments per image. Saved with its processor. Built once
    per run (:func:`built_once`); tests must not write into it."""
    return built_once(tmp_path_factory, "trained-tiny", _train_tiny_checkpoint)


def _train_tiny_checkpoint(path: Path) -> None:
    from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor

    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(num_labels=5, id2label=SCENE_LABELS,
                                                           stuff_label_ids=[0, 1, 4]))
    processor = MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 112})
    data = [scene(64, 64, seed) for seed in range(6)]
    batch = processor(images=[d[0] for d in data], segmentation_maps=[d[1] for d in data],
                      instance_id_to_semantic_id={0: 0, 1: 1, 4: 4, 100: 2, 101: 3})
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(80):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(path)
    processor.save_pretrained(path)


# --- a COCO instance file (tests/test_coco_instances.py, tests/test_evaluation_mask_ap.py) ----------
def _rectangle(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture
def coco_instances_root(tmp_path):
    """The COCO instance layout: annotations/instances_val2017.json + val2017/*.jpg, with every kind of segmentation."""
    import json

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    sizes = {1: (40, 60), 2: (32, 32), 3: (24, 30), 4: (20, 20)}  # id -> (height, width); image 4's file is missing
    for image_id, (h, w) in sizes.items():
        if image_id != 4:
            Image.new("RGB", (w, h), (image_id * 40, 0, 0)).save(tmp_path / "val2017" / f"{image_id:012d}.jpg")
    crowd = np.zeros((40, 60), dtype=np.uint8, order="F")
    crowd[25:38, 2:30] = 1
    uncompressed = {"size": [40, 60], "counts": []}  # COCO's crowd format: uncompressed RLE, column-major runs
    flat, value, run = crowd.flatten(order="F"), 0, 0
    for pixel in flat:
        if pixel != value:
            uncompressed["counts"].append(run)
            value, run = pixel, 0
        run += 1
    uncompressed["counts"].append(run)
    blob = np.zeros((32, 32), dtype=np.uint8, order="F")
    blob[4:20, 6:28] = 1
    compressed = mask_utils.encode(blob)
    compressed["counts"] = compressed["counts"].decode()
    annotations = [
        # image 1: a big box with a small one inside (overlap), a third box elsewhere, one crowd region
        {"id": 10, "image_id": 1, "category_id": 18, "segmentation": _rectangle(5, 5, 50, 30), "area": 1125.0,
         "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 1, "segmentation": _rectangle(20, 10, 30, 20), "area": 100.0,
         "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 1, "segmentation": _rectangle(40, 32, 58, 39), "area": 126.0,
         "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 1, "segmentation": uncompressed, "area": float(crowd.sum()),
         "iscrowd": 1},
        # image 2: a compressed RLE and a two-polygon instance
        {"id": 20, "image_id": 2, "category_id": 44, "segmentation": compressed, "area": float(blob.sum()),
         "iscrowd": 0},
        {"id": 21, "image_id": 2, "category_id": 18,
         "segmentation": _rectangle(1, 22, 8, 30) + _rectangle(20, 24, 30, 30), "area": 116.0, "iscrowd": 0},
        {"id": 40, "image_id": 4, "category_id": 1, "segmentation": _rectangle(1, 1, 5, 5), "area": 16.0,
         "iscrowd": 0},
    ]  # image 3 has no annotation
    content = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w} for i, (h, w) in sizes.items()],
        "categories": [{"id": 44, "name": "bottle", "supercategory": "kitchen"},
                       {"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"}],
        "annotations": annotations,
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Tiers: `system` tests (they start processes, servers, browsers, export graphs, run benchmarks or the
# docs' pages) run in `make test`; `make test-fast` deselects them.
# ---------------------------------------------------------------------------------------------
# The one process the standard library starts on its own: `uname -p`, on the first platform.processor()
# (model cards describe the CPU). Asked here, once, so that a fast test run alone does not trip the guard.
platform.processor()


@pytest.fixture(autouse=True)
def _processes_only_in_system_tests(request, monkeypatch):
    """A test that starts a process must be marked ``system`` (else the fast tier would not be fast)."""
    if request.node.get_closest_marker("system"):
        return
    def refuse(self, args, *rest, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.system")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
