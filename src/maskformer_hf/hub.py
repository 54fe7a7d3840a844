"""Publishing a checkpoint folder to the Hugging Face Hub in one commit, card included.

``push_to_hub(folder, repo_id)`` is what ``maskformer-hf push`` and ``train --push_to_hub`` run:

1. the folder must be a maskformer_hf checkpoint (``config.json`` + safetensors weights), the repo id
   ``owner/name``, and a token must be at hand (argument, ``HF_TOKEN`` or ``hf auth login``);
2. the model card is refreshed: the generated block and metadata (``model-index`` from
   ``metrics.json``, ...) are rewritten, the text the user wrote outside the block is kept, whether
   it was written in the local README.md or on the Hub since the last write (each card records a
   fingerprint of its user part; edited differently in both: an error);
3. weights, ``config.json``, ``preprocessor_config.json``, the card and the code files saved with
   the model go up in a single ``create_commit``, which also deletes weight files of the repository
   that the folder no longer has (sharded weights replaced by one file, or the other way round).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard

from .model_card import checkpoint_card, choose_base, merge_cards

logger = logging.getLogger(__name__)

OWNER_NAME = re.compile(r"[^/\s]+/[^/\s]+")
MODEL_TYPE = "maskformer_hf"
# Never published: training state and scratch files that may sit in a model folder.
IGNORE = ["checkpoints/*", "*.partial", ".cache/*", ".git/*", "__pycache__/*", "*.pyc"]
# Weight files: on the Hub, those the folder no longer has are deleted in the same commit (a push of
# unsharded weights over sharded ones must not leave the old index behind for from_pretrained to read).
WEIGHTS = re.compile(r"^(model(-\d+-of-\d+)?\.safetensors(\.index\.json)?|pytorch_model.*\.bin(\.index\.json)?)$")


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is ``owner/name`` as the Hub accepts it, else a ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    expected = "expected 'owner/name' (e.g. 'my-org/maskformer-ade20k')"
    if not isinstance(repo_id, str) or not OWNER_NAME.fullmatch(repo_id):
        raise ValueError(f"repo id: {expected}, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo id: {expected}, got {repo_id!r} ({error})") from None
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


def _remote_state(api: HfApi, repo_id: str, revision: str | None) -> tuple[ModelCard | None, list[str]]:
    """The repository's card and file names as they are now (None, []: a new repository or branch)."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    missing = (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
    try:
        files = list(api.list_repo_files(repo_id, revision=revision))
    except missing:
        return None, []
    except Exception as error:  # the Hub unreadable: say what is not done, publish the local card
        logger.warning("could not list the files of %s on the Hub (%s: %s): card edits made there are not merged "
                       "and stale weight files are not removed", repo_id, type(error).__name__, error)
        return None, []
    if "README.md" not in files:
        return None, files
    try:
        return ModelCard.load(api.hf_hub_download(repo_id, "README.md", revision=revision)), files
    except missing:
        return None, files


def refresh_card(folder: Path, repo_id: str, remote: ModelCard | None, license: str | None = None) -> ModelCard:
    """Rewrite ``folder/README.md`` as it will be published; returns it."""
    path = folder / "README.md"
    local = ModelCard.load(path) if path.is_file() else None
    generated = checkpoint_card(folder, repo_id=repo_id, license=license)
    base = choose_base(local, remote)
    other = remote if base is local else local
    card = merge_cards(generated, base, replace=("license",) if license else (), other=other)
    card.save(path)
    return card


def _prepare(call: Any, *args: Any, **kwargs: Any) -> None:
    """Create the repository / branch. The Hub's refusals (401, 403, ...) stop the push; a failure to
    reach it is left to the commit, which then reports it (or succeeds, when it is reached another way)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        call(*args, **kwargs)
    except HfHubHTTPError:
        raise
    except Exception as error:
        logger.warning("%s failed (%s: %s); trying the commit anyway", call.__name__, type(error).__name__, error)


def folder_operations(folder: Path, remote_files: list[str] = ()) -> list[CommitOperationAdd | CommitOperationDelete]:
    """One addition per file of ``folder`` (sub-folders too), minus :data:`IGNORE`; one deletion per
    weight file of the repository that the folder does not have."""
    from huggingface_hub.utils import filter_repo_objects

    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    names = list(filter_repo_objects(names, ignore_patterns=IGNORE))
    stale = sorted(name for name in remote_files if WEIGHTS.match(name) and name not in names)
    return [*(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in names),
            *(CommitOperationDelete(path_in_repo=name) for name in stale)]


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None, create_pr: bool = False,
                license: str | None = None) -> Any:
    """Publish a checkpoint folder in one commit (see the module docstring); returns the ``CommitInfo``."""
    check_repo_id(repo_id)
    folder = check_checkpoint(folder)
    api = HfApi(token=check_token(token))
    _prepare(api.create_repo, repo_id, private=private, exist_ok=True)
    if revision and revision != "main":
        _prepare(api.create_branch, repo_id, branch=revision, exist_ok=True)
    remote_card, remote_files = _remote_state(api, repo_id, revision)
    refresh_card(folder, repo_id, remote_card, license=license)
    # create_commit, not upload_folder: with hf_xet installed, upload_folder may split a folder into
    # several commits, and a half-published checkpoint (weights without their card) must never exist.
    info = api.create_commit(
        repo_id, folder_operations(folder, remote_files), revision=revision, create_pr=create_pr,
        commit_message=commit_message or f"Upload MaskFormer checkpoint ({folder.resolve().name}) with maskformer_hf")
    logger.info("pushed %s to %s in one commit: %s", folder, repo_id, getattr(info, "commit_url", info))
    return info


__all__ = ["check_checkpoint", "check_repo_id", "check_token", "push_to_hub", "refresh_card"]
