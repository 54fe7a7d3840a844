import pytest
from transformers import AutoConfig

from maskformer_hf import PRESETS, MaskFormerConfig


def test_defaults_are_the_papers():
    config = MaskFormerConfig()
    assert (config.num_queries, config.hidden_size, config.decoder_layers) == (100, 256, 6)
    assert (config.decoder_attention_heads, config.decoder_ffn_dim, config.dropout) == (8, 2048, 0.1)
    assert (config.encoder_layers, config.fpn_feature_size, config.mask_feature_size) == (0, 256, 256)
    assert (config.cross_entropy_weight, config.mask_weight, config.dice_weight) == (1.0, 20.0, 1.0)
    assert config.no_object_weight == 0.1 and config.use_auxiliary_loss is True
    assert config.num_auxiliary_outputs == 5
    assert config.model_type == "maskformer_hf"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build(name):
    config = MaskFormerConfig.from_preset(name, num_labels=150)
    assert config.num_labels == 150
    if name.startswith("swin"):
        assert config.backbone_config.model_type == "maskformer-swin"
    assert config.encoder_layers == (6 if name.endswith("6enc") else 0)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'swin-huge'"):
        MaskFormerConfig.from_preset("swin-huge")


@pytest.mark.parametrize(
    "field, value",
    [("num_queries", 0), ("hidden_size", 0), ("decoder_attention_heads", 0), ("decoder_attention_heads", 7), ("decoder_layers", 0),
     ("encoder_layers", -1), ("fpn_feature_size", 100), ("dropout", 1.5), ("activation_function", "tanhh"),
     ("mask_weight", -1.0), ("num_queries", 2.5)],
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"MaskFormerConfig\.{field}"):
        MaskFormerConfig(**{field: value})


def test_backbone_config_dict_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        MaskFormerConfig(backbone_config={"embed_dim": 96})
    with pytest.raises(TypeError, match="backbone_config"):
        MaskFormerConfig(backbone_config=3)


def test_round_trip_with_backbone_config(tmp_path):
    config = MaskFormerConfig.from_preset("swin-tiny", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MaskFormerConfig)
    assert loaded.backbone_config.model_type == "maskformer-swin"
    assert loaded.backbone_config.depths == [2, 2, 6, 2]
    assert loaded.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert loaded.id2label == {0: "a", 1: "b", 2: "c"}
    drop = lambda d: {k: v for k, v in d.items() if k != "_name_or_path"}  # noqa: E731
    assert drop(loaded.to_dict()) == drop(config.to_dict())


def test_plain_swin_backbone_config_becomes_maskformer_swin():
    config = MaskFormerConfig(backbone_config={"model_type": "swin", "embed_dim": 48, "depths": [1, 1, 1, 1],
                                               "num_heads": [1, 1, 1, 1]})
    assert config.backbone_config.model_type == "maskformer-swin"
    assert config.backbone_config.embed_dim == 48


def test_resizing_the_classes_drops_stale_stuff_ids(tmp_path):
    """from_pretrained(..., num_labels=N) replaces the classes: a checkpoint's stuff_label_ids of the old
    classes are dropped (they used to fail validation, or silently fuse the wrong classes), and ones
    passed with the new classes are kept."""
    from maskformer_hf import MaskFormerForUniversalSegmentation

    from conftest import tiny_config

    MaskFormerForUniversalSegmentation(tiny_config(num_labels=6, stuff_label_ids=[3, 4, 5])).save_pretrained(tmp_path)
    fewer = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, num_labels=4, ignore_mismatched_sizes=True)
    assert fewer.config.num_labels == 4 and fewer.config.stuff_label_ids is None
    assert fewer.class_predictor.out_features == 5
    more = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, num_labels=12, ignore_mismatched_sizes=True,
                                                              stuff_label_ids=[10, 11])
    assert more.config.num_labels == 12 and more.config.stuff_label_ids == [10, 11]
    renamed = MaskFormerForUniversalSegmentation.from_pretrained(  # transformers' idiom: new id2label only
        tmp_path, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2}, ignore_mismatched_sizes=True)
    assert renamed.config.num_labels == 3 and renamed.config.stuff_label_ids is None
    renamed.save_pretrained(tmp_path / "renamed")  # used to fail validation here, at the end of a fine-tune
    same = MaskFormerForUniversalSegmentation.from_pretrained(tmp_path)
    assert same.config.stuff_label_ids == [3, 4, 5]
    with pytest.raises(ValueError, match="stuff_label_ids"):
        MaskFormerForUniversalSegmentation.from_pretrained(tmp_path, stuff_label_ids=[9])
    with pytest.raises(ValueError, match="stuff_label_ids"):
        MaskFormerConfig(num_labels=4, stuff_label_ids=[5])
