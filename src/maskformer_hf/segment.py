"""Segment image files: what ``maskformer-hf segment`` does, as functions.

    maskformer-hf segment photos/ "more/*.jpg" --model demo_output/model --task panoptic --out segmented

Images are found (:func:`find_images`), decoded (:func:`load_image`; unreadable files are reported
and skipped), run through the model in padded batches (:func:`predict`; the model honours the
padding mask, so batching does not change a result) and written (:func:`write_prediction`):

========  ==============================================================================
task      files per image (``STEM`` = the image's file name without its suffix)
========  ==============================================================================
all       ``STEM_overlay.png``: the result drawn over the image (:mod:`maskformer_hf.visualize`)
semantic  ``STEM_semantic.png``: class index per pixel (8-bit, 16-bit above 256 classes)
panoptic  ``STEM_panoptic.png``: COCO panoptic RGB ids (``id = R + 256 G + 256² B``, 0 = void)
          and ``STEM_panoptic.json``: its ``segments_info`` in COCO's format, with names
instance  ``STEM_instances.json``: one COCO RLE mask, box, class and score per instance
========  ==============================================================================

and per run ``predictions_panoptic.json`` (COCO panoptic: ``images``, ``annotations``,
``categories``) or ``predictions_instances.json`` (COCO results: a list of
``{image_id, category_id, segmentation, score, bbox}``). Category ids are the model's label ids;
image ids number the run's images from 0 in order, and each image's ``file_name`` (the input's
name) maps them to a ground truth's ids. Boxes are COCO's ``[x, y, width, height]``.
"""

from __future__ import annotations

import ctypes
import glob
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from . import visualize
from .data.schema import id_to_rgb
from .image_inputs import pil_to_rgb, shortest_edge_size
from .visualize import label_name, to_numpy

logger = logging.getLogger(__name__)

TASKS = ("semantic", "instance", "panoptic")
RUN_FILE_STEM = "predictions"  # predictions_panoptic.json / predictions_instances.json: no image may take it
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


try:  # glibc's malloc_trim(pad): returns the heap's free pages to the system; absent elsewhere
    _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
    _MALLOC_TRIM.argtypes, _MALLOC_TRIM.restype = [ctypes.c_size_t], ctypes.c_int
except (OSError, AttributeError):
    _MALLOC_TRIM = None


def release_freed_memory() -> bool:
    """Give the memory freed so far back to the system, where the C library can (glibc: ``malloc_trim``).

    Images of different sizes free tensors of ever-changing sizes; glibc keeps the freed pages in
    its heap, so a long run's resident memory creeps up although nothing leaks (+52 % over 300
    images of 256-640 px in batches of 4, ``benchmarks/bench_reliability.py``). Trimming after each
    batch, with batches of one image, keeps it flat (docs/reliability.md). True if memory was
    returned; False where nothing was, or elsewhere than glibc."""
    return bool(_MALLOC_TRIM(0)) if _MALLOC_TRIM is not None else False


# ---------------------------------------------------------------------------------------------
# Finding and reading images
# ---------------------------------------------------------------------------------------------
def find_images(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Files as given (any suffix: reading decides), folders searched recursively for image
    suffixes, and glob patterns, in the order given (folders and globs sorted), each file once;
    files under `exclude` (e.g. the output folder) are left out. Returns ``(paths, problems)``:
    ``problems`` names the inputs that matched nothing."""
    paths: list[Path] = []
    problems: list[str] = []
    seen: set[Path] = set()
    skip = Path(exclude).resolve() if exclude is not None else None
    for entry in inputs:
        entry_path = Path(entry)
        if entry_path.is_dir():
            found = sorted(p for p in entry_path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif entry_path.is_file():
            found = [entry_path]
        else:
            found = sorted(Path(p) for p in glob.glob(str(entry), recursive=True) if Path(p).is_file())
        found = [p for p in found if skip is None or not p.resolve().is_relative_to(skip)]
        if not found:
            problems.append(f"{entry}: no such file, or no images in it")
        for path in found:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    return paths, problems


def load_image(path: str | Path) -> Image.Image:
    """Decode a whole image file into RGB, upright (EXIF orientation applied). Grey, palette, RGBA
    and 16-bit images are converted (:func:`~maskformer_hf.image_processing_maskformer.pil_to_rgb`).
    Raises ``ValueError`` naming the file when it is not a readable image."""
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.width < 1 or image.height < 1:
                raise ValueError(f"the image is empty ({image.width}x{image.height})")
            return pil_to_rgb(image)
    except Exception as error:  # PIL raises OSError, SyntaxError, struct.error ... on broken files
        raise ValueError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def resolve_device(device: str | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else the CPU; anything else as torch reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device: expected auto, cpu, cuda, cuda:N ..., got {device!r}") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available here (use cpu or auto)")
    return resolved


def load_segmenter(model_name_or_path: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """``(model, processor)`` of a checkpoint (a local folder or a Hub id; transformers' MaskFormer
    checkpoints are converted on load), the model in eval mode on `device`."""
    from . import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor

    model = MaskFormerForUniversalSegmentation.from_pretrained(str(model_name_or_path))
    try:
        processor = MaskFormerImageProcessor.from_pretrained(str(model_name_or_path))
    except OSError:
        logger.warning("%s has no preprocessor_config.json: using MaskFormerImageProcessor's defaults "
                       "(shortest edge 800, ImageNet mean and std)", model_name_or_path)
        processor = MaskFormerImageProcessor(label_ids_to_fuse=model.config.stuff_label_ids)
    return model.to(resolve_device(device)).eval(), processor


@torch.inference_mode()
def predict(model: Any, processor: Any, images: Sequence[Image.Image], task: str = "panoptic",
            threshold: float = 0.5, mask_threshold: float = 0.5, overlap_mask_area_threshold: float = 0.8,
            size: int | None = None, slide: tuple[int, int] | None = None) -> list[Any]:
    """One padded batch through processor, model and post-processing, each result at its image's
    size: semantic `(H, W)` int64 class maps; panoptic / instance ``{"segmentation",
    "segments_info"}`` dicts (see the processor's ``post_process_*``). `size`: the model sees each
    image with this shortest edge (longest at most 4x), instead of the processor's own setting.
    `slide`: `(crop, stride)` windows over each resized image, blended (:mod:`maskformer_hf.sliding_window`)."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    device = next(model.parameters()).device
    resize = {} if size is None else {"do_resize": True, "size": shortest_edge_size(size)}
    sizes = [(image.height, image.width) for image in images]
    if slide is not None:
        return processor.segment_sliding_window(
            model, list(images), crop=slide[0], stride=slide[1], task=task, threshold=threshold,
            mask_threshold=mask_threshold, overlap_mask_area_threshold=overlap_mask_area_threshold,
            target_sizes=sizes, batch_size=1 if device.type == "cpu" else 4, **resize)
    inputs = processor(images=list(images), return_tensors="pt", **resize)
    outputs = model(pixel_values=inputs["pixel_values"].to(device), pixel_mask=inputs["pixel_mask"].to(device))
    if task == "semantic":
        return processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    thresholds = dict(threshold=threshold, mask_threshold=mask_threshold,
                      overlap_mask_area_threshold=overlap_mask_area_threshold, target_sizes=sizes)
    if task == "panoptic":
        return processor.post_process_panoptic_segmentation(outputs, **thresholds)
    return processor.post_process_instance_segmentation(outputs, **thresholds)


# ---------------------------------------------------------------------------------------------
# Results as tables and COCO records
# ---------------------------------------------------------------------------------------------
def segments_table(result: Any, task: str, id2label: Mapping[int, str]) -> list[dict[str, Any]]:
    """One row per segment, largest first: ``id``, ``label_id``, ``label``, ``score`` (None for
    semantic results, whose rows are the classes present) and ``area`` in pixels."""
    if task == "semantic":
        classes, areas = np.unique(to_numpy(result), return_counts=True)
        rows = [{"id": int(c), "label_id": int(c), "label": label_name(int(c), id2label), "score": None, "area": int(a)}
                for c, a in zip(classes, areas)]
    else:
        segmentation = to_numpy(result["segmentation"])
        info = result["segments_info"]
        if segmentation.ndim == 3:  # instance binary maps
            areas = {s["id"]: int((m > 0.5).sum()) for s, m in zip(info, segmentation)}
        else:
            ids, counts = np.unique(segmentation, return_counts=True)
            areas = dict(zip(ids.tolist(), counts.tolist()))
        rows = [{"id": int(s["id"]), "label_id": int(s["label_id"]), "label": label_name(int(s["label_id"]), id2label),
                 "score": float(s["score"]), "area": int(areas.get(s["id"], 0))} for s in info]
    return sorted(rows, key=lambda r: -r["area"])


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO box ``[x, y, width, height]`` of a boolean mask (zeros when it is empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's compressed RLE of a boolean `(H, W)` mask: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """The boolean `(H, W)` mask of a compressed RLE written by :func:`encode_rle`."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}).astype(bool)


def panoptic_to_coco(result: Mapping[str, Any], id2label: Mapping[int, str],
                     stuff_label_ids: Sequence[int] = ()) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A panoptic result -> its COCO PNG pixels `(H, W, 3)` uint8 (``id = R + 256 G + 256² B``,
    0 = void) and COCO ``segments_info`` (``id``, ``category_id`` = label id, ``iscrowd``,
    ``area``, ``bbox``, plus ``label``, ``isthing``, ``score``, ``was_fused``)."""
    segmentation = to_numpy(result["segmentation"]).astype(np.int64)
    stuff = set(int(i) for i in stuff_label_ids)
    segments = []
    for s in result["segments_info"]:
        mask = segmentation == s["id"]
        segments.append({"id": int(s["id"]), "category_id": int(s["label_id"]),
                         "label": label_name(int(s["label_id"]), id2label), "iscrowd": 0,
                         "isthing": int(int(s["label_id"]) not in stuff), "area": int(mask.sum()), "bbox": _bbox(mask),
                         "score": float(s["score"]), "was_fused": bool(s.get("was_fused", False))})
    return id_to_rgb(segmentation), segments


def instances_to_coco(result: Mapping[str, Any], id2label: Mapping[int, str]) -> list[dict[str, Any]]:
    """An instance result (map or binary maps) -> one record per instance: ``id``, ``category_id``
    (= label id), ``label``, ``score``, ``area``, ``bbox`` and ``segmentation`` (COCO RLE)."""
    segmentation = to_numpy(result["segmentation"])
    records = []
    for k, s in enumerate(result["segments_info"]):
        mask = segmentation[k] > 0.5 if segmentation.ndim == 3 else segmentation == s["id"]
        records.append({"id": int(s["id"]), "category_id": int(s["label_id"]),
                        "label": label_name(int(s["label_id"]), id2label), "score": float(s["score"]),
                        "area": int(mask.sum()), "bbox": _bbox(mask), "segmentation": encode_rle(mask)})
    return records


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def write_prediction(out_dir: str | Path, stem: str, image: Image.Image, result: Any, task: str,
                     id2label: Mapping[int, str], stuff_label_ids: Sequence[int] = (), image_id: int = 0,
                     file_name: str | None = None) -> dict[str, Any]:
    """Write one image's files (see the module docstring) into `out_dir`; returns ``{"files": [...],
    "segments": segments_table(...), "coco": ...}`` (``coco``: the panoptic or instance record,
    with `image_id` and the input's `file_name`)."""
    out_dir = Path(out_dir)
    files = [out_dir / f"{stem}_overlay.png"]
    visualize.draw_result(image, result, task, id2label).save(files[0])
    about = {"image_id": image_id, "image_file": file_name or stem, "height": image.height, "width": image.width}
    coco: Any = None
    if task == "semantic":
        classes = to_numpy(result)
        path = out_dir / f"{stem}_semantic.png"
        if len(id2label) <= 256:
            Image.fromarray(classes.astype(np.uint8), mode="L").save(path)
        else:
            Image.fromarray(classes.astype(np.uint16)).save(path)  # a 16-bit grey PNG
        files.append(path)
    elif task == "panoptic":
        pixels, segments = panoptic_to_coco(result, id2label, stuff_label_ids)
        png, info = out_dir / f"{stem}_panoptic.png", out_dir / f"{stem}_panoptic.json"
        Image.fromarray(pixels).save(png)
        coco = {**about, "file_name": png.name, "segments_info": segments}
        info.write_text(json.dumps(coco, indent=1))
        files += [png, info]
    else:
        path = out_dir / f"{stem}_instances.json"
        coco = {**about, "instances": instances_to_coco(result, id2label)}
        path.write_text(json.dumps(coco, indent=1))
        files.append(path)
    return {"files": files, "segments": segments_table(result, task, id2label), "coco": coco}


def _count(number: int, noun: str) -> str:
    return f"{number} {noun if number == 1 else noun + ('es' if noun.endswith('s') else 's')}"


def summary_line(name: str, image: Image.Image, segments: Sequence[Mapping[str, Any]], task: str, top: int = 5) -> str:
    """``name: WxH, N segments: sky 41%, car (3) 12%, ...`` (the largest classes by area)."""
    area = image.width * image.height
    by_class: dict[str, list[int]] = {}
    for row in segments:
        by_class.setdefault(row["label"], []).append(row["area"])
    ranked = sorted(by_class.items(), key=lambda item: -sum(item[1]))
    parts = [f"{label}{f' ({len(a)})' if len(a) > 1 else ''} {100 * sum(a) / area:.0f}%" for label, a in ranked[:top]]
    more = f", +{len(ranked) - top} more classes" if len(ranked) > top else ""
    counted = _count(len(segments), "class" if task == "semantic" else "segment")
    return f"{name}: {image.width}x{image.height}, {counted}" + (f": {', '.join(parts)}{more}" if parts else "")


@dataclass
class SegmentRun:
    """What :func:`segment_files` did: per image its summary or its error, and the files written."""

    segmented: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def _unique_stem(path: Path, used: set[str]) -> str:
    """The image's file stem, or ``stem-2``, ``stem-3`` ... when taken (compared case-blind: ``A.png`` and
    ``a.png`` are one file on macOS and Windows); ``used`` starts with the run file's stem."""
    stem, k = path.stem, 1
    while stem.casefold() in used:
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem.casefold())
    return stem


def _batches(paths: Sequence[Path], batch_size: int) -> Iterator[tuple[list[tuple[Path, Image.Image]], list[tuple[Path, str]]]]:
    """Decoded images in batches of up to `batch_size` readable ones, with the failures met on the way."""
    batch, failures = [], []
    for path in paths:
        try:
            batch.append((path, load_image(path)))
        except ValueError as error:
            failures.append((path, str(error)))
        if len(batch) == batch_size:
            yield batch, failures
            batch, failures = [], []
    if batch or failures:
        yield batch, failures


def _predict_or_split(batch: list[tuple[Path, Image.Image]], run: Any) -> Iterator[tuple[Path, Image.Image, Any]]:
    """``run(images)`` on the whole batch; if it fails (e.g. out of memory on a large image), image by
    image, so that one image's failure costs only that image. Yields ``(path, image, result or the
    exception)``."""
    try:
        results = run([image for _, image in batch])
    except (RuntimeError, ValueError, MemoryError) as error:
        if len(batch) == 1:
            yield batch[0][0], batch[0][1], error
            return
        for item in batch:
            yield from _predict_or_split([item], run)
        return
    for (path, image), result in zip(batch, results):
        yield path, image, result


def segment_files(paths: Sequence[Path], model: Any, processor: Any, out_dir: str | Path, task: str = "panoptic",
                  batch_size: int | None = None, threshold: float = 0.5, mask_threshold: float = 0.5,
                  overlap_mask_area_threshold: float = 0.8, size: int | None = None, progress: bool = True,
                  report: Callable[[str, bool], None] | None = None,
                  slide: tuple[int, int] | None = None) -> SegmentRun:
    """Segment `paths` in batches and write every image's files into `out_dir` (created), then the
    run's COCO file. ``report(line, skipped)`` receives one line per image: its summary, or why it
    was skipped (unreadable, or inference failed on it). `size`, `slide`: see :func:`predict`. `batch_size`:
    images per forward pass; None: 1 on the CPU (padded batches of mixed sizes are slower there and
    take more memory), 4 elsewhere."""
    from tqdm.auto import tqdm

    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if batch_size is None:
        batch_size = 1 if next(model.parameters()).device.type == "cpu" else 4
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if slide is not None:
        from .sliding_window import check_slide

        check_slide(*slide)  # here: a bad setting is the caller's error, not one image's failure
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    stuff = model.config.stuff_label_ids or ()
    run, used, coco_records = SegmentRun(), {RUN_FILE_STEM}, []
    say = report or (lambda line, skipped: None)

    def infer(images: list[Image.Image]) -> list[Any]:
        return predict(model, processor, images, task, threshold, mask_threshold, overlap_mask_area_threshold, size,
                       slide)

    bar = tqdm(total=len(paths), desc=f"segmenting ({task})", unit="image", disable=not progress)
    for batch, failures in _batches(paths, batch_size):
        read = len(batch) + len(failures)
        for path, image, result in _predict_or_split(batch, infer) if batch else ():
            if isinstance(result, Exception):
                failures.append((path, f"{path}: inference failed ({type(result).__name__}: {result})"))
                continue
            written = write_prediction(out_dir, _unique_stem(path, used), image, result, task, id2label, stuff,
                                       image_id=len(run.segmented), file_name=str(path))
            line = summary_line(str(path), image, written["segments"], task)
            run.segmented.append((path, line))
            run.files += written["files"]
            if written["coco"] is not None:
                coco_records.append(written["coco"])
            say(line, False)
        for path, reason in failures:
            run.skipped.append((path, reason))
            say(f"skipped {reason}", True)
        bar.update(read)
        release_freed_memory()  # the batch's activations are freed: give their pages back
    bar.close()
    if task != "semantic" and run.segmented:
        run.files.append(_write_run_file(out_dir, task, coco_records, id2label, stuff))
    return run


def _write_run_file(out_dir: Path, task: str, records: list[dict[str, Any]], id2label: Mapping[int, str],
                    stuff: Sequence[int]) -> Path:
    """The run's predictions in one COCO file (panoptic annotations, or instance results)."""
    if task == "panoptic":
        categories = [{"id": k, "name": id2label[k], "isthing": int(k not in set(stuff))} for k in sorted(id2label)]
        content: Any = {
            "images": [{"id": r["image_id"], "file_name": Path(r["image_file"]).name, "height": r["height"],
                        "width": r["width"]} for r in records],
            "annotations": [{"image_id": r["image_id"], "file_name": r["file_name"], "segments_info": [
                {k: s[k] for k in ("id", "category_id", "iscrowd", "area", "bbox")} for s in r["segments_info"]]}
                for r in records],
            "categories": categories,
        }
    else:
        content = [{"image_id": r["image_id"], "category_id": i["category_id"], "segmentation": i["segmentation"],
                    "score": i["score"], "bbox": i["bbox"]} for r in records for i in r["instances"]]
    path = out_dir / f"{RUN_FILE_STEM}_{'panoptic' if task == 'panoptic' else 'instances'}.json"
    path.write_text(json.dumps(content))
    return path


__all__ = [
    "IMAGE_SUFFIXES",
    "TASKS",
    "SegmentRun",
    "decode_rle",
    "encode_rle",
    "find_images",
    "instances_to_coco",
    "load_image",
    "load_segmenter",
    "panoptic_to_coco",
    "predict",
    "release_freed_memory",
    "resolve_device",
    "segment_files",
    "segments_table",
    "summary_line",
    "write_prediction",
]
