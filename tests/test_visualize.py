"""maskformer_hf.visualize: colours keyed by class, exact blending, outlines, instances told apart,
legends, side by side, and the pipeline's output drawn like the processor's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskformer_hf import visualize


def test_colours_are_keyed_by_class_id_only():
    assert np.array_equal(visualize.palette(10)[3], visualize.class_colors([3])[0])
    assert np.array_equal(visualize.palette(200)[:10], visualize.palette(10))
    colours = visualize.palette(150)
    assert len({tuple(c) for c in colours}) == 150  # ADE20K's 150 classes: all different
    neighbours = np.abs(colours[1:].astype(int) - colours[:-1].astype(int)).sum(1)
    assert neighbours.min() > 60  # consecutive ids are easy to tell apart
    base = visualize.class_colors([5])[0]
    shades = {tuple(visualize.shade(base, k)) for k in range(5)}
    assert len(shades) == 5 and tuple(visualize.shade(base, 0)) == tuple(base)


def test_overlay_blends_exactly_and_outlines_segments():
    image = np.full((6, 8, 3), 100, np.uint8)
    segments = np.zeros((6, 8), np.int64)
    segments[:, 4:] = 7  # id 0 has no colour: untouched
    picture = visualize.overlay(image, segments, {7: (200, 0, 50)}, alpha=0.5, outline=None)
    assert (picture[:, :4] == 100).all()
    assert (picture[:, 4:] == np.array([150, 50, 75])).all()
    outlined = visualize.overlay(image, segments, {7: (200, 0, 50)}, alpha=0.5)
    assert (outlined[:, 3] == 255).all() and (outlined[:, 4:] == np.array([150, 50, 75])).all()
    assert visualize.boundaries(segments).sum() == 6
    with pytest.raises(ValueError, match="image's size"):
        visualize.overlay(image, segments[:5], {7: (1, 2, 3)})
    with pytest.raises(TypeError, match="integer ids"):
        visualize.overlay(image, segments.astype(float), {7: (1, 2, 3)})
    with pytest.raises(ValueError, match="alpha"):
        visualize.overlay(image, segments, {}, alpha=2)


def panoptic_case():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    segmentation = np.zeros((40, 60), np.int32)
    segmentation[:20], segmentation[20:] = 1, 2
    segmentation[5:15, 5:20], segmentation[5:15, 30:45] = 3, 4  # two instances of class 0
    info = [{"id": 1, "label_id": 3, "score": 0.9}, {"id": 2, "label_id": 4, "score": 0.8},
            {"id": 3, "label_id": 0, "score": 0.95}, {"id": 4, "label_id": 0, "score": 0.7}]
    return image, segmentation, info


def test_panoptic_instances_of_one_class_get_different_shades_and_a_legend():
    image, segmentation, info = panoptic_case()
    names = {0: "ball", 3: "sky", 4: "grass"}
    picture = np.asarray(visualize.draw_panoptic(image, torch.from_numpy(segmentation), info, names))
    assert picture.shape[1] == 60 and picture.shape[0] > 40  # a legend below
    inside_a, inside_b = picture[10, 10], picture[10, 37]
    assert not np.array_equal(inside_a, inside_b)
    bare = np.asarray(visualize.draw_panoptic(image, segmentation, info, names, show_legend=False))
    assert bare.shape == (40, 60, 3) and np.array_equal(bare, picture[:40])
    assert (bare[19, 25] == 255).all()  # the border between the two stuff bands
    # The legend names what the picture shows (segments_info entries without pixels are left out) ...
    absent = info + [{"id": 99, "label_id": 7, "score": 0.5}]
    assert np.array_equal(np.asarray(visualize.draw_panoptic(image, segmentation, absent, names)), picture)
    # ... and many classes wrap into more legend rows.
    stripes = np.repeat(np.arange(1, 41), 2)[None, :60].repeat(40, 0)  # 30 segments of 2 columns
    many = [{"id": k + 1, "label_id": k, "score": 1.0} for k in range(40)]
    assert np.asarray(visualize.draw_panoptic(image, stripes, many)).shape[0] > picture.shape[0]
    with pytest.raises(ValueError, match=r"segments_info\[0\]: expected a dict with 'id' and 'label_id'"):
        visualize.draw_panoptic(image, segmentation, [{"id": 1, "category_id": 3}])
    with pytest.raises(TypeError, match="panoptic result is a dict"):
        visualize.draw_result(image, segmentation, "panoptic")
    with pytest.raises(TypeError, match="semantic result is a"):
        visualize.draw_result(image, {"segmentation": segmentation, "segments_info": info}, "semantic")


def test_pipeline_output_is_drawn_like_the_processors():
    image, segmentation, info = panoptic_case()
    names = {0: "ball", 3: "sky", 4: "grass"}
    segments = [{"label": names[s["label_id"]], "score": s["score"],
                 "mask": Image.fromarray(((segmentation == s["id"]) * 255).astype(np.uint8))} for s in info]
    direct = visualize.draw_panoptic(image, segmentation, info, names)
    through_pipeline = visualize.draw_segments(image, segments, label2id={v: k for k, v in names.items()})
    assert np.array_equal(np.asarray(direct), np.asarray(through_pipeline))


def test_semantic_and_instance_pictures():
    image, segmentation, info = panoptic_case()
    classes = np.where(segmentation >= 3, 0, segmentation + 2)
    semantic = np.asarray(visualize.draw_semantic(image, classes, {0: "ball", 3: "sky", 4: "grass"},
                                                  show_legend=False))
    colour = visualize.class_colors([3])[0].astype(np.float32)
    expected = np.round(0.45 * image[2, 2].astype(np.float32) + 0.55 * colour)
    assert np.array_equal(semantic[2, 2], expected.astype(np.uint8))
    ignored = np.asarray(visualize.draw_semantic(image, np.full((40, 60), 255), ignore_index=255, show_legend=False))
    assert np.array_equal(ignored, image)
    # Instance: a map (-1 = background) and binary maps give the same picture when masks do not overlap.
    instance_map = np.full((40, 60), -1)
    instance_map[5:15, 5:20], instance_map[5:15, 30:45] = 0, 1
    instances = [{"id": 0, "label_id": 0, "score": 0.95}, {"id": 1, "label_id": 0, "score": 0.7}]
    binary = np.stack([instance_map == 0, instance_map == 1]).astype(np.float32)
    from_map = np.asarray(visualize.draw_instance(image, instance_map, instances, {0: "ball"}))
    from_binary = np.asarray(visualize.draw_instance(image, torch.from_numpy(binary), instances, {0: "ball"}))
    assert np.array_equal(from_map, from_binary)
    assert np.array_equal(from_map[30:40, 50:60], image[30:40, 50:60])  # background untouched
    with pytest.raises(ValueError, match="binary maps"):
        visualize.draw_instance(image, binary[:1], instances)
    with pytest.raises(ValueError, match="task"):
        visualize.draw_result(image, classes, "depth")


def test_side_by_side_and_image_inputs():
    a = np.zeros((30, 40, 3), np.uint8)
    b = Image.new("L", (20, 50), 128)
    c = torch.zeros(3, 10, 10, dtype=torch.uint8)
    panel = visualize.side_by_side([a, b, c], ["image", "truth", "prediction"], gap=5)
    assert panel.width == 40 + 20 + 10 + 2 * 5 and panel.height > 50
    assert np.array_equal(np.asarray(panel)[-50:, 45:65], np.full((50, 20, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="titles"):
        visualize.side_by_side([a, b], ["one"])
    assert visualize.to_rgb_array(np.ones((4, 4), np.float32)).max() == 255
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # 16-bit grey: scaled, not clipped
    assert visualize.to_rgb_array(deep).max() == 255
    assert visualize.to_rgb_array(Image.fromarray(np.full((4, 4), 257 * 100, np.uint16))).max() == 100
    with pytest.raises(TypeError, match="uint8 or float"):
        visualize.to_rgb_array(np.ones((4, 4, 3), np.int32))
