"""Model cards for checkpoints trained here: Hub metadata (``huggingface_hub.ModelCardData``), the
recipe that produced the weights and the metrics they reach."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = """---
{card_data}
---

# {title}

MaskFormer (Cheng et al., *Per-Pixel Classification is Not All You Need for Semantic Segmentation*,
NeurIPS 2021) trained with `maskformer_hf` on **{dataset}** for {steps} steps.

## Use

```python
import maskformer_hf  # registers the model with transformers' Auto classes
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{repo}")
segments = segmenter("image.jpg", subtask="panoptic")
```

## Evaluation ({eval_split} split)

{metrics_table}

## Training recipe

```json
{recipe}
```
"""

HEADLINE = ("mean_iou", "mean_accuracy", "overall_accuracy", "pq", "sq", "rq", "pq_things", "pq_stuff")


def write_model_card(folder: str | Path, config: Any, metrics: dict[str, Any]) -> Path:
    """Write ``folder/README.md`` for a checkpoint trained with ``config`` (a ``TrainConfig``)."""
    folder = Path(folder)
    rows = [(k, metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))]
    table = "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in rows])
    card_data = ModelCardData(library_name="transformers", pipeline_tag="image-segmentation", tags=["maskformer"],
                              license="apache-2.0")
    card = ModelCard(TEMPLATE.format(
        card_data=card_data.to_yaml(), title=f"MaskFormer ({config.model}) on {config.dataset}", dataset=config.dataset,
        steps=config.max_steps, repo=config.hub_model_id or str(folder), eval_split=config.eval_split,
        metrics_table=table if rows else "(no evaluation)", recipe=json.dumps(config.to_dict(), indent=1)))
    path = folder / "README.md"
    card.save(path)
    return path


__all__ = ["write_model_card"]
