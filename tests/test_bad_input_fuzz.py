"""Property-based fuzzing (hypothesis) of the entry points of ``test_bad_input.py``: for random
shapes, dtypes and values (NaN, inf, huge, negative, empty), every call either returns a result
that is well-formed (right shapes, finite, labels in range) or raises ``ValueError``/``TypeError``
- never another exception, never a malformed result. And an input that transformers' MaskFormer
takes with a well-defined meaning (an RGB image, a label map of known classes, finite logits of
consistent shapes, normalised images of at least 32x32 pixels) is never refused: a processor that
refused everything would fail every property.

Derandomised (the same examples on every run) so that CI is reproducible; the number of examples
per property is ``EXAMPLES`` (docs/reliability.md reports the total).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import tiny_config
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.inference import instance_inference, panoptic_inference, semantic_inference

EXAMPLES = {"images": 400, "label maps": 300, "post-processing": 300, "forward": 60}
FUZZ = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CLEAR = (ValueError, TypeError)

NUM_LABELS = 4
PROCESSOR = MaskFormerImageProcessor(num_labels=NUM_LABELS, size={"shortest_edge": 32, "longest_edge": 64},
                                     ignore_index=255)

dtypes = st.sampled_from([np.uint8, np.uint8, np.float32, np.uint16, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64,
                          np.bool_, np.complex64])
shapes = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3)),  # plausible images half of the time
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    st.tuples(st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5])),
    st.sampled_from([(300, 2, 3), (2, 300), (1, 1), (3, 1, 1), (4, 7, 9)]),
)


def _values(dtype) -> st.SearchStrategy:
    if np.dtype(dtype).kind == "f":
        return st.floats(allow_nan=True, allow_infinity=True, width=16 if dtype == np.float16 else 32)
    if np.dtype(dtype).kind == "c":
        return st.complex_numbers(max_magnitude=10, width=64)
    if dtype == np.bool_:
        return st.booleans()
    info = np.iinfo(dtype)
    return st.integers(max(info.min, -1000), min(info.max, 70000))


@st.composite
def arrays(draw, shape=shapes):
    dtype = draw(dtypes)
    return draw(hnp.arrays(dtype, draw(shape), elements=_values(dtype)))


def _tensor_or_array(draw, array):
    if draw(st.booleans()) and array.dtype != np.uint16:
        return torch.from_numpy(array.copy())
    return array


def plausible_image(image) -> bool:
    """An RGB image as transformers takes it: `(H, W, 3)` uint8, or float32 finite values, H, W >= 1."""
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    if array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1 or array.shape[0] in (1, 3, 4):
        return False  # (a first axis of 1, 3 or 4 also reads as channels first: a genuinely ambiguous layout)
    return array.dtype == np.uint8 or (array.dtype == np.float32 and bool(np.isfinite(array).all()))


@settings(max_examples=EXAMPLES["images"], **FUZZ)
@given(data=st.data())
@example(data=None)  # None: a fixed plausible image (below), whatever hypothesis draws
def test_any_image_is_processed_or_refused_clearly(data):
    if data is None:
        image, resize = np.full((20, 30, 3), 7, np.uint8), True
    else:
        image = _tensor_or_array(data.draw, data.draw(arrays()))
        resize = data.draw(st.booleans())
    try:
        out = PROCESSOR(images=[image], do_resize=resize)
    except CLEAR as error:
        assert not plausible_image(image), f"a plausible {tuple(image.shape)} {image.dtype} image was refused: {error}"
        event(f"refused: {type(error).__name__}")
        return
    event("accepted")
    values = out["pixel_values"]
    count = len(image) if image.ndim == 4 else 1  # a 4-d array is a batch, in a list too (as in transformers)
    assert values.dtype == torch.float32 and values.ndim == 4 and values.shape[:2] == (count, 3)
    assert torch.isfinite(values).all()
    assert out["pixel_mask"].shape == (count, *values.shape[-2:]) and (out["pixel_mask"].flatten(1).sum(1) > 0).all()


@st.composite
def label_maps(draw):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.float32, np.bool_]))
    low, high = (0, 1) if dtype == np.bool_ else (-3 if dtype != np.uint8 else 0, NUM_LABELS + 3)
    values = st.sampled_from([255, *range(low, high + 1)]) if dtype not in (np.bool_, np.int16) else \
        st.integers(low, high).map(bool if dtype == np.bool_ else int)
    label = draw(hnp.arrays(dtype, draw(st.sampled_from([(h, w), (h, w + 1), (h, w, 1)])), elements=values))
    return h, w, label


def plausible_label_map(h: int, w: int, label: np.ndarray, panoptic: bool, reduce: bool) -> bool:
    """A map transformers' processor gives a meaning to: integer ids of the image's size whose classes
    exist (``ignore_index`` 255 allowed; with ``do_reduce_labels`` 0 is ignored and k is class k - 1, so
    255 would be class 254, as in transformers)."""
    if label.dtype.kind not in "ui" or label.shape != (h, w):
        return False
    values = set(np.unique(label).tolist())
    if panoptic:  # every id is in the mapping, so every segment has a class
        return values <= set(range(0, NUM_LABELS + 4))
    known = set(range(1, NUM_LABELS + 1)) if reduce else set(range(NUM_LABELS))
    return values <= known | ({0} if reduce else {255})


@settings(max_examples=EXAMPLES["label maps"], **FUZZ)
@given(data=label_maps(), panoptic=st.booleans(), reduce=st.booleans())
@example(data=(5, 6, np.array([[0, 1, 2, 3, 255, 1]] * 5, np.uint8)), panoptic=False, reduce=False)
@example(data=(5, 6, np.array([[0, 1, 2, 3, 4, 1]] * 5, np.int64)), panoptic=False, reduce=True)
@example(data=(5, 6, np.array([[0, 1, 5, 6, 7, 1]] * 5, np.int32)), panoptic=True, reduce=False)
def test_any_label_map_becomes_valid_masks_or_is_refused(data, panoptic, reduce):
    h, w, label = data
    mapping = {i: i % NUM_LABELS for i in range(-3, NUM_LABELS + 4)} if panoptic else None
    try:
        out = PROCESSOR(images=[np.zeros((h, w, 3), np.uint8)], segmentation_maps=[label], do_resize=False,
                        instance_id_to_semantic_id=mapping, do_reduce_labels=reduce)
    except CLEAR as error:
        assert not plausible_label_map(h, w, label, panoptic, reduce), f"a plausible map was refused: {error}"
        event(f"refused: {type(error).__name__}")
        return
    event("accepted")
    masks, classes = out["mask_labels"][0], out["class_labels"][0]
    assert masks.shape[0] == classes.shape[0] and masks.shape[1:] == out["pixel_values"].shape[-2:]
    assert ((masks == 0) | (masks == 1)).all() and (masks.sum(0) <= 1).all()  # binary, disjoint
    assert classes.dtype == torch.int64 and ((classes >= 0) & (classes < NUM_LABELS)).all()
    assert masks[:, h:].sum() == 0 and masks[:, :, w:].sum() == 0  # nothing on padding
    if plausible_label_map(h, w, label, panoptic, reduce) and not panoptic:  # each known class is one mask
        wanted = {int(v) - reduce for v in np.unique(label) if v != 255 and not (reduce and v == 0)}
        assert sorted(classes.tolist()) == sorted(wanted)


special = st.sampled_from([0.0, 1e4, -1e4, 6e4, 3e38, -3e38, float("inf"), float("-inf"), float("nan")])


@st.composite
def logits(draw):
    valid = draw(st.booleans())  # half of the cases with consistent shapes (then values decide)
    batch, queries = draw(st.integers(0, 2)), draw(st.integers(1 if valid else 0, 5))
    classes = draw(st.integers(2 if valid else 0, 6))
    h, w = draw(st.integers(1 if valid else 0, 9)), draw(st.integers(1 if valid else 0, 9))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64] + [torch.int64] * (not valid)))
    if not valid and draw(st.booleans()):  # break the agreement of the two shapes now and then
        queries_m = draw(st.integers(0, 5))
    else:
        queries_m = queries
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    class_logits = (torch.randn(batch, queries, classes, generator=g) * draw(st.sampled_from([1, 30]))).to(dtype)
    mask_logits = (torch.randn(batch, queries_m, h, w, generator=g) * draw(st.sampled_from([1, 30]))).to(dtype)
    if draw(st.booleans()) and class_logits.numel() and dtype.is_floating_point:
        class_logits.view(-1)[draw(st.integers(0, class_logits.numel() - 1))] = draw(special)
    if draw(st.booleans()) and mask_logits.numel() and dtype.is_floating_point:
        mask_logits.view(-1)[draw(st.integers(0, mask_logits.numel() - 1))] = draw(special)
    sizes = draw(st.one_of(st.none(), st.lists(st.tuples(st.integers(1 if valid else -1, 12),
                                                         st.integers(1 if valid else -1, 12)),
                                               min_size=batch if valid else max(0, batch - 1),
                                               max_size=batch if valid else batch + 1)))
    return class_logits, mask_logits, sizes


def _check_map(segmentation, size, low, high):
    assert tuple(segmentation.shape) == tuple(size)
    assert segmentation.numel() == 0 or (low <= int(segmentation.min()) and int(segmentation.max()) <= high)


def plausible_logits(class_logits: torch.Tensor, mask_logits: torch.Tensor, sizes) -> bool:
    """Outputs transformers post-processes: floating, consistent `(B, Q, K + 1)` and `(B, Q, h, w)` with
    B, Q, h, w >= 1 and K >= 1, no NaN (infinities are legitimate logits), positive target sizes."""
    if not (class_logits.is_floating_point() and mask_logits.is_floating_point()):
        return False
    if class_logits.ndim != 3 or mask_logits.ndim != 4 or class_logits.shape[:2] != mask_logits.shape[:2]:
        return False
    if min(class_logits.shape[:2]) < 1 or class_logits.shape[-1] < 2 or min(mask_logits.shape[-2:]) < 1:
        return False
    if class_logits.isnan().any() or mask_logits.isnan().any():
        return False
    return sizes is None or (len(sizes) == class_logits.shape[0] and all(min(s) >= 1 for s in sizes))


@settings(max_examples=EXAMPLES["post-processing"], **FUZZ)
@given(case=logits(), threshold=st.sampled_from([0.0, 0.5, 0.99]))
@example(case=(torch.randn(2, 5, 4), torch.randn(2, 5, 6, 7) * 3, [(12, 14), (6, 7)]), threshold=0.0)
def test_any_logits_give_well_formed_maps_or_a_clear_error(case, threshold):
    class_logits, mask_logits, sizes = case
    try:
        semantic = semantic_inference(class_logits, mask_logits, target_sizes=sizes)
        panoptic = panoptic_inference(class_logits, mask_logits, target_sizes=sizes, threshold=threshold)
        instance = instance_inference(class_logits, mask_logits, target_sizes=sizes, threshold=threshold)
    except CLEAR as error:
        assert not plausible_logits(class_logits, mask_logits, sizes), f"plausible logits were refused: {error}"
        event(f"refused: {type(error).__name__}")
        return
    event("accepted")
    num_labels = class_logits.shape[-1] - 1
    expected = sizes or [tuple(mask_logits.shape[-2:])] * class_logits.shape[0]
    assert len(semantic) == len(panoptic) == len(instance) == class_logits.shape[0]
    for size, sem, pan, ins in zip(expected, semantic, panoptic, instance):
        _check_map(sem, size, 0, num_labels - 1)
        _check_map(pan["segmentation"], size, 0, len(pan["segments_info"]))
        _check_map(ins["segmentation"], size, -1, len(ins["segments_info"]) - 1)
        for info in pan["segments_info"] + ins["segments_info"]:
            assert 0 <= info["label_id"] < num_labels and 0.0 <= info["score"] <= 1.0
        if threshold == 0.0 and plausible_logits(class_logits, mask_logits, sizes):
            assert ins["segments_info"] or not (ins["segmentation"] >= 0).any()  # every painted pixel is an instance


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MaskFormerForUniversalSegmentation(tiny_config(num_labels=NUM_LABELS)).eval()


@settings(max_examples=EXAMPLES["forward"], **FUZZ)
@given(data=st.data())
def test_any_pixel_values_give_finite_outputs_or_a_clear_error(model, data):
    shape = data.draw(st.one_of(
        st.tuples(st.integers(1, 2), st.just(3), st.sampled_from([64, 70, 96]), st.sampled_from([64, 80, 96])),
        st.tuples(st.integers(0, 2), st.sampled_from([1, 3, 4]), st.sampled_from([0, 1, 31, 64, 70]),
                  st.sampled_from([0, 8, 64, 96])),
        hnp.array_shapes(min_dims=2, max_dims=5, min_side=1, max_side=4)))
    dtype = data.draw(st.sampled_from([torch.float32] * 4 + [torch.float64, torch.float16, torch.uint8, torch.int64]))
    values = (torch.randn(shape) * 3).to(dtype)
    if data.draw(st.booleans()) and values.numel() and dtype.is_floating_point:
        values.view(-1)[data.draw(st.integers(0, values.numel() - 1))] = data.draw(special)
    pixel_mask = None
    if data.draw(st.booleans()) and values.ndim == 4:
        pixel_mask = torch.ones(values.shape[0], *values.shape[2:], dtype=torch.int64)
        pixel_mask[:, data.draw(st.integers(0, max(0, values.shape[2] - 1))):] = data.draw(st.sampled_from([0, 1]))
    plausible = (values.ndim == 4 and values.shape[0] >= 1 and values.shape[1] == 3 and min(values.shape[2:]) >= 32
                 and values.dtype == torch.float32 and bool(torch.isfinite(values).all())
                 and (pixel_mask is None or bool((pixel_mask[:, :32, :32] == 1).all())))
    try:
        with torch.no_grad():
            out = model(pixel_values=values, pixel_mask=pixel_mask)
    except CLEAR as error:
        assert not plausible, f"plausible pixel values {tuple(values.shape)} were refused: {error}"
        event(f"refused: {type(error).__name__}")
        return
    event("accepted")
    assert out.class_queries_logits.shape == (shape[0], 8, NUM_LABELS + 1)
    assert torch.isfinite(out.class_queries_logits).all() and torch.isfinite(out.masks_queries_logits).all()
