"""A deterministic synthetic panoptic dataset, written in the ADE20K and COCO-panoptic layouts.

Six classes (label ids in this order; COCO category ids 1, 2, 3, 101, 102, 103):

=====  =======  ======  ============================================================
label  name     kind    looks like
=====  =======  ======  ============================================================
0      ball     thing   a disc with a checkerboard texture
1      box      thing   a square (tilted ≤ 15°) with diagonal stripes
2      kite     thing   a triangle (tilted ≤ 15°) with horizontal stripes
3      sky      stuff   a smooth gradient with soft low-frequency clouds
4      grass    stuff   vertical streaks
5      sand     stuff   fine speckle with dark grains
=====  =======  ======  ============================================================

Each image has 2-3 stuff regions separated by wavy boundaries (stuff classes in random order,
horizontal or vertical bands) and 2-4 non-overlapping things. A thing's texture uses two random
colours of clearly different brightness from one palette shared by all thing classes, so its class
is told by shape and texture, never by colour; stuff colours are jittered around a typical hue.
Images are small (128×128 by default), shapes large and textures coarse (8-12 px periods).

Every image comes from its own generator seeded with ``(seed, split, index)``: the same arguments
always give the same files, and the validation images do not depend on the number of train images.

``python -m maskformer_hf.data.synthetic --out DIR`` writes::

    DIR/ADEChallengeData2016/{images,annotations}/{training,validation}/synthetic_XXXXXX.{jpg,png} + classes.json
    DIR/coco/{train2017,val2017}/*.jpg, panoptic_{train,val}2017/*.png, annotations/panoptic_{train,val}2017.json

read back with ``load_ade20k(DIR/"ADEChallengeData2016")`` (semantic) and
``load_coco_panoptic(DIR/"coco")`` (panoptic). Panoptic segment ids are ``1000·(label+1) + k``
(k = 0 for stuff, 1, 2, ... for things), so they exceed 255.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .schema import id_to_rgb

logger = logging.getLogger(__name__)

THING_CLASSES: tuple[str, ...] = ("ball", "box", "kite")
STUFF_CLASSES: tuple[str, ...] = ("sky", "grass", "sand")
CLASS_NAMES: tuple[str, ...] = THING_CLASSES + STUFF_CLASSES
THING_IDS: tuple[int, ...] = (0, 1, 2)
COCO_CATEGORY_IDS: tuple[int, ...] = (1, 2, 3, 101, 102, 103)
_STUFF_HUES = {3: 0.58, 4: 0.30, 5: 0.11}  # typical hue of sky, grass, sand
_PALETTE = np.array([[230, 40, 40], [250, 150, 20], [245, 225, 40], [200, 40, 200], [120, 50, 220],
                     [30, 200, 220], [40, 90, 230], [245, 245, 245], [25, 25, 25], [150, 90, 40],
                     [20, 30, 100], [90, 20, 40], [250, 180, 200], [170, 240, 250]],
                    dtype=np.float32) / 255.0
_SPLITS = {"train": 0, "validation": 1}
_LUMA = _PALETTE @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) -> `(3,)` RGB in [0, 1]."""
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def _contrasting_pair(rng: np.random.Generator) -> tuple[int, int]:
    """Two palette indices whose brightness differs by at least 0.3, so textures stay visible."""
    first = int(rng.integers(len(_PALETTE)))
    candidates = np.flatnonzero(np.abs(_LUMA - _LUMA[first]) >= 0.3)
    return first, int(rng.choice(candidates))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a `(cells, cells)` random grid bicubically upsampled to `(size, size)`."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0


def _stuff_texture(rng: np.random.Generator, label: int, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`(size, size, 3)` float texture of a stuff class."""
    base = _hsv_to_rgb((_STUFF_HUES[label] + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.45, 0.75),
                       rng.uniform(0.55, 0.85))
    if label == 3:  # sky: vertical gradient + soft clouds
        shade = 0.25 * (yy / size - 0.5) + 0.35 * (_smooth_noise(rng, size, 4) - 0.5)
    elif label == 4:  # grass: vertical streaks
        columns = rng.random(size).astype(np.float32)
        shade = 0.45 * (columns[None, :] - 0.5) + 0.15 * (rng.random((size, size)).astype(np.float32) - 0.5)
    else:  # sand: fine speckle + dark grains
        shade = 0.3 * (rng.random((size, size)).astype(np.float32) - 0.5)
        shade -= 0.35 * (rng.random((size, size)) < 0.06)
    return np.clip(base[None, None, :] * (1.0 + shade[..., None]), 0.0, 1.0)


def _thing_mask(label: int, cy: float, cx: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`(size, size)` bool mask of a thing: disc, rotated square or rotated triangle of radius ``r``."""
    dy, dx = yy - cy, xx - cx
    if label == 0:
        return dy**2 + dx**2 <= r**2
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # rotated coordinates
    if label == 1:
        half = 0.8 * r
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    inside = np.ones_like(u, dtype=bool)  # triangle: three half-planes at distance r/2 from the centre
    for k in range(3):
        theta = 2 * math.pi * k / 3 - math.pi / 2
        inside &= u * math.cos(theta) + v * math.sin(theta) <= 0.6 * r
    return inside


def _thing_pattern(rng: np.random.Generator, label: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`(size, size)` bool pattern: checkerboard (ball), diagonal stripes (box), horizontal stripes (kite)."""
    oy, ox = rng.integers(0, 16, size=2)
    if label == 0:
        cell = 8
        return ((yy + oy) // cell + (xx + ox) // cell) % 2 == 0
    if label == 1:
        period = 12
        return ((yy + xx + oy) % period) < period / 2
    period = 10
    return ((yy + oy) % period) < period / 2


def free_spot(rng: np.random.Generator, size: int, r: float,
              placed: list[tuple[float, float, float]]) -> tuple[float, float] | None:
    """A centre for a shape of radius ``r`` inside the image, 4 px clear of the ``placed`` ones
    ``(cy, cx, r)``: up to 20 random tries, None when all fail."""
    for _attempt in range(20):
        cy, cx = rng.uniform(r + 2, size - r - 2, size=2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + rr + 4) ** 2 for y, x, rr in placed):
            return float(cy), float(cx)
    return None


def generate_example(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One synthetic image.

    Returns:
        image `(size, size, 3)` uint8, segment-id map `(size, size)` int64 (ids ``1000·(label+1) + k``,
        no void), and its segments ``[{"id", "label_id", "iscrowd": False, "area", "bbox": [x, y, w, h]}]``.
    """
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Stuff: 2-3 bands with wavy boundaries, horizontal or vertical, classes in random order.
    num_regions = int(rng.integers(2, 4))
    stuff = [3 + int(c) for c in rng.permutation(3)[:num_regions]]
    along, across = (xx, yy) if rng.random() < 0.5 else (yy, xx)
    cuts = np.sort(rng.uniform(0.2, 0.8, num_regions - 1)) * size
    if num_regions == 3 and cuts[1] - cuts[0] < 0.25 * size:
        cuts = np.array([0.3, 0.7]) * size
    region = np.zeros((size, size), dtype=np.int64)
    for cut in cuts:
        wave = rng.uniform(0.03, 0.08) * size * np.sin(2 * np.pi * along / rng.uniform(0.5, 1.2) / size
                                                      + rng.uniform(0, 2 * np.pi))
        region += across > cut + wave
    image = np.zeros((size, size, 3), dtype=np.float32)
    ids = np.zeros((size, size), dtype=np.int64)
    for index, label in enumerate(stuff):
        inside = region == index
        image[inside] = _stuff_texture(rng, label, size, yy, xx)[inside]
        ids[inside] = 1000 * (label + 1)
    # Things: 2-4 non-overlapping shapes, colours from one shared palette.
    placed: list[tuple[float, float, float]] = []
    counts = {label: 0 for label in THING_IDS}
    for _ in range(int(rng.integers(2, 5))):
        label = int(rng.integers(0, 3))
        r = rng.uniform(0.15, 0.23) * size
        spot = free_spot(rng, size, r, placed)
        if spot is None:
            continue
        cy, cx = spot
        placed.append((cy, cx, r))
        mask = _thing_mask(label, cy, cx, r, rng.uniform(-math.pi / 12, math.pi / 12), yy, xx)
        first, second = _contrasting_pair(rng)
        pattern = _thing_pattern(rng, label, yy, xx)
        colours = np.where(pattern[..., None], _PALETTE[first], _PALETTE[second])
        image[mask] = colours[mask] * rng.uniform(0.85, 1.0)
        counts[label] += 1
        ids[mask] = 1000 * (label + 1) + counts[label]
    image = np.clip(image + rng.normal(0.0, 0.025, image.shape), 0.0, 1.0)
    return (image * 255 + 0.5).astype(np.uint8), ids, segments_of(ids)


def segments_of(ids: np.ndarray) -> list[dict[str, Any]]:
    """The segments of a segment-id map (ids ``1000·(label+1) + k``), as :func:`generate_example` returns them."""
    segments = []
    for segment_id in np.unique(ids):
        ys, xs = np.nonzero(ids == segment_id)
        segments.append({"id": int(segment_id), "label_id": int(segment_id // 1000 - 1), "iscrowd": False,
                         "area": int(ys.size), "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                                        int(np.ptp(ys)) + 1]})
    return segments


def write_synthetic_dataset(
    out_dir: str | Path,
    num_train: int = 400,
    num_val: int = 100,
    size: int = 128,
    seed: int = 0,
    layouts: Sequence[str] = ("ade20k", "coco"),
    scenes: Any = None,
) -> dict[str, Path]:
    """Generate and write the dataset; returns ``{"ade20k": DIR/ADEChallengeData2016, "coco": DIR/coco}``.

    Args:
        out_dir: created if needed; existing files of the same names are overwritten.
        num_train / num_val: images per split.
        size: image side in pixels.
        seed: the dataset seed (of the images; ``scenes`` has its own for the classes).
        layouts: which layouts to write (``"ade20k"``, ``"coco"``).
        scenes: None for this module's 6-class set, or a
            :class:`maskformer_hf.data.synthetic_scenes.SceneGenerator` (any class count).
    """
    unknown = set(layouts) - {"ade20k", "coco"}
    if unknown:
        raise ValueError(f"layouts must be among 'ade20k', 'coco'; got {sorted(unknown)}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train and num_val must be >= 0, got {num_train}, {num_val}")
    out_dir = Path(out_dir)
    roots = {"ade20k": out_dir / "ADEChallengeData2016", "coco": out_dir / "coco"}
    if scenes is None:
        classes = [{"name": name, "isthing": label in THING_IDS} for label, name in enumerate(CLASS_NAMES)]
        category_ids, generate = list(COCO_CATEGORY_IDS), generate_example
    else:
        classes, category_ids, generate = scenes.classes, list(range(1, len(scenes.classes) + 1)), scenes
    if len(classes) > 254 and "ade20k" in layouts:
        raise ValueError(f"scenes: the ADE20K layout stores labels in uint8 PNGs, at most 254 classes, got {len(classes)}")
    if "ade20k" in layouts:
        roots["ade20k"].mkdir(parents=True, exist_ok=True)
        (roots["ade20k"] / "classes.json").write_text(json.dumps({"classes": classes}, indent=1))
    categories = [{"id": cid, "name": c["name"], "isthing": int(c["isthing"]), "supercategory": "synthetic"}
                  for cid, c in zip(category_ids, classes)]
    for split, count in (("train", num_train), ("validation", num_val)):
        ade_split, coco_split = ("training", "train2017") if split == "train" else ("validation", "val2017")
        dirs = {"ade_img": roots["ade20k"] / "images" / ade_split, "ade_ann": roots["ade20k"] / "annotations" / ade_split,
                "coco_img": roots["coco"] / coco_split, "coco_png": roots["coco"] / f"panoptic_{coco_split}"}
        for key, folder in dirs.items():
            if ("ade20k" if key.startswith("ade") else "coco") in layouts:
                folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            rng = np.random.default_rng([seed, _SPLITS[split], index])
            image, ids, segments = generate(rng, size)
            stem = f"synthetic_{index:06d}"
            if "ade20k" in layouts:
                Image.fromarray(image).save(dirs["ade_img"] / f"{stem}.jpg", quality=92)
                Image.fromarray((ids // 1000).astype(np.uint8), mode="L").save(dirs["ade_ann"] / f"{stem}.png")
            if "coco" in layouts:
                Image.fromarray(image).save(dirs["coco_img"] / f"{stem}.jpg", quality=92)
                Image.fromarray(id_to_rgb(ids)).save(dirs["coco_png"] / f"{stem}.png")
                images.append({"id": index, "file_name": f"{stem}.jpg", "height": size, "width": size})
                annotations.append({"image_id": index, "file_name": f"{stem}.png", "segments_info": [
                    {"id": s["id"], "category_id": category_ids[s["label_id"]], "iscrowd": 0,
                     "area": s["area"], "bbox": s["bbox"]} for s in segments]})
        if "coco" in layouts:
            (roots["coco"] / "annotations").mkdir(parents=True, exist_ok=True)
            (roots["coco"] / "annotations" / f"panoptic_{coco_split}.json").write_text(json.dumps(
                {"images": images, "annotations": annotations, "categories": categories}))
        logger.info("synthetic %s: %d images written under %s", split, count, out_dir)
    return {layout: roots[layout] for layout in layouts}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic panoptic dataset (ADE20K and COCO layouts).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layouts", nargs="+", default=["ade20k", "coco"], choices=["ade20k", "coco"])
    parser.add_argument("--scenes", nargs=2, type=int, metavar=("STUFF", "THINGS"), default=None,
                        help="another set: SceneGenerator(STUFF, THINGS) classes instead of the demo's 6")
    parser.add_argument("--scenes-seed", type=int, default=0, help="seed of the classes' textures and shapes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scenes = None
    if args.scenes is not None:
        from .synthetic_scenes import SceneGenerator

        scenes = SceneGenerator(*args.scenes, seed=args.scenes_seed)
    roots = write_synthetic_dataset(args.out, args.num_train, args.num_val, args.size, args.seed, args.layouts,
                                    scenes=scenes)
    for layout, root in roots.items():
        logger.info("%s layout: %s", layout, root)


if __name__ == "__main__":
    main()
