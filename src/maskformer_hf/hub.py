"""Publishing a checkpoint folder to the Hugging Face Hub in one commit, card included.

``push_to_hub(folder, repo_id)`` is what ``maskformer-hf push`` and ``train --push_to_hub`` run:

1. the folder must be a maskformer_hf checkpoint (``config.json`` + safetensors weights), the repo id
   ``owner/name``, and a token must be at hand (argument, ``HF_TOKEN`` or ``hf auth login``);
2. the model card is refreshed: the generated block and metadata (``model-index`` from
   ``metrics.json``, ...) are rewritten, the text the user wrote outside the block is kept, whether
   it was written in the local README.md or on the Hub (edited differently in both: an error);
3. weights, ``config.json``, ``preprocessor_config.json``, the card and the code files saved with
   the model go up in a single ``create_commit``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from .model_card import checkpoint_card, choose_base, merge_cards

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_TYPE = "maskformer_hf"
# Never published: training state and scratch files that may sit in a model folder.
IGNORE = ["checkpoints/*", "*.partial", ".cache/*", ".git/*", "__pycache__/*", "*.pyc"]


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is ``owner/name`` (letters, digits, ``-_.``), else a ValueError."""
    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith(".git"):
        raise ValueError(f"repo id: expected 'owner/name' (e.g. 'my-org/maskformer-ade20k'), got {repo_id!r}")
    return repo_id


def check_token(token: str | None = None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN`` / the saved login; none: a ValueError."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: run `hf auth login`, set HF_TOKEN, or pass token=/--token "
                         "(a token with write access to the repository)")
    return token


def check_checkpoint(folder: str | Path) -> Path:
    """``folder`` if it holds a maskformer_hf checkpoint (config.json + safetensors), else a ValueError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder (expected a checkpoint folder written by save_pretrained)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: not a checkpoint folder (no config.json); expected the output of "
                         "save_pretrained, e.g. <output_dir>/model after training")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config_path}: not a valid config ({error})") from None
    if model_type != MODEL_TYPE:
        raise ValueError(f"{folder}: config.json has model_type {model_type!r}, expected {MODEL_TYPE!r} "
                         "(convert a transformers or detectron2 checkpoint first: maskformer-hf convert SRC DST)")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        raise ValueError(f"{folder}: no model.safetensors (the weights); save the model with save_pretrained")
    if not (folder / "preprocessor_config.json").is_file():
        logger.warning("%s has no preprocessor_config.json: pipeline() will not find an image processor", folder)
    return folder


def _remote_card(api: HfApi, repo_id: str, revision: str | None) -> ModelCard | None:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=revision))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        return None  # a new repository, or one without a card yet
    except Exception as error:  # the Hub unreachable for reading: say so, and publish the local card
        logger.warning("could not read the card of %s on the Hub (%s: %s); edits made there, if any, are not "
                       "merged into the card pushed now", repo_id, type(error).__name__, error)
        return None


def refresh_card(folder: Path, repo_id: str, remote: ModelCard | None, **card_kwargs: Any) -> ModelCard:
    """Rewrite ``folder/README.md`` as it will be published; returns it."""
    path = folder / "README.md"
    local = ModelCard.load(path) if path.is_file() else None
    generated = checkpoint_card(folder, repo_id=repo_id, **card_kwargs)
    card = merge_cards(generated, choose_base(local, remote, generated))
    card.save(path)
    return card


def folder_operations(folder: Path) -> list[CommitOperationAdd]:
    """One addition per file of ``folder`` (sub-folders too), minus :data:`IGNORE`."""
    from huggingface_hub.utils import filter_repo_objects

    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
            for name in filter_repo_objects(names, ignore_patterns=IGNORE)]


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None, create_pr: bool = False,
                license: str | None = None) -> Any:
    """Publish a checkpoint folder in one commit (see the module docstring); returns the ``CommitInfo``."""
    check_repo_id(repo_id)
    folder = check_checkpoint(folder)
    api = HfApi(token=check_token(token))
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    refresh_card(folder, repo_id, _remote_card(api, repo_id, revision), license=license)
    # create_commit, not upload_folder: with hf_xet installed, upload_folder may split a folder into
    # several commits, and a half-published checkpoint (weights without their card) must never exist.
    info = api.create_commit(
        repo_id, folder_operations(folder), revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"Upload MaskFormer checkpoint ({folder.name}) with maskformer_hf")
    logger.info("pushed %s to %s in one commit: %s", folder, repo_id, getattr(info, "commit_url", info))
    return info


__all__ = ["check_checkpoint", "check_repo_id", "check_token", "push_to_hub", "refresh_card"]
