"""MaskFormer web demo (a Hugging Face Space's ``app.py``): segment an image in the browser.

    MASKFORMER_MODEL=demo_output/model python app.py      # or: make app

A thin layer over the library: the model is loaded by :func:`maskformer_hf.segment.load_segmenter`
(a local checkpoint folder or a Hub id; ``MASKFORMER_MODEL``, default ``demo_output/model``, and
editable on the page), inference is :func:`~maskformer_hf.segment.predict`, the picture is
:func:`maskformer_hf.visualize.draw_result` and the table :func:`~maskformer_hf.segment.segments_table`.
The server honours gradio's ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``; analytics are off, so
nothing contacts the internet (unless a Hub id is asked for).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry, no version check

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from maskformer_hf import visualize  # noqa: E402
from maskformer_hf.image_inputs import pil_to_rgb  # noqa: E402
from maskformer_hf.segment import TASKS, load_segmenter, predict, segments_table  # noqa: E402

logger = logging.getLogger("app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
DEFAULT_MODEL = "demo_output/model"
COLUMNS = ["label", "score", "area"]


@functools.lru_cache(maxsize=2)
def _cached_segmenter(model_id: str, device: str | None) -> tuple[Any, Any]:
    logger.info("loading %s", model_id)
    return load_segmenter(model_id, device)


def get_segmenter(model_id: str | None) -> tuple[Any, Any]:
    """``(model, processor)`` of `model_id`, loaded once per id (and ``MASKFORMER_DEVICE``, default
    auto) and then reused: a click must not reload the checkpoint. Raises ``gr.Error`` saying what
    was expected when it cannot be loaded."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise gr.Error("Model: expected a checkpoint folder or a Hub id, got an empty field.")
    try:
        return _cached_segmenter(model_id, os.environ.get("MASKFORMER_DEVICE"))
    except Exception as error:  # from_pretrained raises OSError, ValueError, HFValidationError ...
        raise gr.Error(f"Model {model_id!r} could not be loaded: expected a checkpoint folder (config.json, "
                       f"model weights) or a Hub id ({type(error).__name__}: {error})") from error


def segment_image(image: Image.Image | None, task: str, threshold: float,
                  model_id: str | None) -> tuple[Image.Image, list[list[Any]]]:
    """The page's callback: `image` segmented for `task` by `model_id`. Returns the overlay
    (:func:`~maskformer_hf.visualize.draw_result`) and the table rows ``[label, score, area]``
    of :func:`~maskformer_hf.segment.segments_table` (largest first; score None for semantic)."""
    if image is None:
        raise gr.Error("Image: expected an uploaded image or an example, got none.")
    if not isinstance(image, Image.Image):
        raise gr.Error(f"Image: expected a PIL image, got {type(image).__name__}.")
    if task not in TASKS:
        raise gr.Error(f"Task: expected one of {', '.join(TASKS)}, got {task!r}.")
    if not 0.0 <= float(threshold) <= 1.0:
        raise gr.Error(f"Threshold: expected a number in [0, 1], got {threshold!r}.")
    model, processor = get_segmenter(model_id)
    image = pil_to_rgb(image)  # grey, palette, RGBA and 16-bit uploads (the component keeps their mode)
    result = predict(model, processor, [image], task, threshold=float(threshold))[0]
    id2label = model.config.id2label
    picture = visualize.draw_result(image, result, task, id2label)
    rows = [[row[column] for column in COLUMNS] for row in segments_table(result, task, id2label)]
    return picture, rows


def build_demo(default_model: str | None = None) -> gr.Blocks:
    """The page: model field, image (upload or example), task, threshold, Run; overlay and table.
    `default_model` fills the model field (default: ``MASKFORMER_MODEL``, else ``demo_output/model``)."""
    default_model = default_model or os.environ.get("MASKFORMER_MODEL", DEFAULT_MODEL)
    with gr.Blocks(title="MaskFormer segmentation") as demo:
        gr.Markdown("# MaskFormer segmentation\nUpload an image (or pick an example), choose a task, press Run.")
        with gr.Row():
            with gr.Column():
                model_id = gr.Textbox(value=str(default_model), label="Model (checkpoint folder or Hub id)",
                                      elem_id="model")
                # image_mode=None: the upload keeps its mode, pil_to_rgb converts it (16-bit is scaled, not clipped).
                image = gr.Image(type="pil", image_mode=None, label="Image", sources=["upload", "clipboard"],
                                 elem_id="input-image")
                task = gr.Radio(list(TASKS), value="panoptic", label="Task", elem_id="task")
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Score threshold (instance, panoptic)",
                                      elem_id="threshold")
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Image(type="pil", format="png", label="Segmentation", interactive=False,
                                   elem_id="overlay")
                table = gr.Dataframe(headers=COLUMNS, datatype=["str", "number", "number"], label="Segments",
                                     interactive=False, elem_id="segments")
        examples = sorted(EXAMPLES_DIR.glob("*.png"))
        if examples:
            gr.Examples([[str(path)] for path in examples], inputs=[image], label="Examples")
        run.click(segment_image, inputs=[image, task, threshold, model_id], outputs=[overlay, table])
    return demo


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # server_name / server_port None: gradio reads GRADIO_SERVER_NAME / GRADIO_SERVER_PORT itself.
    build_demo().launch()
