"""ImageNet weights load through the library routes (here from local files: no network)."""

import timm
import torch
from transformers import AutoBackbone, ResNetConfig, SwinConfig, SwinModel

from maskformer_hf import MaskFormerForUniversalSegmentation

from conftest import STAGES, tiny_config


def test_timm_pretrained_weights_are_loaded_and_kept(tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    config = tiny_config(use_pretrained_backbone=True, backbone_kwargs={"pretrained_cfg_overlay": {"file": str(path)}})
    model = MaskFormerForUniversalSegmentation(config)
    body = model.model.backbone.body
    torch.testing.assert_close(body.conv1.weight, reference.conv1.weight, atol=0, rtol=0)
    torch.testing.assert_close(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight, atol=0, rtol=0)


def test_swin_imagenet_checkpoint_loads_into_maskformer_swin(tmp_path):
    torch.manual_seed(4)
    swin_config = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4)
    swin = SwinModel(swin_config)
    swin.save_pretrained(tmp_path)  # keys as on the Hub (microsoft/swin-*)
    config = tiny_config(backbone=str(tmp_path), use_pretrained_backbone=True,
                         backbone_config={**swin_config.to_dict(), "model_type": "maskformer-swin"})
    model = MaskFormerForUniversalSegmentation(config)
    body = model.model.backbone.body.model
    torch.testing.assert_close(body.embeddings.patch_embeddings.projection.weight,
                               swin.embeddings.patch_embeddings.projection.weight, atol=0, rtol=0)
    ours = body.encoder.layers[2].blocks[0].attention.self.relative_position_bias_table
    theirs = swin.state_dict()["encoder.layers.2.blocks.0.attention.relative_position_bias.relative_position_bias_table"]
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_transformers_resnet_pretrained(tmp_path):
    torch.manual_seed(5)
    resnet_config = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 1, 1, 1],
                                 layer_type="bottleneck", out_features=STAGES)
    reference = AutoBackbone.from_config(resnet_config)
    reference.save_pretrained(tmp_path)
    config = tiny_config(backbone=str(tmp_path), use_pretrained_backbone=True, backbone_config=resnet_config)
    model = MaskFormerForUniversalSegmentation(config)
    for (name, ours), theirs in zip(model.model.backbone.body.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0, msg=name)


def test_loading_a_checkpoint_never_fetches_imagenet_weights_again(tmp_path, monkeypatch):
    from transformers import AutoModelForUniversalSegmentation

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    config = tiny_config(use_pretrained_backbone=True, backbone_kwargs={"pretrained_cfg_overlay": {"file": str(path)}})
    model = MaskFormerForUniversalSegmentation(config).eval()
    model.save_pretrained(tmp_path / "ckpt")
    path.unlink()  # the ImageNet file is gone: loading must not need it
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for loader in (MaskFormerForUniversalSegmentation, AutoModelForUniversalSegmentation):
        loaded = loader.from_pretrained(tmp_path / "ckpt")
        torch.testing.assert_close(loaded.model.backbone.body.conv1.weight, model.model.backbone.body.conv1.weight,
                                   atol=0, rtol=0)
