"""Publishing: `maskformer-hf push`, `train --push_to_hub` and `maskformer-hf card`, with the Hub
faked at ``HfApi``'s HTTP calls (tests/fake_hub.py); everything above them — building the commit,
``ModelCard`` reading the card back — is the real code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from maskformer_hf import MaskFormerForUniversalSegmentation
from maskformer_hf.cli import main as cli_main
from maskformer_hf.hub import push_to_hub
from maskformer_hf.model_card import BEGIN, END, merge_cards, write_model_card
from maskformer_hf.train_loop import train

from fake_hub import FakeHub
from test_train_script import tiny_recipe

REQUIRED = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    fake = FakeHub(tmp_path / "hub")
    fake.install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    return fake


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 4-step training run of a tiny model on synthetic data: the real `output_dir/model`."""
    config = tiny_recipe(tmp_path_factory.mktemp("hub") / "x")
    train(config)
    return Path(config.output_dir)


@pytest.fixture
def model_dir(trained_run, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(trained_run / "model", folder)
    return folder


def card_metrics(card: ModelCard) -> dict[str, float]:
    return {r.metric_type: r.metric_value for r in card.data.eval_results}


def test_training_saves_what_the_card_is_made_of(model_dir):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    info = json.loads((model_dir / "training_info.json").read_text())
    assert info["steps"] == 4 and info["wall_time_seconds"] > 0
    assert ("CPU only" in info["hardware"] or "×" in info["hardware"]) and "1 process" in info["hardware"]
    assert info["command"].startswith("maskformer-hf train") and "--max_steps 4" in info["command"]
    card = ModelCard.load(model_dir / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.library_name == "transformers"
    values = card_metrics(card)
    for key in ("mean_iou", "pq", "sq", "rq"):
        assert values[key] == pytest.approx(metrics[key])
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert "max_steps: 4" in card.text and info["command"] in card.text and "Intended use and limitations" in card.text


def test_push_is_one_commit_and_the_hub_copy_loads_to_the_same_logits(hub, model_dir, tmp_path):
    assert cli_main(["push", str(model_dir), "--repo-id", "me/tiny-maskformer", "--private"]) == 0
    assert len(hub.commits) == 1 and hub.private("me/tiny-maskformer") is True
    files = hub.commits[0]["files"]
    assert REQUIRED <= set(files)
    assert not any(name.startswith("checkpoints/") for name in files)
    served = hub.folder("me/tiny-maskformer")  # the repository as the Hub serves it
    card = ModelCard.load(served / "README.md")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert card_metrics(card)["mean_iou"] == pytest.approx(metrics["mean_iou"])
    assert "me/tiny-maskformer" in card.text  # the snippets name the repository
    pixel_values = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = MaskFormerForUniversalSegmentation.from_pretrained(model_dir).eval()(pixel_values=pixel_values)
        after = MaskFormerForUniversalSegmentation.from_pretrained(served).eval()(pixel_values=pixel_values)
    assert torch.equal(before.class_queries_logits, after.class_queries_logits)
    assert torch.equal(before.masks_queries_logits, after.masks_queries_logits)


def test_second_push_updates_metrics_and_keeps_the_users_edits(hub, model_dir):
    push_to_hub(model_dir, "me/tiny")
    # The user edits the card on the Hub, outside the generated block, and adds a metadata key.
    remote = ModelCard(hub.file("me/tiny", "README.md").decode())
    remote.text = remote.text + "\n## Notes from the team\n\nKeep me: fine-tuned for the warehouse cameras.\n"
    remote.data.language = ["en"]
    hub.put("me/tiny", "README.md", str(remote).encode())
    # Training went on: new metrics.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    metrics["mean_iou"], metrics["pq"] = 0.6125, 0.4375
    (model_dir / "metrics.json").write_text(json.dumps(metrics))
    push_to_hub(model_dir, "me/tiny", commit_message="Second round")
    assert len(hub.commits) == 2 and hub.commits[1]["message"] == "Second round"
    assert "README.md" in hub.commits[1]["files"]
    card = ModelCard(hub.file("me/tiny", "README.md").decode())
    assert "Keep me: fine-tuned for the warehouse cameras." in card.text
    assert card.data.language == ["en"]
    assert card_metrics(card)["mean_iou"] == pytest.approx(0.6125) and card_metrics(card)["pq"] == pytest.approx(0.4375)
    assert "0.6125" in card.text and card.text.count(BEGIN) == 1 and card.text.count(END) == 1
    # The local card is what was published.
    assert ModelCard.load(model_dir / "README.md").text == card.text


def test_local_and_hub_edits_that_disagree_are_an_error_not_a_loss(hub, model_dir):
    push_to_hub(model_dir, "me/tiny")
    remote = ModelCard(hub.file("me/tiny", "README.md").decode())
    remote.text += "\nedited on the Hub\n"
    hub.put("me/tiny", "README.md", str(remote).encode())
    local = ModelCard.load(model_dir / "README.md")
    local.text += "\nedited locally\n"
    local.save(model_dir / "README.md")
    with pytest.raises(ValueError, match="edited both"):
        push_to_hub(model_dir, "me/tiny")
    assert len(hub.commits) == 1 and "edited locally" in (model_dir / "README.md").read_text()


def test_local_edits_are_pushed(hub, model_dir):
    local = ModelCard.load(model_dir / "README.md")
    local.text = local.text.replace("## Intended use and limitations", "## Intended use and limitations\n\nOnly shapes.")
    local.save(model_dir / "README.md")
    push_to_hub(model_dir, "me/tiny", revision="v1")
    assert hub.commits[0]["revision"] == "v1"
    assert "Only shapes." in hub.file("me/tiny", "README.md", revision="v1").decode()


@pytest.mark.parametrize("problem, message", [
    ("repo", "expected 'owner/name'"), ("token", "no Hugging Face token"), ("folder", "no config.json"),
    ("weights", "no model.safetensors"), ("foreign", "model_type"),
])
def test_push_errors(hub, model_dir, monkeypatch, tmp_path, capsys, problem, message):
    repo_id, folder = "me/tiny", model_dir
    if problem == "repo":
        repo_id = "tiny-without-owner"
    elif problem == "token":
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    elif problem == "folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif problem == "weights":
        (model_dir / "model.safetensors").unlink()
    else:
        config = json.loads((model_dir / "config.json").read_text())
        (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "maskformer"}))
    with pytest.raises(ValueError, match=message):
        push_to_hub(folder, repo_id)
    assert cli_main(["push", str(folder), "--repo-id", repo_id]) == 2
    assert message in capsys.readouterr().err
    assert hub.commits == []


def test_train_push_to_hub_is_the_same_single_commit(hub, tmp_path):
    config = tiny_recipe(tmp_path, max_steps=2, push_to_hub=True, hub_model_id="me/trained")
    metrics = train(config)
    assert len(hub.commits) == 1
    assert REQUIRED | {"metrics.json", "training_info.json"} <= set(hub.commits[0]["files"])
    card = ModelCard(hub.file("me/trained", "README.md").decode())
    assert card_metrics(card)["mean_iou"] == pytest.approx(float(metrics["mean_iou"]))


def test_train_push_without_a_repo_id_fails_before_training(hub, tmp_path):
    for hub_model_id, message in [(None, "set hub_model_id"), ("no-owner", "owner/name")]:
        config = tiny_recipe(tmp_path, push_to_hub=True, hub_model_id=hub_model_id)
        with pytest.raises(ValueError, match=message):
            train(config)
        assert not (Path(config.output_dir) / "checkpoints").exists()


def test_card_command_rewrites_metrics_and_keeps_user_text(model_dir, trained_run, capsys):
    path = model_dir / "README.md"
    card = ModelCard.load(path)
    card.text = "Our own introduction, above the block.\n" + card.text + "\nAnd a closing line.\n"
    card.save(path)
    (model_dir / "metrics.json").unlink()  # `card` then reads the run's metrics.json, one folder up
    shutil.copy(trained_run / "metrics.json", model_dir.parent / "metrics.json")
    report = {"model": "x", "dataset": "synthetic", "split": "test", "tta": True, "mean_iou": 0.375}
    (model_dir.parent / "report.json").write_text(json.dumps(report))
    assert cli_main(["card", str(model_dir), "--metrics", str(model_dir.parent / "report.json")]) == 0
    rewritten = ModelCard.load(path)
    assert rewritten.text.startswith("Our own introduction") and "And a closing line." in rewritten.text
    (result,) = rewritten.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("mean_iou", 0.375, "test")
    assert result.metric_args == {"test_time_augmentation": "multi-scale + flip"} and "multi-scale" in result.metric_name
    assert json.loads((model_dir / "metrics.json").read_text()) == report  # --metrics: now the folder's own
    (model_dir / "metrics.json").unlink()
    assert cli_main(["card", str(model_dir)]) == 0  # without metrics.json in the folder: the run's ../metrics.json
    expected = json.loads((trained_run / "metrics.json").read_text())
    assert card_metrics(ModelCard.load(path))["pq"] == pytest.approx(expected["pq"])
    assert cli_main(["card", str(model_dir.parent / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_a_card_written_by_hand_is_kept_whole(model_dir):
    path = model_dir / "README.md"
    path.write_text("---\nlicense: mit\n---\n# My model\n\nHand-written.\n")
    write_model_card(model_dir)
    card = ModelCard.load(path)
    assert card.data.license == "mit" and "Hand-written." in card.text and BEGIN in card.text
    assert card.data.eval_results  # the metrics are added
    assert merge_cards(card, card).text == card.text  # idempotent


def test_push_as_a_pull_request(hub, model_dir):
    assert cli_main(["push", str(model_dir), "--repo-id", "me/tiny", "--create-pr", "--commit-message", "Proposal"]) == 0
    (commit,) = hub.commits
    assert commit["create_pr"] is True and commit["message"] == "Proposal" and commit["revision"] == "refs/pr/1"
    assert not (hub.folder("me/tiny") / "README.md").exists()  # main is untouched until the PR is merged


def test_edit_push_edit_push_keeps_every_edit(hub, model_dir):
    """Edits made in turn, locally and on the Hub, each pushed: none is lost, and none is a conflict."""
    def edit_local(line):
        card = ModelCard.load(model_dir / "README.md")
        card.text += f"\n{line}\n"
        card.save(model_dir / "README.md")

    edit_local("first local note")
    push_to_hub(model_dir, "me/tiny")
    edit_local("second local note")
    push_to_hub(model_dir, "me/tiny")
    remote = ModelCard(hub.file("me/tiny", "README.md").decode())
    remote.text += "\nnote made on the Hub\n"
    hub.put("me/tiny", "README.md", str(remote).encode())
    push_to_hub(model_dir, "me/tiny")
    edit_local("third local note")
    push_to_hub(model_dir, "me/tiny")
    text = hub.file("me/tiny", "README.md").decode()
    for line in ("first local note", "second local note", "note made on the Hub", "third local note"):
        assert text.count(line) == 1, line
    assert len(hub.commits) == 4


def test_a_push_replaces_weight_files_the_folder_no_longer_has(hub, model_dir):
    model = MaskFormerForUniversalSegmentation.from_pretrained(model_dir)
    push_to_hub(model_dir, "me/tiny")
    (model_dir / "model.safetensors").unlink()
    model.save_pretrained(model_dir, max_shard_size="200KB")  # now sharded
    shards = sorted(p.name for p in model_dir.glob("model-*.safetensors"))
    assert len(shards) > 1 and (model_dir / "model.safetensors.index.json").is_file()
    push_to_hub(model_dir, "me/tiny")
    assert hub.commits[1]["deleted"] == ["model.safetensors"]
    served = hub.folder("me/tiny")
    assert not (served / "model.safetensors").exists() and sorted(p.name for p in served.glob("model-*")) == shards
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.eval()(pixel_values=pixel_values).masks_queries_logits
        actual = MaskFormerForUniversalSegmentation.from_pretrained(served).eval()(pixel_values=pixel_values)
    assert torch.equal(actual.masks_queries_logits, expected)
    for path in model_dir.glob("model*.safetensors*"):  # and back to one file: the shards and index go
        path.unlink()
    model.save_pretrained(model_dir)
    push_to_hub(model_dir, "me/tiny")
    assert sorted(hub.commits[2]["deleted"]) == sorted(shards + ["model.safetensors.index.json"])


def test_explicit_license_and_user_metadata(hub, model_dir):
    push_to_hub(model_dir, "me/tiny")
    remote = ModelCard(hub.file("me/tiny", "README.md").decode())
    remote.data.datasets = ["me/warehouse-images"]  # the generator knows no Hub dataset for synthetic data
    hub.put("me/tiny", "README.md", str(remote).encode())
    assert cli_main(["push", str(model_dir), "--repo-id", "me/tiny", "--license", "mit"]) == 0
    card = ModelCard(hub.file("me/tiny", "README.md").decode())
    assert card.data.license == "mit" and card.data.datasets == ["me/warehouse-images"]


def test_card_metrics_are_the_ones_a_later_push_publishes(hub, model_dir, tmp_path):
    report = tmp_path / "evaluation.json"
    report.write_text(json.dumps({"dataset": "synthetic", "split": "test", "tta": False, "mean_iou": 0.8125}))
    assert cli_main(["card", str(model_dir), "--metrics", str(report)]) == 0
    assert json.loads((model_dir / "metrics.json").read_text())["mean_iou"] == 0.8125
    push_to_hub(model_dir, "me/tiny")
    assert card_metrics(ModelCard(hub.file("me/tiny", "README.md").decode())) == {"mean_iou": 0.8125}


@pytest.mark.parametrize("repo_id", ["me/a--b", "mé/modèle", "me/x\n", "a/b/c", "me/", "/x", "me/-x", "", None])
def test_repo_ids_the_hub_rejects_are_rejected_before_anything_is_sent(hub, model_dir, repo_id):
    with pytest.raises(ValueError, match="expected 'owner/name'"):
        push_to_hub(model_dir, repo_id)
    assert hub.commits == []


def test_a_refused_push_is_a_message_not_a_traceback(hub, model_dir, monkeypatch, capsys):
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def refuse(api, repo_id, operations, **kwargs):
        url = f"https://huggingface.co/api/models/{repo_id}/commit/main"
        raise HfHubHTTPError("401 Unauthorized: invalid token",
                             response=httpx2.Response(401, request=httpx2.Request("POST", url)))

    monkeypatch.setattr(HfApi, "create_commit", refuse)
    assert cli_main(["push", str(model_dir), "--repo-id", "me/tiny"]) == 1
    assert "the Hub refused or failed the push to me/tiny" in capsys.readouterr().err


def test_push_of_a_run_whose_model_folder_has_no_metrics_file(hub, trained_run, tmp_path):
    """Runs saved before metrics.json sat beside the weights: the run's own metrics.json is used."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    (run / "model" / "metrics.json").unlink()
    (run / "model" / "README.md").unlink()
    push_to_hub(run / "model", "me/old-run")
    expected = json.loads((trained_run / "metrics.json").read_text())
    assert card_metrics(ModelCard(hub.file("me/old-run", "README.md").decode()))["pq"] == pytest.approx(expected["pq"])
