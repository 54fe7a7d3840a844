"""Fast inference: every choice a CPU user can make, measured, and the best one picked on the spot.

    fast = optimize(model, mode="auto")          # measured here, decision cached
    outputs = fast(pixel_values=pixel_values, pixel_mask=pixel_mask)
    processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)

``maskformer-hf segment --fast`` does the same. Modes (:data:`MODES`):

=================  ===============================================================================
fp32               the eager model (``torch.inference_mode``)
bf16               the eager model under ``torch.autocast("cpu", dtype=torch.bfloat16)``; only where
                   the CPU has native bf16 (:func:`~maskformer_hf.precision.cpu_supports_bf16`)
int8               ``torch.ao`` dynamic int8 quantisation of every ``nn.Linear`` layer: the transformer
                   module, the heads and a Swin backbone's projections (convolutions stay fp32)
compile            ``torch.compile`` of the eager model (30-40 s of compilation per process and size here)
onnxruntime        the exported ONNX graph (:mod:`maskformer_hf.export`) in ONNX Runtime, all graph
                   optimisations on
onnxruntime-int8   the same graph after ONNX Runtime's dynamic int8 quantiser
openvino           the ONNX graph compiled by OpenVINO, fp32
openvino-bf16      OpenVINO with bf16 inference precision (native-bf16 CPUs only)
=================  ===============================================================================

``mode="auto"`` runs every available mode of :data:`AUTO_CANDIDATES` on a calibration batch (by
default :func:`calibration_batch`: synthetic scenes at 512 x 512 through ImageNet normalisation;
``maskformer-hf segment --fast`` calibrates at the size its processor gives images,
:func:`calibration_size`, since the fastest mode at one size need not be the fastest at another),
keeps those whose semantic maps agree with fp32 on at least ``min_agreement`` of the pixels, and
returns the fastest (median of ``repeats`` timed calls). The decision is stored in
``$MASKFORMER_HF_CACHE/optimize.json`` (default ``~/.cache/maskformer_hf``), keyed by the weights,
the calibration shape, the CPU and the library versions, so a later call on the same machine
skips the measuring; nothing is hard-coded.

Every mode returns a :class:`~maskformer_hf.MaskFormerForUniversalSegmentationOutput` with fp32
``class_queries_logits`` and ``masks_queries_logits`` (and ``pixel_mask``), so the processor's
post-processing accepts it. Graph modes run images of one valid size at a time (cropped to it), so
padded batches give what each image gives alone, as the eager model does.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .backbones import _crop_sizes
from .precision import cpu_supports_bf16

logger = logging.getLogger(__name__)

MODES = ("fp32", "bf16", "int8", "compile", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16")
# compile is left out of "auto": its compilation (30-40 s for Swin-T on 2 cores, again for every new size and process)
# is not amortised by a segmentation run of a few images.
AUTO_CANDIDATES = ("fp32", "bf16", "int8", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mode_available(mode: str) -> tuple[bool, str]:
    """``(available, why not)`` of a mode on this machine and install."""
    if mode not in MODES:
        raise ValueError(f"mode: expected 'auto' or one of {MODES}, got {mode!r}")
    if mode.endswith("bf16") and not cpu_supports_bf16():
        return False, "this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 would be emulated, far slower"
    if mode.startswith("onnxruntime") and importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime is not installed (pip install onnxruntime onnx)"
    if mode.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        return False, "openvino is not installed (pip install openvino onnx)"
    return True, ""


# ---------------------------------------------------------------------------------------------
# Runners: (pixel_values (G, 3, h, w) of unpadded images) -> (class logits, mask logits)
# ---------------------------------------------------------------------------------------------
def _eager_runner(model: nn.Module, autocast: bool = False) -> Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]:
    def run(pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with torch.inference_mode(), context:
            out = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        return out.class_queries_logits.float(), out.masks_queries_logits.float()

    return run


def _int8_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose ``nn.Linear`` layers are ``torch.ao`` dynamic int8 (weights int8, activations
    quantised per call): the transformer module, the heads and, in a Swin backbone, every projection
    (called as modules, :func:`maskformer_hf.ops.is_plain`). Swin-T at 512 x 512 on a 2-core AVX2 EPYC:
    1.11 s against 1.27 s in fp32 (the decoder and heads alone: no gain), mask logits within 4 % of
    fp32's range on random weights; ``mode="auto"`` keeps it only where it agrees with fp32."""
    import copy
    import warnings

    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice
        return torch.ao.quantization.quantize_dynamic(quantized, {nn.Linear}, dtype=torch.qint8, inplace=True)


class _GraphRunner:
    """An exported ONNX graph (pixel_values only) in ONNX Runtime or OpenVINO."""

    def __init__(self, model: nn.Module, mode: str, workdir: Path) -> None:
        from .export import export_model

        path = export_model(model, workdir / "model.onnx", "onnx", with_pixel_mask=False)
        if mode == "onnxruntime-int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = workdir / "model.int8.onnx"
            with _quiet_logging():
                quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            path = quantized
        self.mode = mode
        if mode.startswith("onnxruntime"):
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = torch.get_num_threads()
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._run = lambda x: session.run(None, {"pixel_values": x})
        else:
            self._openvino = _OpenVinoShapes(path, "bf16" if mode == "openvino-bf16" else "f32")
            self._run = self._openvino

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        class_logits, mask_logits = self._run(np.ascontiguousarray(pixel_values.detach().float().cpu().numpy()))[:2]
        return torch.from_numpy(np.asarray(class_logits)), torch.from_numpy(np.asarray(mask_logits))


class _OpenVinoShapes:
    """An ONNX graph compiled by OpenVINO: one dynamic-shape compilation for any input, plus a
    static-shape compilation (about 15 % faster on Swin-T at 512 x 512 here) for each input shape
    seen twice, the most recent :data:`STATIC_SHAPES` kept."""

    STATIC_SHAPES = 4

    def __init__(self, path: Path, precision: str) -> None:
        import openvino as ov

        self._core = ov.Core()
        self._path = str(path)
        self._config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self._dynamic = self._compile(None)
        self._static: dict[tuple[int, ...], Any] = {}
        self._seen: dict[tuple[int, ...], int] = {}

    def _compile(self, shape: tuple[int, ...] | None):
        model = self._core.read_model(self._path)
        if shape is not None:
            model.reshape({"pixel_values": list(shape)})
        return self._core.compile_model(model, "CPU", self._config).create_infer_request()

    def __call__(self, pixel_values: np.ndarray) -> list[np.ndarray]:
        shape = tuple(pixel_values.shape)
        request = self._static.get(shape)
        if request is None:
            self._seen[shape] = self._seen.get(shape, 0) + 1
            if self._seen[shape] >= 2:
                if len(self._static) >= self.STATIC_SHAPES:
                    self._static.pop(next(iter(self._static)))
                request = self._static[shape] = self._compile(shape)
            else:
                request = self._dynamic
        return [np.array(value) for value in request.infer({"pixel_values": pixel_values}).values()]


@contextlib.contextmanager
def _quiet_logging():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@dataclass
class OptimizedModel:
    """A MaskFormer behind one of :data:`MODES`; called like the model.

    ``measurements`` holds what ``mode="auto"`` measured (per mode: seconds per call, semantic
    agreement with fp32, or why it was skipped).
    """

    model: nn.Module
    mode: str
    runner: Callable[..., tuple[Tensor, Tensor]]
    handles_padding: bool
    measurements: list[dict[str, Any]] = field(default_factory=list)
    workdir: Any = None

    @property
    def config(self):
        return self.model.config

    def parameters(self):
        return self.model.parameters()

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None = None, **kwargs: Any):
        from .modeling_maskformer import MaskFormerForUniversalSegmentationOutput

        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
            got = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values: expected a (batch_size, channels, height, width) tensor, got {got}")
        if self.handles_padding or pixel_mask is None:
            class_logits, mask_logits = self.runner(pixel_values, pixel_mask)
        else:
            class_logits, mask_logits = self._by_valid_size(pixel_values, pixel_mask)
        return MaskFormerForUniversalSegmentationOutput(class_queries_logits=class_logits,
                                                        masks_queries_logits=mask_logits, pixel_mask=pixel_mask)

    def _by_valid_size(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Run images of one valid size together, cropped to it; mask logits placed (zero-filled) in
        the padded batch's stride-4 grid, as the eager model's are."""
        if pixel_mask.shape != (pixel_values.shape[0], *pixel_values.shape[2:]):
            raise ValueError(f"pixel_mask: expected shape {(pixel_values.shape[0], *pixel_values.shape[2:])}, "
                             f"got {tuple(pixel_mask.shape)}")
        sizes = _crop_sizes(pixel_mask)
        if any(h == 0 or w == 0 for h, w in sizes):
            raise ValueError("pixel_mask: every image needs at least one valid (non-zero) pixel")
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size, []).append(index)
        batch, (height, width) = pixel_values.shape[0], pixel_values.shape[2:]
        class_logits = mask_logits = None
        for (h, w), members in groups.items():
            index = torch.tensor(members)
            c, m = self.runner(pixel_values[index, :, :h, :w].contiguous(), None)
            if class_logits is None:
                class_logits = c.new_zeros(batch, *c.shape[1:])
                mask_logits = m.new_zeros(batch, m.shape[1], max(-(-height // 4), m.shape[2]),
                                          max(-(-width // 4), m.shape[3]))
            class_logits[index] = c
            mask_logits[index, :, : m.shape[2], : m.shape[3]] = m
        return class_logits, mask_logits


def _build(model: nn.Module, mode: str) -> OptimizedModel:
    available, why = mode_available(mode)
    if not available:
        raise ValueError(f"mode {mode!r} is not available here: {why}")
    model = model.eval()
    if mode in ("fp32", "bf16"):
        return OptimizedModel(model, mode, _eager_runner(model, autocast=mode == "bf16"), handles_padding=True)
    if mode == "int8":
        return OptimizedModel(model, mode, _eager_runner(_int8_model(model)), handles_padding=True)
    if mode == "compile":
        return OptimizedModel(model, mode, _eager_runner(torch.compile(model)), handles_padding=True)
    workdir = tempfile.TemporaryDirectory(prefix="maskformer_hf_")
    runner = _GraphRunner(model, mode, Path(workdir.name))
    return OptimizedModel(model, mode, runner, handles_padding=False, workdir=workdir)


# ---------------------------------------------------------------------------------------------
# Measuring: calibration images, agreement, timing, the cached decision
# ---------------------------------------------------------------------------------------------
def calibration_batch(batch_size: int = 4, size: int = 512, seed: int = 0) -> Tensor:
    """`(batch_size, 3, size, size)`: synthetic scenes (textured things over stuff regions, see
    :mod:`maskformer_hf.data.synthetic`) normalised with ImageNet's mean and std."""
    from .data.synthetic import generate_example

    images = []
    for index in range(batch_size):
        image = generate_example(np.random.default_rng((seed, index)), size=size)[0]
        images.append(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (torch.stack(images) - mean) / std


def calibration_size(processor: Any, size: int | None = None) -> int:
    """The square side to calibrate at for images that go through `processor`: `size` when given (a
    shortest edge, as ``segment --size``), else the processor's shortest edge or fixed height/width
    (the larger), else 512."""
    if size is not None:
        return int(size)
    setting = dict(getattr(processor, "size", None) or {})
    for keys in (("shortest_edge",), ("height", "width"), ("max_height", "max_width")):
        if all(setting.get(key) for key in keys):
            return max(int(setting[key]) for key in keys)
    return 512


def semantic_agreement(reference: tuple[Tensor, Tensor], candidate: tuple[Tensor, Tensor],
                       size: Sequence[int]) -> float:
    """Share of pixels whose semantic class (at `size`) is the same under both (class, mask) logits."""
    from .export import semantic_map

    return (semantic_map(*reference, size) == semantic_map(*candidate, size)).float().mean().item()


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 2) -> float:
    """Median seconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cache_dir() -> Path:
    return Path(os.environ.get("MASKFORMER_HF_CACHE", Path.home() / ".cache" / "maskformer_hf"))


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="ignore").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "onnxruntime", "openvino", "maskformer-hf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "-"
    return found


def decision_key(model: nn.Module, example: Tensor, candidates: Sequence[str], min_agreement: float) -> str:
    """What a cached decision depends on: the weights, the calibration batch's shape, the candidates,
    the agreement bar, the CPU, the thread count and the library versions."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    digest.update(json.dumps([list(example.shape), list(candidates), min_agreement, _cpu_name(),
                              torch.get_num_threads(), _versions()]).encode())
    return digest.hexdigest()


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    os.replace(tmp, path)


def measure_modes(model: nn.Module, example: Tensor, candidates: Sequence[str] = AUTO_CANDIDATES,
                  repeats: int = 3) -> list[dict[str, Any]]:
    """Per candidate: ``{"mode", "seconds", "agreement", "max_abs_diff"}`` on `example` (timed on its
    first image, agreement over all of it), or ``{"mode", "skipped": why}``."""
    reference = _build(model, "fp32").runner(example, None)
    size = example.shape[-2:]
    results = []
    for mode in candidates:
        available, why = mode_available(mode)
        if not available:
            results.append({"mode": mode, "skipped": why})
            continue
        try:
            fast = _build(model, mode)
            outputs = fast.runner(example, None)
            seconds = time_call(lambda: fast.runner(example[:1], None), repeats=repeats)
        except Exception as error:  # noqa: BLE001 - a mode that fails here is reported and passed over
            results.append({"mode": mode, "skipped": f"{type(error).__name__}: {error}".splitlines()[0][:300]})
            continue
        results.append({
            "mode": mode,
            "seconds": seconds,
            "agreement": semantic_agreement(reference, outputs, size),
            "max_abs_diff": (outputs[1] - reference[1]).abs().max().item(),
        })
        logger.info("optimize: %s", results[-1])
    return results


def optimize(model: nn.Module, mode: str = "auto", *, example: Tensor | None = None,
             candidates: Sequence[str] = AUTO_CANDIDATES, min_agreement: float = 0.99, repeats: int = 3,
             use_cache: bool = True) -> OptimizedModel:
    """`model` (a :class:`~maskformer_hf.MaskFormerForUniversalSegmentation`, on the CPU) behind the
    fastest mode (``"auto"``) or the one named (:data:`MODES`); see the module docstring.

    Args:
        example: the calibration batch of ``"auto"`` (default :func:`calibration_batch`).
        candidates: the modes ``"auto"`` considers.
        min_agreement: the share of semantic pixels a mode must give as fp32 does.
        use_cache: read and write the cached decision.
    """
    if not isinstance(model, nn.Module) or not hasattr(getattr(model, "config", None), "segmentation_type"):
        raise TypeError(f"model: expected a MaskFormerForUniversalSegmentation, got {type(model).__name__}")
    if model.config.segmentation_type != "mask_classification":
        raise ValueError(f"model: segmentation_type={model.config.segmentation_type!r}; optimize covers mask "
                         "classification models (the per-pixel baselines run eagerly)")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("optimize: the modes are CPU modes; the model is on "
                         f"{next(model.parameters()).device} (use torch.compile there)")
    if mode != "auto":
        return _build(model, mode)
    unknown = [c for c in candidates if c not in MODES]
    if unknown or not candidates:
        raise ValueError(f"candidates: expected a non-empty subset of {MODES}, got {list(candidates)}")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement: expected a share in [0, 1], got {min_agreement}")
    example = calibration_batch() if example is None else example
    key = decision_key(model, example, candidates, min_agreement)
    path = cache_dir() / "optimize.json"
    entries = _read_cache(path) if use_cache else {}
    cached = entries.get(key)
    if cached is not None and mode_available(cached["mode"])[0]:
        logger.info("optimize: %s (cached decision, %s)", cached["mode"], path)
        fast = _build(model, cached["mode"])
        fast.measurements = cached["measurements"]
        return fast
    measurements = measure_modes(model, example, candidates, repeats)
    passing = [m for m in measurements if "seconds" in m and m["agreement"] >= min_agreement]
    best = min(passing, key=lambda m: m["seconds"])["mode"] if passing else "fp32"
    if use_cache:
        entries[key] = {"mode": best, "measurements": measurements, "cpu": _cpu_name(), "time": time.time()}
        _write_cache(path, entries)
    logger.info("optimize: chose %s", best)
    fast = _build(model, best)
    fast.measurements = measurements
    return fast
