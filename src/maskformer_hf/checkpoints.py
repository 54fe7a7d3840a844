"""Reading checkpoint files: Hugging Face folders and Hub repositories (safetensors, or ``.bin``
through ``torch.load(weights_only=True)``, which refuses anything but tensors). The original detectron2 files
(pickles) are read by :mod:`maskformer_hf.conversion_detectron2` alone.

Nothing here knows about the model, and nothing here imports from this package (only torch,
safetensors, huggingface_hub), so every module of the package can use it without an import circle.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoints (a local folder or a Hub repository).
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def _resolve(name_or_path: str | os.PathLike, filename: str, **hub_kwargs: Any) -> str | None:
    """Local path of ``filename`` in a checkpoint folder or Hub repo (downloaded), or None if it has none."""
    path = os.path.join(str(name_or_path), hub_kwargs.get("subfolder") or "", filename)
    if os.path.isdir(str(name_or_path)):
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only",
                                                          "force_download", "subfolder")}
    try:
        return hf_hub_download(str(name_or_path), filename, **kwargs)
    except EntryNotFoundError:
        return None


def _load_weight_file(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle of anything but tensors (code, objects) is refused, never run
        raise ValueError(f"{path}: not a weights file torch.load(weights_only=True) accepts "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                         "save weights with safetensors") from error


def load_checkpoint_state_dict(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Tensor]:
    """The raw state dict of a checkpoint folder or Hub repo (safetensors or .bin, sharded or not)."""
    for filename in _WEIGHT_FILES:
        path = _resolve(name_or_path, filename, **hub_kwargs)
        if path is None:
            continue
        if not path.endswith(".json"):
            return _load_weight_file(path)
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state_dict: dict[str, Tensor] = {}
        for shard in shards:
            state_dict.update(_load_weight_file(_resolve(name_or_path, shard, **hub_kwargs)))
        return state_dict
    raise ValueError(f"load_checkpoint_state_dict: no weights ({', '.join(_WEIGHT_FILES)}) in {name_or_path}")


def load_checkpoint_config(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict[str, Any] | None:
    """The ``config.json`` of a checkpoint as a dict, or None if it has none."""
    try:
        path = _resolve(name_or_path, "config.json", **hub_kwargs)
    except Exception:  # not a folder and not reachable on the Hub: let the caller report it
        return None
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)
