"""Exported inference graphs: ONNX, TorchScript and ``torch.export`` programs of a MaskFormer.

    maskformer-hf export demo_output/model --format onnx --out model.onnx
    maskformer-hf export demo_output/model --format onnx --with-postprocess semantic --out semantic.onnx

:class:`MaskFormerGraph` is the part of :class:`~maskformer_hf.MaskFormerForUniversalSegmentation`
that a graph can hold: ``pixel_values`` `(B, 3, H, W)` (and ``pixel_mask`` `(B, H, W)`) in,
``class_queries_logits`` `(B, Q, K + 1)` and ``masks_queries_logits`` `(B, Q, H / 4, W / 4)` out,
with batch, height and width dynamic; optionally also ``semantic_map`` `(B, H, W)` int64, the
semantic rule (:func:`~maskformer_hf.inference.semantic_inference` at the input's size) inside the
graph. It computes what the eager model computes, with two differences that a graph forces:

* the mask projection is folded per image as one batched product per kernel tap
  (:func:`~maskformer_hf.pixel_decoder.mask_logits_by_taps`) instead of a grouped convolution whose
  group count is the batch size (same numbers up to float rounding);
* padding: the eager model runs each image's valid region through the backbone alone, a loop
  over images of different sizes that no static graph holds. The graph runs the backbone over
  the whole padded batch and then honours ``pixel_mask`` as the eager model does after the
  backbone (padded positions zeroed, excluded from GroupNorm statistics and attention). So
  unpadded inputs (an all-ones ``pixel_mask``, or none) give the eager numbers; a padded image's
  backbone features near its padding see the padding. :class:`~maskformer_hf.optimize` runs
  exported graphs on images of one valid size at a time, which keeps padded batches exact.

:func:`export_model` writes one of :data:`FORMATS`; :func:`load_exported` loads any of them back as
a callable with the model's call signature.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import STRIDES
from .pixel_decoder import mask_logits_by_taps, zero_padding

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "exported-program")
POSTPROCESS = ("semantic",)
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}
INPUT_NAMES = ("pixel_values", "pixel_mask")
OUTPUT_NAMES = ("class_queries_logits", "masks_queries_logits", "semantic_map")
DEFAULT_OPSET = 17
TIE = 1e-6  # two class scores closer than this (relative to the image's best) are a float tie: see check_export
MIN_EXPORT_SIZE = 33  # exported programs hold from this height and width on (stride-32 maps of 2 x 2 or more)


def level_masks(pixel_mask: Tensor, sizes: Sequence[Sequence[int]], strides: Sequence[int] = STRIDES) -> list[Tensor]:
    """Valid positions of every feature map, from the input's padding mask, as tensor operations.

    An image whose valid region is `(h, w)` pixels (padding sits bottom/right) covers
    ``ceil(h / s) x ceil(w / s)`` positions of a stride-`s` map, as the backbone run on the region
    alone gives.

    Args:
        pixel_mask: `(B, H, W)`, non-zero on valid pixels.
        sizes: `(h_i, w_i)` of each map.
    Returns:
        per map a `(B, h_i, w_i)` bool mask.
    """
    valid = pixel_mask != 0
    heights = valid.any(dim=2).sum(dim=1)  # (B,) rows that hold a valid pixel
    widths = valid.any(dim=1).sum(dim=1)
    masks = []
    for (height, width), stride in zip(sizes, strides):
        rows = torch.arange(height, device=pixel_mask.device) * stride < heights[:, None]  # (B, h)
        cols = torch.arange(width, device=pixel_mask.device) * stride < widths[:, None]  # (B, w)
        masks.append(rows[:, :, None] & cols[:, None, :])
    return masks


def semantic_map(class_queries_logits: Tensor, masks_queries_logits: Tensor, size: Sequence[int]) -> Tensor:
    """The semantic rule at `size`: ``argmax_c sum_i p_i(c) sigmoid(m_i)``, the scores resampled
    bilinearly (half-pixel centres) from mask resolution, as :func:`~maskformer_hf.inference.semantic_inference`
    computes for an unpadded image with ``target_sizes=[size]``.

    Args:
        class_queries_logits: `(B, Q, K + 1)`.
        masks_queries_logits: `(B, Q, h, w)`.
    Returns:
        `(B, size[0], size[1])` int64 class ids.
    """
    class_probs = class_queries_logits.float().softmax(-1)[..., :-1]  # (B, Q, K)
    probs = masks_queries_logits.float().sigmoid()  # (B, Q, h, w)
    scores = torch.einsum("bqk,bqhw->bkhw", class_probs, probs)
    scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return scores.argmax(dim=1)


class MaskFormerGraph(nn.Module):
    """The traceable inference graph of a :class:`~maskformer_hf.MaskFormerForUniversalSegmentation`
    (module docstring). Shares the model's parameters.

    ``forward(pixel_values, pixel_mask=None)`` returns ``(class_queries_logits, masks_queries_logits)``,
    plus ``semantic_map`` `(B, H, W)` when ``postprocess="semantic"`` (-1 on padded pixels).
    """

    def __init__(self, model: nn.Module, postprocess: str | None = None) -> None:
        super().__init__()
        if postprocess is not None and postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess: expected None or one of {POSTPROCESS}, got {postprocess!r}")
        if not hasattr(model, "model") or not hasattr(model.model, "decode_features"):
            raise TypeError("model: expected a maskformer_hf MaskFormerForUniversalSegmentation, "
                            f"got {type(model).__name__}")
        if model.config.segmentation_type != "mask_classification":
            raise ValueError(f"model: segmentation_type={model.config.segmentation_type!r}; export covers mask "
                             "classification models (the per-pixel baselines run eagerly)")
        self.segmenter = model
        self.postprocess = postprocess

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        segmenter = self.segmenter
        body = segmenter.model
        backbone_maps = body.backbone._features(pixel_values)
        if torch.compiler.is_exporting():  # maps of 2 x 2 or more (MIN_EXPORT_SIZE): lets torch.export drop the
            for level in backbone_maps:  # size-1 broadcasting special cases
                torch._check(level.shape[-2] > 1)
                torch._check(level.shape[-1] > 1)
        masks = None
        if pixel_mask is not None:
            masks = level_masks(pixel_mask, [m.shape[-2:] for m in backbone_maps])
            backbone_maps = [zero_padding(m, k) for m, k in zip(backbone_maps, masks)]
        features = body.decode_features(backbone_maps, masks)
        state = features.decoder_states[-1]  # (B, Q, D)
        class_logits = segmenter.class_predictor(state)
        embeddings = segmenter.mask_embedder(state)[:, None]  # (B, 1, Q, C_E)
        mask_logits = mask_logits_by_taps(embeddings, features.fpn_maps[-1], body.pixel_decoder.mask_projection)[:, 0]
        if segmenter.config.mask_pooled_classification:
            class_logits = segmenter.add_mask_pooled_logits(class_logits[None], mask_logits[None], None,
                                                            features.fpn_maps[-1], masks)[0]
        if self.postprocess is None:
            return class_logits, mask_logits
        classes = semantic_map(class_logits, mask_logits, pixel_values.shape[-2:])
        if pixel_mask is not None:
            classes = torch.where(pixel_mask != 0, classes, torch.full_like(classes, -1))
        return class_logits, mask_logits, classes


def _check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    return format


def example_inputs(model: nn.Module, with_pixel_mask: bool = True, size: tuple[int, int] = (75, 83),
                   batch_size: int = 2) -> tuple[Tensor, ...]:
    """Inputs to trace with: a batch of 2 at an odd size (no dimension a multiple of a stride or a
    window), so that the traced graph takes the general path of every shape-dependent step."""
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, *size, generator=generator).to(parameter.device, parameter.dtype)
    if not with_pixel_mask:
        return (pixel_values,)
    return pixel_values, torch.ones(batch_size, *size, dtype=torch.int64, device=parameter.device)


def _dynamic_shapes(with_pixel_mask: bool, static_size: bool = False) -> dict[str, Any]:
    batch = torch.export.Dim("batch", min=1)
    if static_size:
        return {"pixel_values": {0: batch}, "pixel_mask": {0: batch} if with_pixel_mask else None}
    height = width = torch.export.Dim.AUTO
    return {"pixel_values": {0: batch, 2: height, 3: width},
            "pixel_mask": {0: batch, 1: height, 2: width} if with_pixel_mask else None}


def _export_program(model: nn.Module, graph: nn.Module, inputs: tuple[Tensor, ...], names: list[str],
                    with_pixel_mask: bool, example_size: Sequence[int]):
    """``torch.export`` with a dynamic batch, height and width where torch.export can prove the
    shape arithmetic for every size; else (MaskFormer-Swin's window padding, some ResNet stems)
    height and width stay at `example_size`, with a warning."""
    def run(static: bool):
        shapes = _dynamic_shapes(with_pixel_mask, static_size=static)
        return torch.export.export(graph, inputs, dynamic_shapes={k: shapes[k] for k in names})

    if not _is_swin(model):
        try:
            return run(static=False)
        except torch._dynamo.exc.UserError as error:  # a constraint violation: sizes it cannot prove
            reason = str(error).splitlines()[0]
    else:
        reason = "the window-padding geometry"
    logger.warning("exported-program: batch dynamic, height and width fixed at %s (torch.export cannot prove "
                   "the shapes for symbolic sizes: %s); the onnx and torchscript formats are dynamic in all three",
                   tuple(example_size), reason)
    return run(static=True)


def exported_sizes_are_dynamic(path: str | os.PathLike) -> bool:
    """Whether a saved exported program takes any height and width (else only its traced size)."""
    program = torch.export.load(str(path))
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder"
                       and node.name == "pixel_values")
    return not all(isinstance(d, int) for d in placeholder.meta["val"].shape[2:])


def _is_swin(model: nn.Module) -> bool:
    from .modeling_maskformer_swin import MaskFormerSwinBackbone

    return any(isinstance(m, MaskFormerSwinBackbone) for m in model.model.backbone.modules())


def export_model(model: nn.Module, path: str | os.PathLike, format: str = "onnx", *, with_pixel_mask: bool = True,
                 postprocess: str | None = None, opset: int = DEFAULT_OPSET,
                 example_size: tuple[int, int] = (75, 83)) -> Path:
    """Write the inference graph of `model` (a :class:`~maskformer_hf.MaskFormerForUniversalSegmentation`)
    to `path` in one of :data:`FORMATS`; batch, height and width are dynamic.

    Args:
        format: ``"onnx"`` (``torch.onnx.export`` through ``torch.export``, opset `opset`; inputs
            and outputs named as in :data:`INPUT_NAMES` / :data:`OUTPUT_NAMES`), ``"torchscript"``
            (``torch.jit.trace``; load with ``torch.jit.load``) or ``"exported-program"``
            (``torch.export``; load with ``torch.export.load(path).module()``).
        with_pixel_mask: the graph takes ``pixel_mask`` as its second input.
        postprocess: ``"semantic"``: the graph also returns ``semantic_map`` (B, H, W).
        example_size: the `(H, W)` traced with; any odd size works, see :func:`example_inputs`.
    Returns:
        the path written.
    """
    _check_format(format)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = MaskFormerGraph(model, postprocess=postprocess).eval()
    inputs = example_inputs(model, with_pixel_mask, example_size)
    names = list(INPUT_NAMES[: len(inputs)])
    outputs = list(OUTPUT_NAMES[: 3 if postprocess else 2])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracers' warnings about shape-dependent Python values
        if format == "onnx":
            # The TorchScript-based exporter: it records size arithmetic as graph operations, so one
            # trace holds for every size (the torch.export route specialises the Swin geometry).
            axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"},
                    "pixel_mask": {0: "batch", 1: "height", 2: "width"},
                    "class_queries_logits": {0: "batch"},
                    "masks_queries_logits": {0: "batch", 2: "mask_height", 3: "mask_width"},
                    "semantic_map": {0: "batch", 1: "height", 2: "width"}}
            torch.onnx.export(graph, inputs, str(path), dynamo=False, input_names=names, output_names=outputs,
                              dynamic_axes={k: v for k, v in axes.items() if k in names + outputs},
                              opset_version=opset)
        elif format == "exported-program":
            torch.export.save(_export_program(model, graph, inputs, names, with_pixel_mask, example_size), str(path))
        else:
            torch.jit.save(torch.jit.trace(graph, inputs, check_trace=False), str(path))
    logger.info("wrote %s (%s)", path, format)
    return path


def load_exported(path: str | os.PathLike, format: str | None = None):
    """A callable ``run(pixel_values, pixel_mask=None) -> tuple of tensors`` over a file written by
    :func:`export_model` (format from the suffix when not given)."""
    path = Path(path)
    format = format or {suffix: name for name, suffix in SUFFIXES.items()}.get(path.suffix)
    _check_format(format or "")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported graph")
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, ...]:
            feed = {"pixel_values": pixel_values.detach().cpu().float().numpy()}
            if "pixel_mask" in names:
                mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:]) if pixel_mask is None else pixel_mask
                feed["pixel_mask"] = mask.detach().cpu().to(torch.int64).numpy()
            return tuple(torch.from_numpy(out) for out in session.run(None, feed))

        return run_onnx
    module = torch.jit.load(str(path)) if format == "torchscript" else torch.export.load(str(path)).module()

    def run_torch(pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        with torch.no_grad():
            if pixel_mask is None and _takes_mask(module):
                pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.int64)
            args = (pixel_values,) if pixel_mask is None else (pixel_values, pixel_mask.to(torch.int64))
            return tuple(out.detach() for out in module(*args))

    return run_torch


def _takes_mask(module: Any) -> bool:
    code = getattr(module, "code", None)  # TorchScript: the forward's source
    if isinstance(code, str):
        return "pixel_mask" in code.split(")")[0]
    try:
        import inspect

        return len(inspect.signature(module.forward).parameters) > 1
    except (TypeError, ValueError):
        return True


def check_export(model: nn.Module, path: str | os.PathLike, format: str, *, with_pixel_mask: bool = True,
                 postprocess: str | None = None, sizes: Sequence[tuple[int, int, int]] = ((1, 64, 96), (2, 101, 77)),
                 tolerance: float = 1e-4) -> dict[str, Any]:
    """Run the written graph and the eager model on random inputs of several sizes (batch, H, W):
    the largest logit difference relative to the logits' magnitude, and whether semantic maps agree.
    ``ok`` when every size is within `tolerance` and, with the semantic rule, the maps are equal
    wherever the eager scores decide: a pixel whose two best classes score within `TIE` (relative
    to the image's best score) is a float tie, which rounding may break either way (random inputs
    give a half-trained model many: the graph flipped 9 % of such pixels at gaps below 5e-8)."""
    from .inference import semantic_inference, semantic_scores

    run = load_exported(path, format)
    generator = torch.Generator().manual_seed(0)
    report: dict[str, Any] = {"format": format, "sizes": [], "ok": True}
    for batch, height, width in sizes:
        pixel_values = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            eager = model(pixel_values=pixel_values)
        mask = torch.ones(batch, height, width, dtype=torch.int64) if with_pixel_mask else None
        outputs = run(pixel_values, mask)
        row: dict[str, Any] = {"size": [batch, height, width]}
        for name, got, want in zip(OUTPUT_NAMES, outputs, (eager.class_queries_logits, eager.masks_queries_logits)):
            row[f"{name}_relative_diff"] = ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()
            report["ok"] &= row[f"{name}_relative_diff"] <= tolerance
        if postprocess == "semantic":
            logits, targets = (eager.class_queries_logits, eager.masks_queries_logits), [(height, width)] * batch
            want = torch.stack(semantic_inference(*logits, None, targets))
            scores = torch.stack(semantic_scores(*logits, None, targets))  # (B, K, H, W)
            decided = torch.ones_like(want, dtype=torch.bool)  # one class: nothing to tie with
            if scores.shape[1] > 1:
                best = scores.topk(2, dim=1).values
                decided = (best[:, 0] - best[:, 1]) > TIE * best[:, 0].flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
            same = outputs[2] == want
            row["semantic_agreement"] = same.float().mean().item()
            row["tied_pixels"] = 1.0 - decided.float().mean().item()
            row["semantic_agreement_where_decided"] = same[decided].float().mean().item() if decided.any() else 1.0
            report["ok"] &= row["semantic_agreement_where_decided"] == 1.0
        report["sizes"].append(row)
    return report
