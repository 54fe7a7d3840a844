#!/usr/bin/env python
"""Forward latency of our MaskFormer vs transformers' on the same weights, plus parity at real sizes.

    python benchmarks/bench_forward.py                 # Swin-T and R50, 512x512, batch 1, CPU fp32
    python benchmarks/bench_forward.py --repeats 3     # quicker

For each backbone: build a randomly initialised transformers ``MaskFormerForInstanceSegmentation``
(150 classes), convert it with ``convert_from_transformers`` (same weights), check parity of both
outputs at 512x512 and at a size that is not a multiple of 32, then time both forwards interleaved
(``torch.inference_mode``, fp32) and report medians, the ratio, FLOPs counted with
``torch.utils.flop_counter`` and the achieved GFLOP/s against this machine's measured fp32 peak of
``torch.mm`` (the BLAS; oneDNN's convolutions, and our linears that run through them, can exceed it). Ours under bf16 autocast is timed too (with its largest mask-logit deviation from fp32).
Run on an idle machine: anything else on the cores ruins the timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import MaskFormerConfig as HFMaskFormerConfig
from transformers import MaskFormerForInstanceSegmentation, ResNetConfig, SwinConfig

from maskformer_hf import convert_from_transformers
from maskformer_hf.precision import cpu_supports_bf16

STAGES = ["stage1", "stage2", "stage3", "stage4"]
BACKBONES = {
    "swin-tiny": lambda: SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                    image_size=224, out_features=STAGES),
    "resnet50": lambda: ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3],
                                     layer_type="bottleneck", out_features=STAGES),
}


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n x n matmul on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def parity(hf_model, model, size) -> dict:
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 3, *size)
    with torch.inference_mode():
        theirs, ours = hf_model(pixel_values=pixel_values), model(pixel_values=pixel_values)
    return {
        "size": list(size),
        "class_max_abs_diff": (theirs.class_queries_logits - ours.class_queries_logits).abs().max().item(),
        "mask_max_abs_diff": (theirs.masks_queries_logits - ours.masks_queries_logits).abs().max().item(),
    }


def bench(name: str, size: int, repeats: int, peak: float) -> dict:
    torch.manual_seed(0)
    hf_config = HFMaskFormerConfig(backbone_config=BACKBONES[name](), num_labels=150)
    hf_model = MaskFormerForInstanceSegmentation(hf_config).eval()
    model = convert_from_transformers(hf_model).eval()
    checks = [parity(hf_model, model, (size, size)), parity(hf_model, model, (size - 35, size + 77))]

    pixel_values = torch.randn(1, 3, size, size)
    run_theirs = lambda: hf_model(pixel_values=pixel_values)  # noqa: E731
    run_ours = lambda: model(pixel_values=pixel_values)  # noqa: E731

    def run_ours_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(pixel_values=pixel_values)

    bf16 = cpu_supports_bf16()
    runs = {"transformers": run_theirs, "ours": run_ours, **({"ours_bf16": run_ours_bf16} if bf16 else {})}
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():  # the FLOP counter's module tracker does not run under inference_mode
        flops = {"transformers": count_flops(run_theirs), "ours": count_flops(run_ours)}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(repeats):  # interleaved, so that drifts of the machine hit both alike
            for key, fn in runs.items():
                times[key].append(_time(fn))
        bf16_dev = None
        if bf16:
            bf16_dev = (run_ours_bf16().masks_queries_logits.float() - run_ours().masks_queries_logits).abs().max()
            bf16_dev = bf16_dev.item()
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "backbone": name,
        "input": [1, 3, size, size],
        "parity": checks,
        "median_s": median,
        "min_s": {k: min(v) for k, v in times.items()},
        "speedup_vs_transformers": median["transformers"] / median["ours"],
        "speedup_bf16_vs_transformers_fp32": median["transformers"] / median["ours_bf16"] if bf16 else None,
        "bf16_max_mask_logit_deviation": bf16_dev,
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "achieved_gflops": {k: flops[k] / median[k] / 1e9 for k in flops},
        "matmul_peak_gflops": peak,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/forward.json"))
    args = parser.parse_args()

    peak = matmul_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32 torch.mm peak {peak:.0f} GFLOP/s")
    results = []
    for name in args.backbones:
        r = bench(name, args.size, args.repeats, peak)
        results.append(r)
        print(f"\n== {name} {args.size}x{args.size} batch 1, {r['parameters_m']:.1f}M parameters")
        for check in r["parity"]:
            print(f"parity {check['size']}: class max|diff| {check['class_max_abs_diff']:.2e}, "
                  f"mask max|diff| {check['mask_max_abs_diff']:.2e}")
        for key in ("transformers", "ours"):
            print(f"{key:>13}: median {r['median_s'][key]:.3f} s (min {r['min_s'][key]:.3f}), "
                  f"{r['gflop'][key]:.1f} GFLOP, {r['achieved_gflops'][key]:.0f} GFLOP/s "
                  f"= {r['achieved_gflops'][key] / peak:.0%} of torch.mm's peak")
        print(f"speed-up ours/transformers (fp32, median): {r['speedup_vs_transformers']:.2f}x")
        if r["speedup_bf16_vs_transformers_fp32"] is None:
            print("ours bf16: skipped, this CPU has no native bf16 (autocast would emulate it, far slower)")
        else:
            print(f"ours bf16: median {r['median_s']['ours_bf16']:.3f} s, "
                  f"{r['speedup_bf16_vs_transformers_fp32']:.2f}x transformers fp32 "
                  f"(max mask-logit deviation from fp32 {r['bf16_max_mask_logit_deviation']:.3f})")
        bad = [c for c in r["parity"] if max(c["class_max_abs_diff"], c["mask_max_abs_diff"]) > 1e-4]
        if bad:
            raise SystemExit(f"parity FAILED for {name}: {bad}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
