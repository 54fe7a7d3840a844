"""The set loss: exact against transformers, fused path against the plain functions, robust."""

import math

import pytest
import torch
import torch.nn.functional as F

from maskformer_hf import MaskFormerForUniversalSegmentation, convert_from_transformers
from maskformer_hf.loss_maskformer import (BinaryMaskLoss, MaskFormerLoss, dice_loss, sample_targets,
                                           sigmoid_focal_loss, upsample_bilinear_adjoint)
from maskformer_hf.matching import (hungarian_match, pairwise_dice_cost, pairwise_mask_costs,
                                    pairwise_sigmoid_focal_cost, point_sample, point_sample_shared,
                                    solve_assignment)

from conftest import tiny_config, tiny_hf_model


def random_targets(batch_size=2, size=(96, 128), counts=(3, 4), num_labels=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = [(torch.rand(n, *size, generator=g) > 0.5).float() for n in counts[:batch_size]]
    labels = [torch.randint(0, num_labels, (n,), generator=g) for n in counts[:batch_size]]
    return masks, labels


@pytest.mark.parametrize("kind", ["swin", "resnet"])
def test_loss_equals_transformers(kind):
    hf_model = tiny_hf_model(kind)  # use_auxiliary_loss=False: the final layer only
    model = convert_from_transformers(hf_model)
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 96, 128)
    masks, labels = random_targets()
    theirs = hf_model(pixel_values=pixel_values, mask_labels=masks, class_labels=labels)
    ours = model(pixel_values=pixel_values, mask_labels=masks, class_labels=labels)
    assert abs(ours.loss.item() / theirs.loss.item() - 1) <= 1e-4
    assert set(ours.loss_dict) == {"loss_cross_entropy", "loss_mask", "loss_dice"}
    theirs.loss.backward()
    ours.loss.backward()
    torch.testing.assert_close(model.class_predictor.weight.grad, hf_model.class_predictor.weight.grad,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.model.pixel_decoder.mask_projection.weight.grad,
                               hf_model.model.pixel_level_module.decoder.mask_projection.weight.grad,
                               atol=1e-5, rtol=1e-4)


def test_deep_supervision_is_final_plus_earlier_layers():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(decoder_layers=6)).eval()
    pixel_values = torch.randn(2, 3, 64, 96)
    masks, labels = random_targets(size=(64, 96), num_labels=4)
    out = model(pixel_values, mask_labels=masks, class_labels=labels)
    assert len(out.loss_dict) == 18  # 3 terms x (final + 5 earlier layers)
    assert {k for k in out.loss_dict if k.endswith("_4")} == {"loss_cross_entropy_4", "loss_mask_4", "loss_dice_4"}
    assert not any(k.endswith("_5") for k in out.loss_dict)
    torch.testing.assert_close(out.loss, sum(out.loss_dict.values()))
    # Each earlier layer's terms are the loss of that layer's own predictions, matched on their own.
    criterion = model.criterion
    for layer, aux in enumerate(out.auxiliary_logits):
        _, terms = criterion(aux["class_queries_logits"][None], aux["masks_queries_logits"][None], masks, labels)
        for name, value in terms.items():
            torch.testing.assert_close(out.loss_dict[f"{name}_{layer}"], value, atol=1e-5, rtol=1e-5)
    _, final = criterion(out.class_queries_logits[None], out.masks_queries_logits[None], masks, labels)
    for name, value in final.items():
        torch.testing.assert_close(out.loss_dict[name], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("low, high", [((12, 16), (48, 64)), ((10, 14), (33, 47))])
def test_fused_mask_loss_matches_autograd(low, high):
    torch.manual_seed(0)
    logits = (3 * torch.randn(5, *low, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(3, *high) > 0.6).to(torch.float64)
    index = torch.tensor([0, 2, 1, 2, 0])
    focal, dice = BinaryMaskLoss.apply(logits, targets, index, 0.25, 2.0, 2)
    weights = torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    ((focal * weights[0]).sum() + (dice * weights[1]).sum()).backward()
    fused_grad = logits.grad.clone()
    logits.grad = None
    up = F.interpolate(logits[:, None], size=high, mode="bilinear", align_corners=False).flatten(1)
    ref_focal = sigmoid_focal_loss(up, targets[index].flatten(1))
    ref_dice = dice_loss(up, targets[index].flatten(1))
    ((ref_focal * weights[0]).sum() + (ref_dice * weights[1]).sum()).backward()
    torch.testing.assert_close(focal, ref_focal.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dice, ref_dice.float(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused_grad.float(), logits.grad.float(), atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("weights, used", [((20.0, 1.0), "both"), ((20.0, 1.0), "focal"), ((20.0, 1.0), "dice"),
                                           ((0.0, 1.0), "both")])
def test_fused_mask_loss_announced_weights(weights, used):
    """The gradient formed in forward for ``w_f focal + w_d dice`` serves that combination (any per-mask
    scale); other combinations (one term only) are recomputed; both equal autograd."""
    torch.manual_seed(1)
    logits = (4 * torch.randn(6, 9, 11, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(2, 36, 44) > 0.5).to(torch.float64)
    index = torch.tensor([1, 0, 1, 1, 0, 1])
    scale = torch.rand(6, dtype=torch.float64) + 0.5

    def combine(focal, dice):
        terms = {"both": weights[0] * focal + weights[1] * dice, "focal": focal, "dice": dice}[used]
        return (terms * scale).sum()

    combine(*BinaryMaskLoss.apply(logits, targets, index, 0.25, 2.0, 4, weights)).backward()
    fused_grad, logits.grad = logits.grad.clone(), None
    up = F.interpolate(logits[:, None], size=(36, 44), mode="bilinear", align_corners=False).flatten(1)
    combine(sigmoid_focal_loss(up, targets[index].flatten(1)), dice_loss(up, targets[index].flatten(1))).backward()
    torch.testing.assert_close(fused_grad, logits.grad, atol=1e-7, rtol=1e-4)


def test_fused_mask_loss_extreme_logits_stay_finite():
    logits = torch.tensor([[[-200.0, 120.0], [0.0, 90.0]]]).requires_grad_()
    targets = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    focal, dice = BinaryMaskLoss.apply(logits, targets, torch.tensor([0]), 0.25, 2.0, 4, (20.0, 1.0))
    (20 * focal + dice).sum().backward()
    assert torch.isfinite(focal).all() and torch.isfinite(dice).all() and torch.isfinite(logits.grad).all()
    # pixel (0, 0): t = 1 at logit -200: alpha * 1 * softplus(200) = 50; (0, 1): t = 0 at 120: 0.75 * 120 = 90
    assert focal.item() == pytest.approx((0.25 * 200 + 0.75 * 120 + 0.25 * math.log(2) * 0.25 + 0) / 4, rel=1e-5)


@pytest.mark.parametrize("low, high", [((5, 7), (20, 28)), ((3, 9), (6, 18)), ((6, 4), (6, 4)), ((4, 4), (12, 12)),
                                       ((5, 7), (13, 30)), ((9, 8), (4, 5))])
def test_upsample_adjoint(low, high):
    """Integer and non-integer factors, and downsampling: the matrix adjoint equals autograd's."""
    grad = torch.randn(2, *high, dtype=torch.float64)
    x = torch.zeros(2, 1, *low, dtype=torch.float64, requires_grad=True)
    F.interpolate(x, size=grad.shape[-2:], mode="bilinear", align_corners=False)[:, 0].backward(grad)
    torch.testing.assert_close(upsample_bilinear_adjoint(grad, low), x.grad[:, 0], atol=1e-12, rtol=0)


def test_pairwise_costs_equal_the_per_pair_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 50), (torch.rand(3, 50) > 0.5).float()
    focal = pairwise_sigmoid_focal_cost(logits, targets)
    dice = pairwise_dice_cost(logits, targets)
    for i in range(4):
        for j in range(3):
            assert focal[i, j].item() == pytest.approx(sigmoid_focal_loss(logits[i:i + 1], targets[j:j + 1]).item(),
                                                       rel=1e-5)
            assert dice[i, j].item() == pytest.approx(dice_loss(logits[i:i + 1], targets[j:j + 1]).item(), rel=1e-5)


@pytest.mark.parametrize("gamma, soft", [(2.0, False), (1.5, False), (2.0, True)])
def test_fused_pairwise_costs_equal_the_plain_ones(gamma, soft):
    torch.manual_seed(0)
    logits = torch.randn(37, 300) * 4  # 37 rows: several chunks and a ragged last one
    targets = torch.rand(5, 300) if soft else (torch.rand(5, 300) > 0.7).float()
    focal, dice = pairwise_mask_costs(logits, targets, alpha=0.3, gamma=gamma, rows=8)
    torch.testing.assert_close(focal, pairwise_sigmoid_focal_cost(logits, targets, 0.3, gamma), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dice, pairwise_dice_cost(logits, targets), atol=1e-6, rtol=1e-5)


def test_golden_values_for_a_fixed_seed():
    torch.manual_seed(0)
    class_logits = torch.randn(2, 2, 6, 5)
    mask_logits = torch.randn(2, 2, 6, 8, 8)
    masks, labels = random_targets(size=(32, 32), counts=(2, 3), num_labels=4, seed=1)
    loss, terms = MaskFormerLoss(4)(class_logits, mask_logits, masks, labels)
    matches = hungarian_match(class_logits, mask_logits, masks, labels)
    assert [m.tolist() for m in matches[1][0]] == GOLDEN_MATCH
    assert loss.item() == pytest.approx(GOLDEN_LOSS, rel=1e-5)


# Recorded from this implementation (whose final-layer loss equals transformers', see above); a change
# in matching or loss arithmetic shows up here.
GOLDEN_MATCH = [[0, 3], [0, 1]]
GOLDEN_LOSS = 8.963913917541504


def test_matching_alone_equals_matching_in_a_batch():
    torch.manual_seed(0)
    class_logits = torch.randn(3, 2, 6, 5)
    mask_logits = torch.randn(3, 2, 6, 8, 8)
    masks, labels = random_targets(size=(32, 32), counts=(2, 3), num_labels=4)
    batched = hungarian_match(class_logits, mask_logits, masks, labels)
    for b in range(2):
        alone = hungarian_match(class_logits[:, b:b + 1], mask_logits[:, b:b + 1], masks[b:b + 1], labels[b:b + 1])
        for layer in range(3):
            for x, y in zip(batched[layer][b], alone[layer][0]):
                assert torch.equal(x, y)


def test_images_without_segments():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config())
    masks = [torch.zeros(0, 64, 64), (torch.rand(2, 64, 64) > 0.5).float()]
    labels = [torch.zeros(0, dtype=torch.long), torch.tensor([1, 3])]
    out = model(torch.randn(2, 3, 64, 64), mask_labels=masks, class_labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    empty = model(torch.randn(1, 3, 64, 64), mask_labels=masks[:1], class_labels=labels[:1])
    assert torch.isfinite(empty.loss) and empty.loss_dict["loss_mask"].item() == 0.0


def test_too_many_segments_is_a_clear_error():
    model = MaskFormerForUniversalSegmentation(tiny_config(num_queries=3))
    masks, labels = random_targets(batch_size=1, size=(64, 64), counts=(4,), num_labels=4)
    with pytest.raises(ValueError, match="4 ground-truth segments but the model predicts only 3"):
        model(torch.randn(1, 3, 64, 64), mask_labels=masks, class_labels=labels)


def test_label_errors():
    model = MaskFormerForUniversalSegmentation(tiny_config())
    masks, labels = random_targets(batch_size=1, size=(64, 64), counts=(2,), num_labels=4)
    with pytest.raises(ValueError, match="both"):
        model(torch.randn(1, 3, 64, 64), mask_labels=masks)
    with pytest.raises(ValueError, match=r"classes in \[0, 4\)"):
        model(torch.randn(1, 3, 64, 64), mask_labels=masks, class_labels=[torch.tensor([0, 9])])
    with pytest.raises(ValueError, match="one per image"):
        model(torch.randn(2, 3, 64, 64), mask_labels=masks, class_labels=labels)


def test_non_finite_costs_never_crash_the_solver():
    cost = torch.tensor([[float("nan"), 1.0], [float("inf"), 0.5], [2.0, float("-inf")]])
    rows, cols = solve_assignment(cost)
    assert len(rows) == 2 and len(set(cols.tolist())) == 2
    rows, cols = solve_assignment(torch.full((3, 2), float("nan")))
    assert len(rows) == 2


def test_autocast_costs_and_loss_are_fp32():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config())
    masks, labels = random_targets(size=(64, 64), num_labels=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64), mask_labels=masks, class_labels=labels)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_fixed_matching():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(fixed_matching=True, num_queries=4, num_labels=4))
    masks, labels = random_targets(batch_size=1, size=(64, 64), counts=(2,), num_labels=4)
    labels = [torch.tensor([3, 1])]
    matches = model.criterion.match(torch.randn(3, 1, 4, 5), torch.randn(3, 1, 4, 16, 16), masks, labels)
    assert [m.tolist() for m in matches[2][0]] == [[3, 1], [0, 1]]
    out = model(torch.randn(1, 3, 64, 64), mask_labels=masks, class_labels=labels)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="repeats a class"):
        model(torch.randn(1, 3, 64, 64), mask_labels=masks, class_labels=[torch.tensor([1, 1])])


def test_point_mode_trains():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(train_num_points=256))
    masks, labels = random_targets(size=(64, 64), num_labels=4)
    out = model(torch.randn(2, 3, 64, 64), mask_labels=masks, class_labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.model.pixel_decoder.mask_projection.weight.grad.abs().sum() > 0


def test_point_sampling_shortcuts_equal_per_mask_sampling():
    torch.manual_seed(0)
    maps = torch.randn(7, 13, 17)
    coords = torch.rand(50, 2)
    per_mask = point_sample(maps[:, None], coords.expand(7, -1, -1))
    torch.testing.assert_close(point_sample_shared(maps, coords), per_mask, atol=1e-6, rtol=1e-6)
    targets = (torch.rand(3, 40, 31) > 0.5).float()
    index = torch.tensor([2, 0, 2, 2, 1])
    mask_coords = torch.rand(5, 60, 2)
    gathered = point_sample(targets[index][:, None], mask_coords)
    torch.testing.assert_close(sample_targets(targets, index, mask_coords), gathered, atol=1e-6, rtol=1e-6)


def test_explicit_num_masks_scales_the_mask_terms():
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config()).eval()
    pixel_values = torch.randn(2, 3, 64, 64)
    masks, labels = random_targets(size=(64, 64), num_labels=4)  # 7 segments
    local = model(pixel_values, mask_labels=masks, class_labels=labels)
    doubled = model(pixel_values, mask_labels=masks, class_labels=labels, num_masks=14.0)
    torch.testing.assert_close(doubled.loss_dict["loss_mask"] * 2, local.loss_dict["loss_mask"])
    torch.testing.assert_close(doubled.loss_dict["loss_cross_entropy"], local.loss_dict["loss_cross_entropy"])


def test_trainer_finds_the_label_names():
    from transformers.utils import find_labels

    assert set(find_labels(MaskFormerForUniversalSegmentation)) == {"mask_labels", "class_labels"}


def test_loss_gradients_through_matched_logits_equal_the_plain_path():
    """The model recomputes only the matched masks for the loss (projection folded); the loss and
    every parameter gradient equal back-propagating through the full mask logits."""
    torch.manual_seed(0)
    model = MaskFormerForUniversalSegmentation(tiny_config(dropout=0.0)).train()
    pixel_values = torch.randn(2, 3, 64, 96)
    masks, labels = random_targets(size=(64, 96), num_labels=4)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out = model(pixel_values, mask_labels=masks, class_labels=labels)
    fast = grads(out.loss)
    out = model(pixel_values, output_auxiliary_logits=True)
    class_logits = torch.stack([a["class_queries_logits"] for a in out.auxiliary_logits] + [out.class_queries_logits])
    mask_logits = torch.stack([a["masks_queries_logits"] for a in out.auxiliary_logits] + [out.masks_queries_logits])
    plain_loss, _ = model.criterion(class_logits, mask_logits, masks, labels)
    plain = grads(plain_loss)
    assert fast.keys() == plain.keys() and "model.pixel_decoder.mask_projection.weight" in fast
    for name in fast:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
