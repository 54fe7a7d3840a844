"""Synthetic panoptic sets of any size of label space, for testing learning on data nobody tuned for.

:mod:`maskformer_hf.data.synthetic` is the demo's one fixed set (6 classes). This module makes
*families* of sets: a :class:`SceneGenerator` is drawn from a seed and a class count, and every
choice that defines the classes (which texture and shape each class has) comes from that seed, so
two seeds give two different sets of similar difficulty.

- **Stuff classes** fill a Voronoi partition of the image (2-4 regions, or 3-6 when there are no
  things), each region with its class's texture.
- **Thing classes** are shapes (disc, square, triangle, diamond, cross, ring, ellipse, hexagon),
  2-4 non-overlapping per image, each with its class's texture.
- A **texture** is a binary pattern (stripes, checkerboard, dots, zig-zag waves or grid) with an
  orientation (0, 45, 90, 135 degrees) and a period (5-16 px); each class has its own. The two
  colours of every region and shape are drawn afresh (clearly different brightness), so a class is
  told by its texture and shape, never by its colour.

Images are written by :func:`maskformer_hf.data.synthetic.write_synthetic_dataset` (``scenes=``)
in the ADE20K and COCO-panoptic layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .synthetic import free_spot, segments_of

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "diamond", "cross", "ring", "ellipse", "hexagon")
PATTERNS: tuple[str, ...] = ("stripes", "checker", "dots", "waves", "grid")
ANGLES: tuple[int, ...] = (0, 45, 90, 135)
PERIODS: tuple[int, ...] = (5, 7, 9, 12, 16)
MAX_CLASSES = len(PATTERNS) * len(ANGLES) * len(PERIODS)  # every class has its own texture


@dataclass(frozen=True)
class Texture:
    pattern: str
    angle: int  # degrees
    period: int  # pixels

    @property
    def name(self) -> str:
        return f"{self.pattern}-{self.angle}-{self.period}"

    def render(self, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """`(H, W)` bool pattern at a random phase."""
        theta = math.radians(self.angle)
        u = math.cos(theta) * xx + math.sin(theta) * yy + rng.uniform(0, self.period)
        v = -math.sin(theta) * xx + math.cos(theta) * yy + rng.uniform(0, self.period)
        p = self.period
        if self.pattern == "stripes":
            return (u % p) < p / 2
        if self.pattern == "checker":
            return ((u // p) + (v // p)) % 2 == 0
        if self.pattern == "dots":
            return ((u % p) - p / 2) ** 2 + ((v % p) - p / 2) ** 2 < (0.3 * p) ** 2
        if self.pattern == "waves":
            return ((u + 0.25 * p * np.sin(2 * np.pi * v / (2 * p))) % p) < p / 2
        return ((u % p) < p / 4) | ((v % p) < p / 4)  # grid


def _shape_mask(shape: str, cy: float, cx: float, r: float, angle: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """`(H, W)` bool mask of a shape of radius about ``r`` centred at ``(cy, cx)``, rotated by ``angle``."""
    dy, dx = yy - cy, xx - cx
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if shape == "disc":
        return u**2 + v**2 <= r**2
    if shape == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if shape == "cross":
        return ((np.abs(u) <= r) & (np.abs(v) <= 0.35 * r)) | ((np.abs(v) <= r) & (np.abs(u) <= 0.35 * r))
    if shape == "ring":
        d2 = u**2 + v**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "ellipse":
        return (u / r) ** 2 + (v / (0.55 * r)) ** 2 <= 1
    sides = 3 if shape == "triangle" else 6
    inside = np.ones_like(u, dtype=bool)
    for k in range(sides):  # a regular polygon: half-planes at the apothem
        theta = 2 * math.pi * k / sides - math.pi / 2
        inside &= u * math.cos(theta) + v * math.sin(theta) <= (0.6 if sides == 3 else 0.87) * r
    return inside


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours in [0, 1] whose brightness differs by at least 0.3."""
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    first = rng.random(3).astype(np.float32)
    while True:
        second = rng.random(3).astype(np.float32)
        if abs(float((first - second) @ luma)) >= 0.3:
            return first, second


class SceneGenerator:
    """A family of synthetic panoptic images with ``num_stuff`` stuff and ``num_things`` thing classes.

    Args:
        num_stuff: stuff classes (label ids ``0 .. num_stuff - 1``).
        num_things: thing classes (label ids after the stuff ones); shapes repeat (with other
            textures) beyond the 8 shape families.
        seed: decides each class's texture and shape; images get their own generators.

    Call it with a ``numpy`` generator and an image side: ``(image (H, W, 3) uint8, segment ids
    (H, W) int64, segments)``, as :func:`maskformer_hf.data.synthetic.generate_example` returns.
    """

    def __init__(self, num_stuff: int, num_things: int = 0, seed: int = 0) -> None:
        if num_stuff < 1 or num_things < 0:
            raise ValueError(f"SceneGenerator: need num_stuff >= 1 and num_things >= 0, got {num_stuff}, {num_things}")
        if num_stuff + num_things > MAX_CLASSES:
            raise ValueError(f"SceneGenerator: at most {MAX_CLASSES} classes (one texture each), "
                             f"got {num_stuff + num_things}")
        rng = np.random.default_rng([seed, 7919])
        grid = [Texture(p, a, q) for p in PATTERNS for a in ANGLES for q in PERIODS]
        chosen = rng.permutation(len(grid))[: num_stuff + num_things]
        self.textures = [grid[int(i)] for i in chosen]
        shape_order = [SHAPES[int(i)] for i in rng.permutation(len(SHAPES))]
        self.shapes = [shape_order[k % len(SHAPES)] for k in range(num_things)]
        self.num_stuff, self.num_things, self.seed = num_stuff, num_things, seed

    @property
    def classes(self) -> list[dict[str, Any]]:
        """``[{"name", "isthing"}]`` in label-id order."""
        stuff = [{"name": f"stuff-{t.name}", "isthing": False} for t in self.textures[: self.num_stuff]]
        things = [{"name": f"{s}-{t.name}", "isthing": True}
                  for s, t in zip(self.shapes, self.textures[self.num_stuff:])]
        return stuff + things

    def __call__(self, rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        if size < 32:
            raise ValueError(f"size must be >= 32, got {size}")
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        low, high = (2, 4) if self.num_things else (3, 6)
        num_regions = int(rng.integers(low, high + 1))
        labels = rng.choice(self.num_stuff, size=num_regions, replace=num_regions > self.num_stuff)
        centres = rng.uniform(0, size, size=(num_regions, 2))
        distance = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
        region = distance.argmin(0)
        image = np.zeros((size, size, 3), dtype=np.float32)
        ids = np.zeros((size, size), dtype=np.int64)
        for index, label in enumerate(labels):
            inside = region == index
            if not inside.any():
                continue
            self._paint(image, inside, self.textures[int(label)], rng, yy, xx)
            ids[inside] = 1000 * (int(label) + 1)  # regions of one class merge into one stuff segment
        placed: list[tuple[float, float, float]] = []
        counts: dict[int, int] = {}
        for _ in range(int(rng.integers(2, 5)) if self.num_things else 0):
            thing = int(rng.integers(self.num_things))
            label = self.num_stuff + thing
            r = rng.uniform(0.13, 0.22) * size
            spot = free_spot(rng, size, r, placed)
            if spot is None:
                continue
            cy, cx = spot
            mask = _shape_mask(self.shapes[thing], cy, cx, r, rng.uniform(0, 2 * math.pi), yy, xx)
            if mask.sum() < 16:
                continue
            placed.append((cy, cx, r))
            self._paint(image, mask, self.textures[label], rng, yy, xx)
            counts[label] = counts.get(label, 0) + 1
            ids[mask] = 1000 * (label + 1) + counts[label]
        image = np.clip(image + rng.normal(0.0, 0.03, image.shape), 0.0, 1.0)
        return (image * 255 + 0.5).astype(np.uint8), ids, segments_of(ids)

    @staticmethod
    def _paint(image: np.ndarray, where: np.ndarray, texture: Texture, rng: np.random.Generator,
               yy: np.ndarray, xx: np.ndarray) -> None:
        first, second = _colour_pair(rng)
        pattern = texture.render(rng, yy, xx)
        image[where] = np.where(pattern[where][:, None], first, second)


__all__ = ["MAX_CLASSES", "SceneGenerator", "Texture"]
