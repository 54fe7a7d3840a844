"""Pictures of segmentation results: pure functions from an image and a result to an RGB image.

Every picture of a prediction in this project comes from here: ``maskformer-hf segment``, the web
demo (``app.py``), ``scripts/demo_report.py`` and the docs.

* A class has one colour everywhere (:func:`class_colors` depends on the class id only, not on the
  number of classes or on what else is in the picture).
* Segments are tinted over the image (``alpha``) and outlined where one segment meets another,
  so touching instances of one class stay apart; instances of a class also get different shades.
* A legend below the picture names the classes it shows.

    from maskformer_hf import visualize
    picture = visualize.draw_panoptic(image, result["segmentation"], result["segments_info"], model.config.id2label)
    picture.save("overlay.png")

The results are those of the processor's ``post_process_*`` methods (tensors or arrays):
:func:`draw_semantic` takes a `(H, W)` class map, :func:`draw_panoptic` a segment map (0 = void) and
its ``segments_info``, :func:`draw_instance` an instance map (-1 = background) or a stack of binary
masks, and :func:`draw_segments` the list that ``pipeline("image-segmentation")`` returns.
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image_inputs import pil_to_rgb

OUTLINE = (255, 255, 255)
_GOLDEN = 0.6180339887498949
_SHADES = (0.0, -0.35, 0.4, -0.55, 0.6, -0.2, 0.25)  # instance k of a class: darker (< 0) or lighter (> 0)


# ---------------------------------------------------------------------------------------------
# Colours
# ---------------------------------------------------------------------------------------------
def class_colors(label_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """`(N, 3)` uint8: the colour of each class id. Hues step by the golden ratio (neighbouring ids
    differ strongly), saturation and brightness cycle; the colour of an id never depends on others."""
    ids = np.asarray(label_ids, dtype=np.int64).reshape(-1)
    colors = np.empty((len(ids), 3), dtype=np.uint8)
    for row, k in enumerate(ids.tolist()):
        hue = (0.07 + k * _GOLDEN) % 1.0
        saturation = (0.85, 0.6, 0.95, 0.7)[k % 4]
        value = (0.95, 0.8, 0.65)[(k // 4) % 3]
        colors[row] = np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255)
    return colors


def palette(num_labels: int) -> np.ndarray:
    """`(num_labels, 3)` uint8: :func:`class_colors` of ids ``0 .. num_labels - 1``."""
    return class_colors(range(num_labels))


def shade(color: Sequence[int] | np.ndarray, rank: int) -> np.ndarray:
    """The colour of instance `rank` (0, 1, ...) of a class: the class colour, then darker and
    lighter versions of it in turn."""
    color = np.asarray(color, dtype=np.float64)
    amount = _SHADES[rank % len(_SHADES)]
    mixed = color * (1 + amount) if amount < 0 else color + amount * (255 - color)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _label_color_id(label: str, label2id: Mapping[str, int] | None) -> int:
    if label2id is not None and label in label2id:
        return int(label2id[label])
    return 1_000_000 + zlib.crc32(label.encode())  # a stable id for a name we cannot look up


def label_name(label_id: int, id2label: Mapping[Any, str] | None) -> str:
    """The name of a class id in `id2label` (int or str keys, as configs hold them), else the id."""
    if id2label is None:
        return str(label_id)
    return str(id2label.get(label_id, id2label.get(str(label_id), label_id)))


def to_numpy(array: Any) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def to_rgb_array(image: Any) -> np.ndarray:
    """A PIL image, `(H, W[, C])` array or `(C, H, W)` tensor -> `(H, W, 3)` uint8 RGB (grey is
    replicated, alpha dropped; float images are taken as 0..1)."""
    if isinstance(image, Image.Image):
        return np.asarray(pil_to_rgb(image))
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image: expected (H, W), (H, W, 1|3|4) or (1|3|4, H, W), got shape {array.shape}")
    if array.dtype.kind == "f":
        array = np.clip(np.round(array * 255), 0, 255)
    elif array.dtype != np.uint8:
        raise TypeError(f"image: expected uint8 or float pixels, got {array.dtype}")
    return np.ascontiguousarray(np.broadcast_to(array[..., :3], (*array.shape[:2], 3)).astype(np.uint8))


def _as_map(segmentation: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    array = to_numpy(segmentation)
    if array.shape != shape:
        raise ValueError(f"{name}: expected a map of the image's size {shape}, got shape {array.shape}")
    if array.dtype.kind not in "iub":
        raise TypeError(f"{name}: expected integer ids, got {array.dtype}")
    return array.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def boundaries(segment_map: np.ndarray, width: int = 1) -> np.ndarray:
    """`(H, W)` bool: pixels whose right or lower neighbour lies in another segment, thickened to
    `width` pixels."""
    edge = np.zeros(segment_map.shape, dtype=bool)
    edge[:, :-1] |= segment_map[:, :-1] != segment_map[:, 1:]
    edge[:-1, :] |= segment_map[:-1, :] != segment_map[1:, :]
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:, 1:] |= edge[:, :-1]
        edge = grown
    return edge


def overlay(image: Any, segment_map: np.ndarray, colors: Mapping[int, Sequence[int]], alpha: float = 0.55,
            outline: Sequence[int] | None = OUTLINE) -> np.ndarray:
    """Tint each segment of `segment_map` `(H, W)` with ``colors[id]`` over `image`; ids without a
    colour (void, background) stay as they are. Outlines between segments unless `outline` is None.
    Returns `(H, W, 3)` uint8."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    picture = to_rgb_array(image)
    segment_map = _as_map(segment_map, picture.shape[:2], "segment_map")
    ids = np.array(sorted(colors), dtype=np.int64)
    if len(ids):
        table = np.array([colors[i] for i in ids.tolist()], dtype=np.float32)
        position = np.searchsorted(ids, segment_map).clip(max=len(ids) - 1)
        painted = ids[position] == segment_map
        blended = (1 - alpha) * picture.astype(np.float32) + alpha * table[position]
        picture = np.where(painted[..., None], np.round(blended), picture).astype(np.uint8)
    if outline is not None:
        width = max(1, round(min(segment_map.shape) / 320))
        picture[boundaries(segment_map, width)] = outline
    return picture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _font_size(width: int) -> int:
    return int(np.clip(width / 45, 11, 28))


def legend(entries: Sequence[tuple[str, Sequence[int]]], width: int) -> np.ndarray:
    """A strip `(h, width, 3)` uint8 of colour swatches and names, wrapped into as many rows as the
    width needs (an empty list gives a zero-height strip)."""
    if not entries:
        return np.zeros((0, width, 3), dtype=np.uint8)
    size = _font_size(width)
    font = _font(size)
    pad, swatch = max(4, size // 3), size
    rows: list[list[tuple[str, Sequence[int], int]]] = [[]]
    x = pad
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for name, color in entries:
        text_width = int(scratch.textlength(name, font=font))
        item = swatch + pad // 2 + text_width + 2 * pad
        if rows[-1] and x + item > width:
            rows.append([])
            x = pad
        rows[-1].append((name, color, x))
        x += item
    line = size + 2 * pad
    strip = Image.new("RGB", (width, line * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        top = r * line + pad
        for name, color, left in row:
            draw.rectangle((left, top, left + swatch - 1, top + swatch - 1), fill=tuple(int(c) for c in color),
                           outline=(60, 60, 60))
            draw.text((left + swatch + pad // 2, top + swatch / 2), name, fill=(20, 20, 20), font=font, anchor="lm")
    return np.asarray(strip)


def _with_legend(picture: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]], show: bool) -> Image.Image:
    if show and entries:
        picture = np.concatenate([picture, legend(entries, picture.shape[1])], axis=0)
    return Image.fromarray(picture)


def _class_entries(label_ids: Sequence[int], id2label: Mapping[int, str] | None,
                   counts: Mapping[int, int] | None = None) -> list[tuple[str, np.ndarray]]:
    labels = sorted(set(int(i) for i in label_ids))
    colors = class_colors(labels)
    entries = []
    for label, color in zip(labels, colors):
        name = label_name(label, id2label)
        if counts is not None and counts.get(label, 1) > 1:
            name = f"{name} ({counts[label]})"
        entries.append((name, color))
    return entries


def draw_semantic(image: Any, segmentation: Any, id2label: Mapping[int, str] | None = None, alpha: float = 0.55,
                  show_legend: bool = True, ignore_index: int | None = None) -> Image.Image:
    """A class map `(H, W)` (``post_process_semantic_segmentation``) over `image`: one colour per
    class, outlines between regions, a legend of the classes present. Pixels equal to
    `ignore_index` (e.g. a ground truth's 255) stay untinted."""
    picture = to_rgb_array(image)
    classes = _as_map(segmentation, picture.shape[:2], "segmentation")
    present = [int(c) for c in np.unique(classes) if c != ignore_index and c >= 0]
    colors = dict(zip(present, class_colors(present)))
    return _with_legend(overlay(picture, classes, colors, alpha), _class_entries(present, id2label), show_legend)


def _checked(segments_info: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    segments = list(segments_info)
    for k, segment in enumerate(segments):
        if not isinstance(segment, Mapping) or "id" not in segment or "label_id" not in segment:
            raise ValueError(f"segments_info[{k}]: expected a dict with 'id' and 'label_id' (the processor's "
                             f"post-processing output), got {segment!r}")
    return segments


def _segment_colors(segments_info: Sequence[Mapping[str, Any]]) -> dict[int, np.ndarray]:
    """Segment id -> colour: its class colour, shaded by its rank among the class's segments."""
    colors, seen = {}, {}
    for segment in segments_info:
        label = int(segment["label_id"])
        rank = seen.get(label, 0)
        seen[label] = rank + 1
        colors[int(segment["id"])] = shade(class_colors([label])[0], rank)
    return colors


def _counts(segments_info: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for segment in segments_info:
        counts[int(segment["label_id"])] = counts.get(int(segment["label_id"]), 0) + 1
    return counts


def _shown(segments_info: Sequence[Mapping[str, Any]], segment_map: np.ndarray) -> list[Mapping[str, Any]]:
    """The segments that own at least one pixel (the legend names what the picture shows)."""
    present = set(np.unique(segment_map).tolist())
    return [s for s in segments_info if int(s["id"]) in present]


def draw_panoptic(image: Any, segmentation: Any, segments_info: Sequence[Mapping[str, Any]],
                  id2label: Mapping[int, str] | None = None, alpha: float = 0.55,
                  show_legend: bool = True) -> Image.Image:
    """A panoptic result over `image`: `segmentation` `(H, W)` segment ids (0 or any id not in
    `segments_info` = void, untinted) and `segments_info` ``[{"id", "label_id", ...}]`` (the
    processor's output, or a data set's ground truth). Instances of a class get shades of its colour."""
    picture = to_rgb_array(image)
    segment_map = _as_map(segmentation, picture.shape[:2], "segmentation")
    segments_info = _checked(segments_info)
    shown = _shown(segments_info, segment_map)
    entries = _class_entries([s["label_id"] for s in shown], id2label, _counts(shown))
    return _with_legend(overlay(picture, segment_map, _segment_colors(segments_info), alpha), entries, show_legend)


def _label_boxes(picture: np.ndarray, segment_map: np.ndarray, labels: Mapping[int, str]) -> np.ndarray:
    """Write each segment's text at the top-left corner of its bounding box, on a dark box."""
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, _font_size(picture.shape[1]) - 2))
    for segment_id, text in labels.items():
        rows, cols = np.nonzero(segment_map == segment_id)
        if not len(rows):
            continue
        box = draw.textbbox((int(cols.min()) + 1, int(rows.min()) + 1), text, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((box[0], box[1]), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def draw_instance(image: Any, segmentation: Any, segments_info: Sequence[Mapping[str, Any]],
                  id2label: Mapping[int, str] | None = None, alpha: float = 0.55, show_legend: bool = True,
                  show_scores: bool = True) -> Image.Image:
    """An instance result over `image`: `segmentation` is the `(H, W)` instance map
    (``post_process_instance_segmentation``: -1 = background, ids from 0) or, with
    ``return_binary_maps=True``, the `(N, H, W)` stack of each instance's mask (painted worst score
    first, so the best lies on top). Each instance is labelled "class score"."""
    picture = to_rgb_array(image)
    segments_info = _checked(segments_info)
    array = to_numpy(segmentation)
    if array.ndim == 3:  # binary maps, one per segments_info entry
        if len(array) != len(segments_info):
            raise ValueError(f"segmentation: {len(array)} binary maps for {len(segments_info)} segments_info entries")
        segment_map = np.full(picture.shape[:2], -1, dtype=np.int64)
        order = sorted(range(len(segments_info)), key=lambda k: segments_info[k].get("score", 0.0))
        for k in order:
            mask = _as_map(array[k] > 0.5, picture.shape[:2], f"segmentation[{k}]").astype(bool)
            segment_map[mask] = int(segments_info[k]["id"])
    else:
        segment_map = _as_map(array, picture.shape[:2], "segmentation")
    picture = overlay(picture, segment_map, _segment_colors(segments_info), alpha)
    if show_scores:
        texts = {int(s["id"]): f"{label_name(int(s['label_id']), id2label)} {s['score']:.2f}" if "score" in s
                 else label_name(int(s["label_id"]), id2label) for s in segments_info}
        picture = _label_boxes(picture, segment_map, texts)
    shown = _shown(segments_info, segment_map)
    entries = _class_entries([s["label_id"] for s in shown], id2label, _counts(shown))
    return _with_legend(picture, entries, show_legend)


def draw_segments(image: Any, segments: Sequence[Mapping[str, Any]], label2id: Mapping[str, int] | None = None,
                  alpha: float = 0.55, show_legend: bool = True) -> Image.Image:
    """What ``pipeline("image-segmentation")`` returns (``[{"label", "score", "mask"}]``, masks as
    PIL images) over `image`. Colours are keyed by class id through `label2id` (e.g.
    ``model.config.label2id``; a name it does not know gets a colour derived from the name)."""
    picture = to_rgb_array(image)
    segment_map = np.zeros(picture.shape[:2], dtype=np.int64)
    info = []
    for index, segment in enumerate(segments, start=1):
        mask = np.asarray(segment["mask"])
        if mask.shape != picture.shape[:2]:
            raise ValueError(f"segments[{index - 1}]['mask']: expected the image's size {picture.shape[:2]}, "
                             f"got {mask.shape}")
        segment_map[mask > 0] = index
        info.append({"id": index, "label_id": _label_color_id(segment["label"], label2id)})
    names = {entry["label_id"]: segment["label"] for entry, segment in zip(info, segments)}
    shown = _shown(info, segment_map)
    entries = _class_entries([s["label_id"] for s in shown], names, _counts(shown))
    return _with_legend(overlay(picture, segment_map, _segment_colors(info), alpha), entries, show_legend)


def side_by_side(panels: Sequence[Any], titles: Sequence[str] | None = None, gap: int = 8) -> Image.Image:
    """Pictures next to each other on white, top-aligned, each under its title (e.g. image |
    ground truth | prediction)."""
    if not panels:
        raise ValueError("panels: expected at least one picture")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"titles: expected one per panel ({len(panels)}), got {len(titles)}")
    arrays = [to_rgb_array(p) for p in panels]
    size = _font_size(max(a.shape[1] for a in arrays))
    title_height = size + 8 if titles else 0
    width = sum(a.shape[1] for a in arrays) + gap * (len(arrays) - 1)
    height = title_height + max(a.shape[0] for a in arrays)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    x = 0
    for k, array in enumerate(arrays):
        canvas.paste(Image.fromarray(array), (x, title_height))
        if titles:
            draw.text((x + array.shape[1] / 2, title_height / 2), titles[k], fill=(20, 20, 20), font=font, anchor="mm")
        x += array.shape[1] + gap
    return canvas


def draw_result(image: Any, result: Any, task: str, id2label: Mapping[int, str] | None = None,
                **kwargs: Any) -> Image.Image:
    """The picture of one post-processed result of `task` (``semantic``: the class map;
    ``panoptic`` / ``instance``: the ``{"segmentation", "segments_info"}`` dict)."""
    if task not in ("semantic", "instance", "panoptic"):
        raise ValueError(f"task: expected semantic, instance or panoptic, got {task!r}")
    if task == "semantic":
        if isinstance(result, Mapping):
            raise TypeError("result: a semantic result is a (H, W) class map, got a dict (a panoptic or instance "
                            "result?)")
        return draw_semantic(image, result, id2label, **kwargs)
    if not isinstance(result, Mapping) or not {"segmentation", "segments_info"} <= set(result):
        raise TypeError(f"result: a {task} result is a dict with 'segmentation' and 'segments_info', "
                        f"got {type(result).__name__}")
    draw = draw_panoptic if task == "panoptic" else draw_instance
    return draw(image, result["segmentation"], result["segments_info"], id2label, **kwargs)


__all__ = [
    "boundaries",
    "class_colors",
    "draw_instance",
    "draw_panoptic",
    "draw_result",
    "draw_segments",
    "draw_semantic",
    "label_name",
    "legend",
    "overlay",
    "palette",
    "shade",
    "side_by_side",
    "to_numpy",
    "to_rgb_array",
]
