"""The web demo (``app.py``): its callback is the library's predict / draw_result / segments_table,
its bundled examples are what ``scripts/make_examples.py`` writes, and in a real browser the page
shows exactly those results."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from conftest import scene
from maskformer_hf import visualize
from maskformer_hf.segment import TASKS, load_image, load_segmenter, predict, segments_table

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000  # the longest wait for the page (a loaded 2-core machine); no timing is asserted


def load_file(name: str, path: Path):
    """A Python file outside the package (``app.py``, a script) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app():
    return load_file("maskformer_demo_app", ROOT / "app.py")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    """A 70x50 scene (neither side a multiple of 32, so padding and resizing back matter)."""
    path = tmp_path_factory.mktemp("app-images") / "scene.png"
    Image.fromarray(scene(50, 70, 14)[0]).save(path)
    return path


def expected_result(checkpoint: Path, image: Image.Image, task: str, threshold: float = 0.5):
    """What the library gives for `image`, computed here without the app: (overlay array, rows)."""
    model, processor = load_segmenter(checkpoint)  # the device the app picks too (auto)
    result = predict(model, processor, [image], task, threshold=threshold)[0]
    picture = visualize.draw_result(image, result, task, model.config.id2label)
    return np.asarray(picture), segments_table(result, task, model.config.id2label)


def as_rows(table: list[dict]) -> list[list]:
    return [[row["label"], row["score"], row["area"]] for row in table]


# ---------------------------------------------------------------------------------------------
# Bundled examples
# ---------------------------------------------------------------------------------------------
def test_bundled_examples_are_what_the_script_writes(tmp_path):
    script = load_file("make_examples", ROOT / "scripts" / "make_examples.py")
    script.main(["--out", str(tmp_path)])  # in-process: a subprocess would spend seconds importing torch again
    committed = sorted(p.name for p in (ROOT / "assets" / "examples").glob("*.png"))
    assert committed == ["synthetic_0.png", "synthetic_1.png", "synthetic_2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (ROOT / "assets" / "examples" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# The callback, without a browser
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_callback_is_the_librarys_result(app, trained_checkpoint, image_path, task):
    image = load_image(image_path)
    picture, rows = app.segment_image(image, task, 0.5, str(trained_checkpoint))
    expected_picture, expected_table = expected_result(trained_checkpoint, image, task)
    assert isinstance(picture, Image.Image)
    assert np.array_equal(np.asarray(picture), expected_picture)
    assert rows == as_rows(expected_table)
    assert len(rows) >= 2  # the tiny trained model finds several segments: the comparison means something
    if task == "semantic":
        assert all(row[1] is None for row in rows)


def test_callback_converts_16_bit_grey_like_load_image(app, trained_checkpoint, tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(scene(50, 70, 11)[0][..., 1].astype(np.uint16) * 257).save(path)
    with Image.open(path) as opened:  # what gr.Image(type="pil", image_mode=None) hands over: mode I;16
        opened.load()
        picture, rows = app.segment_image(opened, "panoptic", 0.5, str(trained_checkpoint))
    expected_picture, expected_table = expected_result(trained_checkpoint, load_image(path), "panoptic")
    assert np.array_equal(np.asarray(picture), expected_picture) and rows == as_rows(expected_table)


def test_model_is_loaded_once_per_id(app, trained_checkpoint, image_path, monkeypatch):
    calls = []

    def counting_loader(model_id, device):
        calls.append(model_id)
        return load_segmenter(model_id, device)

    monkeypatch.setattr(app, "load_segmenter", counting_loader)
    app._cached_segmenter.cache_clear()
    image = load_image(image_path)
    for task in ("panoptic", "semantic"):
        app.segment_image(image, task, 0.5, str(trained_checkpoint))
    app.segment_image(image, "panoptic", 0.5, f"  {trained_checkpoint}  ")  # the field's spaces do not matter
    assert calls == [str(trained_checkpoint)]
    app._cached_segmenter.cache_clear()  # do not leave the counting loader's model cached for other tests


def test_callback_errors_say_what_was_expected(app, trained_checkpoint, image_path, tmp_path):
    import gradio as gr

    image = load_image(image_path)
    with pytest.raises(gr.Error, match="expected an uploaded image or an example, got none"):
        app.segment_image(None, "panoptic", 0.5, str(trained_checkpoint))
    with pytest.raises(gr.Error, match="Model: expected a checkpoint folder or a Hub id, got an empty field"):
        app.segment_image(image, "panoptic", 0.5, " ")
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "no" / "such" / "folder"):  # neither loads nor asks the Hub
        with pytest.raises(gr.Error, match=f"Model '{bad}' could not be loaded: expected a checkpoint folder"):
            app.segment_image(image, "panoptic", 0.5, str(bad))
    with pytest.raises(gr.Error, match="Task: expected one of semantic, instance, panoptic, got 'stuff'"):
        app.segment_image(image, "stuff", 0.5, str(trained_checkpoint))
    with pytest.raises(gr.Error, match=r"Threshold: expected a number in \[0, 1\], got 1.5"):
        app.segment_image(image, "panoptic", 1.5, str(trained_checkpoint))


def page_fields(demo) -> dict[str, dict]:
    """The page's components' properties, by ``elem_id``."""
    return {c["props"]["elem_id"]: c["props"] for c in demo.config["components"] if c["props"].get("elem_id")}


def test_page_is_built_with_the_default_model(app, monkeypatch):
    monkeypatch.setenv("MASKFORMER_MODEL", "some/checkpoint")
    fields = page_fields(app.build_demo())
    assert fields["model"]["value"] == "some/checkpoint"
    assert fields["task"]["value"] == "panoptic" and fields["threshold"]["value"] == 0.5
    assert fields["overlay"]["format"] == "png"
    examples = [c["props"]["samples"] for c in app.build_demo().config["components"] if c["type"] == "dataset"]
    assert [[s[0]["orig_name"] for s in samples] for samples in examples] == [
        ["synthetic_0.png", "synthetic_1.png", "synthetic_2.png"]]
    assert page_fields(app.build_demo("other/model"))["model"]["value"] == "other/model"
    monkeypatch.delenv("MASKFORMER_MODEL")
    assert page_fields(app.build_demo())["model"]["value"] == "demo_output/model"


# ---------------------------------------------------------------------------------------------
# The page in a real browser
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def chromium() -> str:
    """The system browser's path; skips (before the model is trained) when no browser can be used."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        pytest.skip(f"playwright is not importable ({error}): pip install playwright")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium not found on PATH (apt-get install chromium)")
    return path


def test_page_in_a_real_browser(chromium, app, trained_checkpoint, image_path, tmp_path):
    """End to end in Debian's ``chromium`` (headless), driven by Playwright for Python: the app is
    launched in-process on a free localhost port; the test uploads a 70x50 image, picks panoptic,
    presses Run (after checking that Run without an image shows the error), reads the table from
    the DOM and fetches the overlay PNG the page shows. Both must equal what the library computes
    directly: table rows (labels, areas, scores to the precision displayed) and overlay pixels
    (gradio serves the PIL image as PNG, lossless, so they are compared exactly). The page must not
    request anything outside localhost."""
    from playwright.sync_api import expect, sync_playwright

    expected_picture, expected_table = expected_result(trained_checkpoint, load_image(image_path), "panoptic")
    assert len(expected_table) >= 2
    port = free_port()
    demo = app.build_demo(default_model=str(trained_checkpoint))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
    outside: list[str] = []
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=chromium, args=CHROMIUM_FLAGS, headless=True)
            try:
                context.set_default_timeout(WAIT_MS)
                context.on("request", lambda r: outside.append(r.url)
                           if urlsplit(r.url).hostname not in ("127.0.0.1", None) else None)
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                page.click("#run")  # no image yet: the callback's gr.Error shows up on the page
                error = page.get_by_text("expected an uploaded image or an example, got none")
                expect(error).to_be_visible(timeout=WAIT_MS)
                page.set_input_files("#input-image input[type=file]", str(image_path))
                page.locator("#input-image img").wait_for()  # the upload is shown
                page.check("#task input[value=panoptic]")
                page.click("#run")
                overlay = page.locator("#overlay img")
                overlay.wait_for()
                rows = page.locator("#segments [role=row][data-index]")
                expect(rows).to_have_count(len(expected_table), timeout=WAIT_MS)
                shown = [[page.locator(f'#segments [data-testid="cell-{r}-{c}"]').inner_text().strip()
                          for c in range(3)] for r in range(len(expected_table))]
                png = page.request.get(overlay.get_attribute("src"))
                assert png.ok, png.status
                body = png.body()
            finally:
                context.close()
    finally:
        demo.close()

    for (label, score, area), row in zip(shown, expected_table):
        assert label == row["label"] and int(area) == row["area"]
        decimals = len(score.partition(".")[2])
        assert float(score) == pytest.approx(row["score"], abs=0.5 * 10.0 ** -decimals + 1e-12), (score, row)
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(BytesIO(body)) as served:
        assert served.mode == "RGB" and np.array_equal(np.asarray(served), expected_picture)
    assert outside == []
