"""Safe loading: safetensors by default, ``torch.load(weights_only=True)`` everywhere, pickle only in
the explicit original-checkpoint converter, and a checkpoint of ours never needs (nor runs)
``trust_remote_code`` where the package is installed."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageSegmentation, pipeline

from conftest import tiny_config
from maskformer_hf import MaskFormerForUniversalSegmentation, MaskFormerImageProcessor
from maskformer_hf.checkpoints import load_checkpoint_state_dict

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "maskformer_hf"
UNPICKLING_ALLOWED = {"conversion_detectron2.py"}  # the original (detectron2) checkpoint converter, and only it
RISKY_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"}


def _calls(tree: ast.AST, dotted: str):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            yield node


def test_the_package_loads_nothing_unsafely():
    """An AST scan of every module: each ``torch.load`` passes ``weights_only=True``; pickle (and its
    relatives) are imported only by the detectron2 converter; nothing asks for ``trust_remote_code=True``,
    ``weights_only=False`` or ``allow_pickle=True``; no ``eval``/``exec``."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30
    torch_loads = 0
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(PACKAGE)
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{where}:{call.lineno}: torch.load without weights_only=True"
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                risky = {n.split(".")[0] for n in names} & RISKY_MODULES
                assert not risky or path.name in UNPICKLING_ALLOWED, f"{where}:{node.lineno}: imports {risky}"
            if isinstance(node, ast.keyword) and node.arg in ("trust_remote_code", "allow_pickle", "weights_only"):
                unsafe = node.value.value is (node.arg != "weights_only") if isinstance(node.value, ast.Constant) \
                    else True
                assert not unsafe, f"{where}:{node.value.lineno}: {node.arg}={ast.unparse(node.value)}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("eval", "exec"):
                raise AssertionError(f"{where}:{node.lineno}: {ast.unparse(node.func)}")
    assert torch_loads >= 2  # the scan sees the calls it checks (checkpoints.py, the converter)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("safe") / "model"
    MaskFormerForUniversalSegmentation(tiny_config()).save_pretrained(folder)
    MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


def test_weights_are_saved_as_safetensors(checkpoint):
    assert (checkpoint / "model.safetensors").is_file()
    assert not list(checkpoint.glob("*.bin")) and not list(checkpoint.glob("*.pt*"))


def test_our_checkpoints_never_run_the_code_saved_beside_them(checkpoint, tmp_path):
    """The folder carries code for ``trust_remote_code`` users without the package; with it installed,
    the Auto classes and the pipeline use the package's classes without being asked to trust anything.
    The saved copies are replaced by code that raises: nothing may run them."""
    folder = tmp_path / "tampered"
    folder.mkdir()
    copies = []
    for item in checkpoint.iterdir():
        target = folder / item.name
        if item.suffix == ".py":
            target.write_text("raise RuntimeError('the saved code ran')\n")
            copies.append(item.name)
        else:
            target.write_bytes(item.read_bytes())
    assert copies, "the checkpoint is expected to carry its code (auto_map)"
    model = AutoModelForImageSegmentation.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(model) is MaskFormerForUniversalSegmentation and type(processor) is MaskFormerImageProcessor
    segmenter = pipeline("image-segmentation", model=str(folder))
    assert type(segmenter.model) is MaskFormerForUniversalSegmentation


class _Payload:
    """Pickles into a call of ``os.system``: what a malicious ``.bin`` holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_pickle_is_refused_without_running(checkpoint, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_bytes((checkpoint / "config.json").read_bytes())
    marker = tmp_path / "payload-ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Payload(marker)}, f)
    with pytest.raises(ValueError, match=r"pytorch_model.bin.*weights_only|weights_only.*pytorch_model.bin"):
        load_checkpoint_state_dict(folder)
    with pytest.raises(Exception):
        MaskFormerForUniversalSegmentation.from_pretrained(folder)
    assert not marker.exists()
