#!/usr/bin/env python
"""Train MaskFormer with accelerate; runs unchanged with python, accelerate launch and torchrun.

    python scripts/train.py --config ade20k-swin-tiny --data_dir /data/ADEChallengeData2016
    accelerate launch scripts/train.py --config coco-panoptic-swin-tiny --data_dir /data/coco
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 scripts/train.py --config demo --max_steps 20

Flags: every field of ``maskformer_hf.training.TrainConfig`` (``python scripts/train.py --help``).
"""

import logging
import sys

from maskformer_hf.cli import run_train, train_parser


def main(argv=None) -> None:
    args = train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_train(args, command=["python scripts/train.py", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
