#!/usr/bin/env python
"""A full training step (forward, loss, backward, AdamW) of ours vs transformers' MaskFormer.

    python benchmarks/bench_train_step.py                   # Swin-T, batch 2, 512x512, 12 segments/image
    python benchmarks/bench_train_step.py --steps 3 --size 256

Each variant runs in its own process (so that peak memory, the process's max RSS, is its own):
``transformers`` (``use_auxiliary_loss=True``, which needs ``output_hidden_states=True`` to run),
``ours`` (same weights, converted; deep supervision on, exact loss) and ``ours-points`` (the
point-sampled loss, 112x112 points). The same random images and masks are used by all. Reported:
median step time, peak RSS, and for ours the share of the step spent in matching + loss (forward
and backward of the loss, timed by running the step once more with the loss's inputs detached).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def make_batch(batch_size: int, size: int, segments: int, seed: int = 0):
    """Images and `segments` non-overlapping rectangular masks per image with random classes."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, size, size, generator=generator)
    mask_labels, class_labels = [], []
    for _ in range(batch_size):
        ids = torch.randint(0, segments, (size // 32, size // 32), generator=generator)
        ids.view(-1)[:segments] = torch.arange(segments)  # every segment present
        ids = ids.repeat_interleave(32, 0).repeat_interleave(32, 1)
        mask_labels.append(torch.stack([(ids == k).float() for k in range(segments)]))
        class_labels.append(torch.randperm(150, generator=generator)[:segments])
    return pixel_values, mask_labels, class_labels


def build(variant: str):
    from transformers import MaskFormerConfig as HFMaskFormerConfig
    from transformers import MaskFormerForInstanceSegmentation, SwinConfig

    from maskformer_hf import convert_from_transformers

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          image_size=224, out_features=["stage1", "stage2", "stage3", "stage4"])
    hf_model = MaskFormerForInstanceSegmentation(
        HFMaskFormerConfig(backbone_config=backbone, num_labels=150, use_auxiliary_loss=True)
    )
    if variant == "transformers":
        return hf_model
    model = convert_from_transformers(hf_model)
    del hf_model
    model.config.use_auxiliary_loss = True
    if variant == "ours-points":
        model.criterion.num_points = 112 * 112
    return model


def run_variant(variant: str, steps: int, batch_size: int, size: int, segments: int) -> dict:
    model = build(variant).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixel_values, mask_labels, class_labels = make_batch(batch_size, size, segments)
    kwargs = {"output_hidden_states": True} if variant == "transformers" else {}

    def step() -> float:
        start = time.perf_counter()
        out = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels, **kwargs)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times = [step() for _ in range(steps + 1)][1:]  # the first step warms up allocators and AdamW state
    result = {"variant": variant, "step_s": statistics.median(times), "steps": times}
    if variant != "transformers":
        result["loss_s"] = loss_share(model, pixel_values, mask_labels, class_labels, steps)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return result


def loss_share(model, pixel_values, mask_labels, class_labels, steps: int) -> float:
    """Seconds of matching + loss inside a full step of ours (forward, loss, backward, AdamW).

    Forward: the time spent in ``model.criterion`` minus the mask head's recomputation of the
    matched masks that it calls back (the model's work). Backward: ``autograd.grad`` of the loss
    w.r.t. its inputs (class logits, matched mask logits), i.e. the loss's own part of the backward
    pass (the fused mask loss computes its gradient in forward; its backward only scales it).
    """
    import maskformer_hf.modeling_maskformer as modeling

    spent, loss_inputs = {}, []
    criterion_forward, head = model.criterion.forward, modeling.matched_mask_logits

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            spent[key] += time.perf_counter() - start
            if key == "head":
                loss_inputs.append(result)
            return result
        return wrapper

    model.criterion.forward = timed("criterion", criterion_forward)
    modeling.matched_mask_logits = timed("head", head)
    hook = model.class_predictor.register_forward_hook(lambda module, args, output: loss_inputs.append(output))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    timings = []
    try:
        for _ in range(steps):
            spent.update(criterion=0.0, head=0.0)
            loss_inputs.clear()
            out = model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels)
            start = time.perf_counter()
            torch.autograd.grad(out.loss, loss_inputs, retain_graph=True)
            loss_backward = time.perf_counter() - start
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            timings.append(spent["criterion"] - spent["head"] + loss_backward)
    finally:
        del model.criterion.forward
        modeling.matched_mask_logits = head
        hook.remove()
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=["transformers", "ours", "ours-points"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(run_variant(args.variant, args.steps, args.batch_size, args.size, args.segments)))
        return

    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--size", str(args.size), "--segments", str(args.segments)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"training step, Swin-T, batch {args.batch_size}, {args.size}x{args.size}, {args.segments} segments per "
          f"image, deep supervision on, AdamW; {args.steps} timed steps (median), torch {torch.__version__}")
    base = results.get("transformers")
    for variant, r in results.items():
        line = f"{variant:>13}: {r['step_s']:.2f} s/step, peak RSS {r['peak_rss_gb']:.2f} GB"
        if base and variant != "transformers":
            line += (f", {base['step_s'] / r['step_s']:.2f}x faster, memory {r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x"
                     f" of transformers")
        if "loss_s" in r:
            line += f"; matching + loss {r['loss_s']:.2f} s = {r['loss_s'] / r['step_s']:.0%} of the step"
        print(line)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
