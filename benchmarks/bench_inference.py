#!/usr/bin/env python
"""Every inference mode of ``maskformer_hf.optimize`` against transformers' forward, fp32 and bf16.

    python benchmarks/bench_inference.py                          # Swin-T and R50, 512x512, batch 1 and 4
    python benchmarks/bench_inference.py --backbones swin-tiny --batch-sizes 1 --repeats 5
    python benchmarks/bench_inference.py --modes compile --batch-sizes 1 --trained   # torch.compile alone

Per backbone: a randomly initialised transformers ``MaskFormerForInstanceSegmentation`` (150
classes), converted to ours with ``convert_from_transformers`` (same weights). Per batch size and
mode: the median latency of ``--repeats`` calls, timed interleaved with transformers' fp32 forward
and transformers under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (one round = one call of
each), so drifts of the machine hit all alike; the speed-ups are ratios of those medians. Inputs are
synthetic scenes (textured things over stuff regions, ``maskformer_hf.data.synthetic``) drawn at
512 x 512 and put through ``MaskFormerImageProcessor`` (resize, ImageNet normalisation, padding
mask), the same batch for every mode. Quality against our fp32 output on that batch: the largest
mask-logit difference and the share of pixels whose semantic class (the processor's
``post_process_semantic_segmentation`` at the image size) is the same; ``classes`` says how many
classes the fp32 maps hold (a random model's maps hold few, which makes agreement easy: the
figure is true of these weights). Peak memory: the process's resident-set high-water mark during
one call (reset through ``/proc/self/clear_refs``, after ``malloc_trim``) minus the resident set
before it. Set-up time
(export, quantisation, compilation) is reported apart. Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import MaskFormerConfig as HFMaskFormerConfig
from transformers import MaskFormerForInstanceSegmentation

from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor, convert_from_transformers
from maskformer_hf.data.synthetic import generate_example
from maskformer_hf.optimize import MODES, _cpu_name, mode_available, optimize
from maskformer_hf.precision import cpu_supports_bf16

from bench_forward import BACKBONES  # the same Swin-T and R50 configs (this folder is on sys.path)
from memory import peak_extra_memory


def scenes(batch_size: int, size: int, processor: MaskFormerImageProcessor, seed: int = 7) -> dict:
    images = [generate_example(np.random.default_rng((seed, i)), size=size)[0] for i in range(batch_size)]
    return processor(images=images, return_tensors="pt")


def bench(name: str, size: int, batch_sizes: list[int], modes: list[str], repeats: int) -> list[dict]:
    """`name`: a key of BACKBONES (random weights, against transformers' MaskFormer on the same
    weights), or ``trained:PATH``, a trained checkpoint of ours (no transformers counterpart)."""
    torch.manual_seed(0)
    if name.startswith("trained:"):
        hf_model = None
        model = MaskFormerForUniversalSegmentation.from_pretrained(name.split(":", 1)[1]).eval()
    else:
        hf_model = MaskFormerForInstanceSegmentation(
            HFMaskFormerConfig(backbone_config=BACKBONES[name](), num_labels=150)).eval()
        model = convert_from_transformers(hf_model).eval()
    processor = MaskFormerImageProcessor(size={"shortest_edge": size, "longest_edge": 4 * size})
    built, setup = {}, {}
    for mode in modes:
        available, why = mode_available(mode)
        if not available:
            print(f"  {mode}: skipped ({why})")
            continue
        start = time.perf_counter()
        built[mode] = optimize(model, mode)
        setup[mode] = time.perf_counter() - start
    rows = []
    for batch_size in batch_sizes:
        inputs = scenes(batch_size, size, processor)
        pixel_values, pixel_mask = inputs["pixel_values"], inputs["pixel_mask"]
        sizes = [(size, size)] * batch_size

        def theirs():
            return hf_model(pixel_values=pixel_values, pixel_mask=pixel_mask)

        def theirs_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return hf_model(pixel_values=pixel_values, pixel_mask=pixel_mask)

        calls = {}
        if hf_model is not None:
            calls["transformers fp32"] = theirs
            if cpu_supports_bf16():
                calls["transformers bf16"] = theirs_bf16
        for mode, fast in built.items():
            calls[mode] = lambda fast=fast: fast(pixel_values=pixel_values, pixel_mask=pixel_mask)
        times: dict[str, list[float]] = {key: [] for key in calls}
        memory = {}
        with torch.inference_mode():
            start = time.perf_counter()
            for key, fn in calls.items():  # warm-up (twice: OpenVINO compiles a static shape at its 2nd sight)
                fn()
                fn()
                memory[key] = peak_extra_memory(fn)
            compile_s = time.perf_counter() - start
            for _ in range(repeats):
                for key, fn in calls.items():
                    start = time.perf_counter()
                    fn()
                    times[key].append(time.perf_counter() - start)
            reference = built["fp32"](pixel_values=pixel_values, pixel_mask=pixel_mask)
            ref_maps = processor.post_process_semantic_segmentation(reference, target_sizes=sizes)
            median = {key: statistics.median(v) for key, v in times.items()}
            for key in calls:
                row = {"backbone": name, "batch_size": batch_size, "size": size, "mode": key,
                       "median_s": median[key], "min_s": min(times[key]),
                       "speedup_vs_transformers_fp32": (median["transformers fp32"] / median[key]
                                                        if "transformers fp32" in median else None),
                       "speedup_vs_transformers_bf16": (median["transformers bf16"] / median[key]
                                                        if "transformers bf16" in median else None),
                       "peak_extra_memory_mb": None if memory[key] is None else memory[key] / 2**20,
                       "setup_s": setup.get(key)}
                if key in built:  # transformers' rows: timing only
                    out = calls[key]()
                    maps = processor.post_process_semantic_segmentation(out, target_sizes=sizes)
                    row["max_mask_logit_diff"] = (out.masks_queries_logits.float()
                                                  - reference.masks_queries_logits).abs().max().item()
                    row["semantic_agreement"] = float(np.mean([(a == b).float().mean().item()
                                                               for a, b in zip(maps, ref_maps)]))
                    row["classes"] = len(torch.unique(torch.stack(ref_maps)))
                rows.append(row)
                print(_line(row), flush=True)
        print(f"  (warm-up of all modes at batch {batch_size}: {compile_s:.0f} s)")
    return rows


def _line(row: dict) -> str:
    fp32, bf16 = row["speedup_vs_transformers_fp32"], row["speedup_vs_transformers_bf16"]
    parts = [f"{row['backbone']} b{row['batch_size']} {row['mode']:<18}", f"{row['median_s'] * 1000:7.0f} ms",
             f"x{fp32:.2f} vs tf fp32" if fp32 else "",
             f"x{bf16:.2f} vs tf bf16" if bf16 else "", f"mem +{row['peak_extra_memory_mb'] or 0:.0f} MB"]
    if "semantic_agreement" in row:
        parts.append(f"agree {100 * row['semantic_agreement']:.2f}% ({row['classes']} cl.), "
                     f"max diff {row['max_mask_logit_diff']:.2g}")
    if row["setup_s"] is not None:
        parts.append(f"setup {row['setup_s']:.1f} s")
    return "  ".join(p for p in parts if p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--trained-size", type=int, default=256, help="image size for the trained checkpoints")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trained", nargs="*", default=["demo_output/model"],
                        help="trained checkpoints of ours to measure too (agreement on real predictions); "
                             "missing folders are skipped")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/inference.json"))
    args = parser.parse_args()
    modes = ["fp32"] + [m for m in args.modes if m != "fp32"]  # the quality reference
    print(f"{_cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bf16: {cpu_supports_bf16()}")
    rows = []
    for name in args.backbones:
        rows += bench(name, args.size, args.batch_sizes, modes, args.repeats)
    for path in args.trained:
        if Path(path, "config.json").is_file():
            rows += bench(f"trained:{path}", args.trained_size, args.batch_sizes, modes, args.repeats)
        else:
            print(f"--trained {path}: no checkpoint there (make demo trains one); skipped")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(),
                                                   "platform": platform.platform()}, "rows": rows}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
