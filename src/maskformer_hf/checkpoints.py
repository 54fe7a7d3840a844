"""Reading checkpoint files: Hugging Face folders / Hub repositories, and detectron2 weight files.

Nothing here knows about the model, and nothing here imports from this package (only torch,
safetensors, huggingface_hub), so every module of the package can use it without an import circle.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

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
    return torch.load(path, map_location="cpu", weights_only=True)


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


# ---------------------------------------------------------------------------------------------
# detectron2 weight files (``model_final_*.pkl`` / ``.pth``).
_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric")
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2
# What a pickle of numpy arrays in (ordered) dicts needs, and nothing else.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((module, name) for module in _NUMPY_MODULES[1:] for name in ("_reconstruct", "scalar", "_frombuffer")),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes written by Python 3 with protocol 2
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside :data:`_ALLOWED_GLOBALS` (numpy arrays, dicts)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a detectron2 weight file holds only "
                                         f"numpy arrays")
        if module.startswith("numpy.core.") and _NUMPY_2:
            module = module.replace("numpy.core.", "numpy._core.", 1)  # numpy 2 renamed numpy.core
        return super().find_class(module, name)


def _to_tensor(key: str, value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    array = np.asarray(value)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"load_detectron2_state_dict: {key!r} is not a numeric array (dtype {array.dtype})")
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def load_detectron2_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The ``"model"`` state dict of a detectron2 checkpoint, as tensors.

    ``.pkl`` files (the model zoo's ``model_final_*.pkl``) are pickles of
    ``{"model": {key: numpy.ndarray}, "__author__": ..., ...}``; they are read with an unpickler that
    accepts numpy arrays and dicts only, and a warning is logged, since a pickle can run code.
    ``.pth`` files hold ``{"model": {key: torch.Tensor}, ...}`` and are read with
    ``torch.load(weights_only=True)``. Top-level entries other than ``"model"`` are ignored.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"load_detectron2_state_dict: no file {path}")
    if path.endswith(".pkl"):
        logger.warning("reading the pickle file %s: pickle files can run code when loaded, so convert only files "
                       "from a trusted source (loading is restricted to numpy arrays and dicts)", path)
        with open(path, "rb") as f:
            try:
                checkpoint = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as error:
                raise ValueError(f"load_detectron2_state_dict: {path}: {error}") from error
    elif path.endswith(".pth"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"load_detectron2_state_dict: expected a .pkl or .pth file, got {path}")
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"load_detectron2_state_dict: expected a dict with a 'model' state dict in {path}, "
                         f"found {found}")
    return {str(key): _to_tensor(key, value) for key, value in checkpoint["model"].items()}


_MODEL_KEY_PREFIXES = ("backbone.", "sem_seg_head.")  # how every key of a detectron2 MaskFormer starts


def _holds_detectron2_model(pickled: Any) -> bool:
    """Whether a pickle stream (file or bytes) has a ``"model"`` key followed by a detectron2 model key.

    The stream is read opcode by opcode with ``pickletools`` (nothing is executed) and only up to
    that key, which comes before the arrays of all but the first entry.
    """
    seen_model = False
    for _, arg, _ in pickletools.genops(pickled):
        if not isinstance(arg, str):
            continue
        if arg == "model":
            seen_model = True
        elif seen_model and arg.startswith(_MODEL_KEY_PREFIXES):
            return True
    return False


def is_detectron2_checkpoint(path: str | os.PathLike) -> bool:
    """True for a local ``.pkl`` / ``.pth`` file holding a detectron2 ``{"model": {"backbone.*": ...}}`` dict.

    ``.pkl`` files and the pickle inside zip ``.pth`` files are scanned, not loaded.
    """
    path = os.fspath(path)
    if not (path.endswith((".pkl", ".pth")) and os.path.isfile(path)):
        return False
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the object graph is one pickle in the archive
            with zipfile.ZipFile(path) as archive:
                members = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                return bool(members) and _holds_detectron2_model(archive.read(members[0]))
        if path.endswith(".pth"):  # torch's legacy format, several pickles: loaded safely instead
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
            return isinstance(model, Mapping) and any(str(k).startswith(_MODEL_KEY_PREFIXES) for k in model)
        with open(path, "rb") as f:
            return _holds_detectron2_model(f)
    except Exception:  # not a pickle, or a damaged one: not a checkpoint we can read
        return False
