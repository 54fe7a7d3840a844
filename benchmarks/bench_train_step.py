#!/usr/bin/env python
"""A full training step (forward, loss, backward, AdamW) of ours vs transformers' MaskFormer.

    python benchmarks/bench_train_step.py                   # Swin-T, batch 2, 512x512, 12 segments/image
    python benchmarks/bench_train_step.py --steps 3 --size 256

Variants: ``transformers`` (``use_auxiliary_loss=True``, which needs ``output_hidden_states=True``
to run), ``ours`` (the same weights, converted; deep supervision on, the exact loss) and
``ours-points`` (the point-sampled loss, 112x112 points). All use the same random images and masks.

Each variant runs alone in a fresh process (its own allocator; its max RSS is its peak memory;
a second live process, even idle, slowed every step here by 20-25 %), ``--repeats`` times in
alternating order so that a slower or faster spell of a shared machine affects all variants alike.
Reported: each variant's median step over all repeats, its peak RSS after the timed steps of the
first repeat, and for ours the share of the step spent in matching + loss (forward and backward
of the loss, timed in extra steps afterwards).
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
    cell = max(1, size // 16)
    for _ in range(batch_size):
        ids = torch.randint(0, segments, (size // cell, size // cell), generator=generator)
        ids.view(-1)[:segments] = torch.arange(segments)  # every segment present
        ids = ids.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        mask_labels.append(torch.stack([(ids == k).float() for k in range(segments)]))
        class_labels.append(torch.randperm(150, generator=generator)[:segments])
    return pixel_values, mask_labels, class_labels


def build_all(variants: list[str]) -> dict[str, torch.nn.Module]:
    """The requested variants with identical weights (ours converted from the transformers model)."""
    from transformers import MaskFormerConfig as HFMaskFormerConfig
    from transformers import MaskFormerForInstanceSegmentation, SwinConfig

    from maskformer_hf import convert_from_transformers

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          image_size=224, out_features=["stage1", "stage2", "stage3", "stage4"])
    hf_model = MaskFormerForInstanceSegmentation(
        HFMaskFormerConfig(backbone_config=backbone, num_labels=150, use_auxiliary_loss=True)
    )
    models = {}
    for variant in variants:
        if variant == "transformers":
            models[variant] = hf_model
            continue
        model = convert_from_transformers(hf_model)
        model.config.use_auxiliary_loss = True
        if variant == "ours-points":
            model.criterion.num_points = 112 * 112
        models[variant] = model
    return {name: model.train() for name, model in models.items()}


class Stepper:
    """One variant's training step on a fixed batch."""

    def __init__(self, variant: str, model: torch.nn.Module, batch, precision: str = "fp32") -> None:
        self.variant, self.model, self.batch = variant, model, batch
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.kwargs = {"output_hidden_states": True} if variant == "transformers" else {}

    def __call__(self) -> float:
        pixel_values, mask_labels, class_labels = self.batch
        start = time.perf_counter()
        with self.autocast:
            out = self.model(pixel_values=pixel_values, mask_labels=mask_labels, class_labels=class_labels,
                             **self.kwargs)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def serve(variant: str, batch, precision: str) -> None:
    """Child process: build one variant, then answer the parent's commands on stdin, one JSON line each:
    ``step`` (seconds of one training step), ``memory`` (peak RSS so far, GB), ``loss <n>`` (matching +
    loss seconds over n extra steps)."""
    model = build_all([variant])[variant]
    stepper = Stepper(variant, model, batch, precision)
    stepper()  # warm-up: allocators, AdamW state
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "step":
            answer = {"step_s": stepper()}
        elif command == "memory":
            answer = {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
        elif command == "loss":
            with stepper.autocast:
                answer = {"loss_s": loss_share(model, *batch, int(rest[0]))}
        else:
            return
        print(json.dumps(answer), flush=True)


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


class Child:
    """A variant's own process (its own allocator and peak RSS), driven one command at a time."""

    def __init__(self, args, variant: str) -> None:
        cmd = [sys.executable, __file__, "--serve", variant, "--batch-size", str(args.batch_size), "--size",
               str(args.size), "--segments", str(args.segments), "--precision", args.precision]
        self.variant = variant
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask(None)

    def ask(self, command: str | None) -> dict:
        if command is not None:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.variant} failed (exit code {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def run(args) -> dict:
    """Each variant alone in a fresh process, ``repeats`` times in alternating order; then memory and loss share."""
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    results: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for variant in (args.variants if repeat % 2 == 0 else args.variants[::-1]):
            child = Child(args, variant)  # builds the model and runs one warm-up step
            try:
                times[variant] += [child.ask("step")["step_s"] for _ in range(args.steps)]
                if repeat == 0:
                    results[variant] = child.ask("memory")
                    if variant != "transformers":
                        results[variant].update(child.ask(f"loss {args.steps}"))
            finally:
                child.close()
    for variant, steps in times.items():
        results[variant].update(step_s=statistics.median(steps), steps=steps)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--variants", nargs="+", default=["transformers", "ours", "ours-points"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and repeat")
    parser.add_argument("--repeats", type=int, default=2, help="fresh processes per variant, in alternating order")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--segments", type=int, default=12)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="bf16: every variant under torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train_step.json"))
    args = parser.parse_args()
    if args.serve:  # a variant's process
        serve(args.serve, make_batch(args.batch_size, args.size, args.segments), args.precision)
        return

    results = run(args)
    print(f"training step, Swin-T, batch {args.batch_size}, {args.size}x{args.size}, {args.segments} segments per "
          f"image, deep supervision on, AdamW, {args.precision}; median of {args.repeats} x {args.steps} steps, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
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
