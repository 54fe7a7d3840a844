#!/usr/bin/env python
"""Data loading vs training throughput (does the loader keep up with the model?).

    python benchmarks/bench_data.py                 # ADE recipe, 512 crops, 2 workers vs Swin-T at batch 2
    python benchmarks/bench_data.py --size 96 --crop 64 --train-steps 1 --batches 3   # quick

Loader: the synthetic panoptic set written at ``--size`` px (ADE20K layout, read back by the real
loader), the paper's ADE augmentation (scale jitter 0.5-2.0 of ``--crop``, random crop, flip, colour
jitter), the collator (normalise, pad, per-segment masks), ``DataLoader`` with ``--workers``
processes: images per second over ``--batches`` batches after a warm-up batch. Model: a Swin-T
MaskFormer (150 classes, deep supervision) training step (forward, loss, backward, AdamW) on such
batches: images per second. The two are measured one after the other, not concurrently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def loader_throughput(root: Path, crop: int, batch_size: int, workers: int, batches: int) -> tuple[float, list]:
    from maskformer_hf import MaskFormerImageProcessor
    from maskformer_hf.data import get_metadata, load_ade20k
    from maskformer_hf.data.collate import MaskFormerCollator
    from maskformer_hf.data.transforms import SegmentationTransform, ade20k_train_transforms
    from maskformer_hf.training import AugmentedDataset, EpochBatchSampler

    dataset = load_ade20k(root, split="train")
    metadata = get_metadata(dataset)
    data = AugmentedDataset(dataset, SegmentationTransform(metadata, ade20k_train_transforms(crop)), seed=0)
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                         collate_fn=MaskFormerCollator(MaskFormerImageProcessor(), metadata.ignore_index))
    iterator = iter(loader)
    kept = [next(iterator)]  # warm-up: workers start, first batch
    start = time.perf_counter()
    for _ in range(batches):
        kept.append(next(iterator))
    seconds = time.perf_counter() - start
    return batches * batch_size / seconds, kept


def training_throughput(batches: list, steps: int) -> float:
    from transformers import SwinConfig

    from maskformer_hf import MaskFormerConfig, MaskFormerForUniversalSegmentation

    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    num_labels = 1 + max(int(c.max()) for batch in batches for c in batch["class_labels"] if c.numel())
    model = MaskFormerForUniversalSegmentation(MaskFormerConfig(backbone_config=backbone, num_labels=max(150, num_labels)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        out = model(**batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch["pixel_values"].shape[0] / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=640, help="side of the synthetic images")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/data.json"))
    args = parser.parse_args()

    from maskformer_hf.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        roots = write_synthetic_dataset(tmp, num_train=args.images, num_val=2, size=args.size, layouts=("ade20k",))
        loader_ips, batches = loader_throughput(roots["ade20k"], args.crop, args.batch_size, args.workers,
                                                args.batches)
    train_ips = training_throughput(batches, args.train_steps)
    print(f"data loading ({args.workers} workers, ADE augmentation, {args.crop}x{args.crop} crops, batch "
          f"{args.batch_size}): {loader_ips:.1f} images/s")
    print(f"training (Swin-T MaskFormer, deep supervision, AdamW, same batches): {train_ips:.2f} images/s")
    print(f"loader / model: {loader_ips / train_ips:.1f}x")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"loader_images_per_s": loader_ips, "train_images_per_s": train_ips,
                                       "ratio": loader_ips / train_ips, **{k: v for k, v in vars(args).items()
                                                                          if k != "output"}}, indent=1))


if __name__ == "__main__":
    main()
