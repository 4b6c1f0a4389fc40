"""The web editor: its handlers directly, then the whole page in a headless Chromium."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from absl import flags
from PIL import Image

gr = pytest.importorskip("gradio")
# Gradio's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

from deepgin_jax import app as webapp  # noqa: E402
from deepgin_jax import shipped  # noqa: E402
from deepgin_jax.checkpointing import save_generator  # noqa: E402
from deepgin_jax.image_io import load_image  # noqa: E402
from deepgin_jax.inference import Inpainter  # noqa: E402
from tests.conftest import TINY_ARCHITECTURE, TINY_WIDTH  # noqa: E402
from tests.inpainting_helpers import tiny_shipped  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "deepgin_jax" / "data" / "samples" / "chelsea.jpg"  # 451 x 300: not square, odd
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BRUSH_SIZE = 10  # the editor's brush radius in image pixels


def black_network(masked: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A stand-in generator that predicts black everywhere (no compilation needed)."""
    return np.zeros_like(masked)


@pytest.fixture
def page() -> webapp.InpaintingPage:
    return webapp.InpaintingPage(Inpainter.from_function(black_network), max_megapixels=1.0)


def painted_layer(height: int, width: int, rows: slice, cols: slice) -> np.ndarray:
    layer = np.zeros((height, width, 4), np.uint8)
    layer[rows, cols] = (255, 0, 255, 255)
    return layer


def editor_value(background: np.ndarray, *layers: np.ndarray) -> dict:
    return {"background": background, "layers": list(layers), "composite": background}


# ----------------------------------------------------------------------------------------------
# Handlers


def test_painted_hole_is_the_union_of_the_layers_painted_pixels():
    first = painted_layer(6, 8, slice(0, 2), slice(0, 3))
    second = painted_layer(6, 8, slice(4, 6), slice(5, 8))
    second[5, 7, 3] = 0  # erased
    hole = webapp.painted_hole([first, None, second])
    expected = np.zeros((6, 8), bool)
    expected[0:2, 0:3] = True
    expected[4:6, 5:8] = True
    expected[5, 7] = False
    np.testing.assert_array_equal(hole, expected)
    assert webapp.painted_hole([np.zeros((6, 8, 4), np.uint8)]) is None
    with pytest.raises(ValueError, match="differ in size"):
        webapp.painted_hole([first, np.zeros((5, 8, 4), np.uint8)])


def test_upload_shows_the_photo_in_the_editor(page):
    photo, value, description, before_after, download = page.load_photo(str(PHOTO))
    assert photo.name == "chelsea"
    assert value["background"].shape == (300, 451, 3)
    assert value["layers"] == []
    assert description == "`chelsea.jpg`: 451 x 300 pixels"
    assert before_after is None and download is None
    assert page.load_photo(None) == (None, None, "", None, None)


def test_unreadable_photo_is_a_message(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:300])
    with pytest.raises(gr.Error, match=r"Cannot read the photo: broken\.jpg"):
        page.load_photo(str(broken))


def test_too_large_photo_is_a_message_naming_the_limit_and_its_flag(tmp_path):
    page = webapp.InpaintingPage(Inpainter.from_function(black_network), max_megapixels=0.1)
    with pytest.raises(gr.Error, match=r"451x300 pixels \(0.1 megapixels\).* up to 0.1") as e:
        page.load_photo(str(PHOTO))
    assert "--max_megapixels" in e.value.message and "memory" in e.value.message


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG declaring a 16-bit RGB image of width x height, with no pixel data: a few dozen
    bytes that decoding would turn into gigabytes, or an error about the missing data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 13000], ids=["above-the-limit", "above-pillows-limit"])
def test_huge_photo_is_refused_from_its_header_without_decoding(page, tmp_path, monkeypatch, side):
    upload = tmp_path / "huge.png"
    upload.write_bytes(huge_png_header(side, side))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(webapp.image_io, "load_image", no_decoding)
    with pytest.raises(gr.Error, match=r"huge\.png is too large: .*up to 1\.0 megapixels") as e:
        page.load_photo(str(upload))
    assert f"{side * side / 1e6:.1f} megapixels" in e.value.message
    assert "--max_megapixels" in e.value.message


def test_huge_editor_layer_is_refused_from_its_header_without_decoding(tmp_path, monkeypatch):
    from gradio.data_classes import FileData

    editor = webapp.refuse_large_layers(
        gr.ImageEditor(type="numpy", image_mode="RGBA"), max_pixels=10**6
    )
    layer = tmp_path / "layer.png"
    layer.write_bytes(huge_png_header(13000, 13000))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    with pytest.raises(gr.Error, match=r"painted layer is too large: 13000x13000 pixels"):
        editor.convert_and_format_image(FileData(path=str(layer)))
    with pytest.raises(gr.Error, match=r"painted layer is too large"):
        editor.convert_and_format_image(layer.read_bytes())
    monkeypatch.undo()
    Image.new("RGBA", (30, 20)).save(layer)  # within the limit: decoded as Gradio does
    assert editor.convert_and_format_image(FileData(path=str(layer))).shape == (20, 30, 4)


def test_painted_layer_of_another_size_is_a_message_a_visitor_can_act_on(page):
    photo, value, *_ = page.load_photo(str(PHOTO))
    layer = painted_layer(150, 225, slice(10, 20), slice(10, 40))  # half the photo's size
    with pytest.raises(
        gr.Error, match="painted layer is 225x150 pixels but the photo is 451x300"
    ) as e:
        page.inpaint(photo, editor_value(value["background"], layer))
    assert "Upload the photo again" in e.value.message
    assert "--resize-mask" not in e.value.message and "resize_mask" not in e.value.message


def test_16_bit_photo_keeps_16_bits_in_the_download(page, tmp_path):
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (37, 53, 3), dtype=np.uint16)
    source = tmp_path / "deep.png"
    cv2.imwrite(str(source), deep[..., ::-1])
    photo, value, description, *_ = page.load_photo(str(source))
    assert value["background"].dtype == np.uint8 and "16 bits" in description
    layer = painted_layer(37, 53, slice(10, 20), slice(5, 40))
    (before, after), download = page.inpaint(photo, editor_value(value["background"], layer))
    assert before.dtype == after.dtype == np.uint8
    saved = cv2.imread(download, cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert saved.dtype == np.uint16
    hole = layer[..., 3] > 0
    np.testing.assert_array_equal(saved[~hole], deep[~hole])
    assert (saved[hole] == 0).all()


def test_file_names_in_messages_are_escaped(page, tmp_path):
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"
    hostile.write_bytes(b"not a png")
    with pytest.raises(gr.Error) as caught:
        page.load_photo(str(hostile))
    assert "<img" not in caught.value.message
    assert "&lt;img" in caught.value.message


def test_inpainting_needs_a_photo_and_a_painted_hole(page):
    with pytest.raises(gr.Error, match="Upload a photo first"):
        page.inpaint(None, None)
    photo, value, *_ = page.load_photo(str(PHOTO))
    with pytest.raises(gr.Error, match="Nothing is painted"):
        page.inpaint(photo, value)
    with pytest.raises(gr.Error, match="Nothing is painted"):
        page.inpaint(photo, editor_value(value["background"], np.zeros((300, 451, 4), np.uint8)))
    other = np.zeros((20, 30, 4), np.uint8)
    with pytest.raises(gr.Error, match="shows a 30x20 image, not the uploaded 451x300 photo"):
        page.inpaint(photo, editor_value(other, painted_layer(20, 30, slice(1, 5), slice(1, 5))))


def test_inpainting_fills_only_the_hole_and_keeps_alpha(page, tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(1, 256, (37, 53, 4), dtype=np.uint8)
    source = tmp_path / "sticker.png"
    Image.fromarray(rgba, "RGBA").save(source)
    photo, value, *_ = page.load_photo(str(source))
    layer = painted_layer(37, 53, slice(10, 20), slice(5, 40))
    (before, after), download = page.inpaint(photo, editor_value(value["background"], layer))

    np.testing.assert_array_equal(before, rgba[..., :3])
    hole = layer[..., 3] > 0
    np.testing.assert_array_equal(after[~hole], rgba[..., :3][~hole])
    assert (after[hole] == 0).all()  # the stand-in network's black
    assert Path(download).name == "sticker_inpainted.png"
    saved = load_image(download)
    np.testing.assert_array_equal(saved.rgb, after)
    np.testing.assert_array_equal(saved.alpha, rgba[..., 3])


class WarmingInpainter:
    """An inpainter whose warm-up reports 1 of 3 buckets compiled, then blocks until released
    (or raises `fails`)."""

    def __init__(self, fails: Exception | None = None):
        self.started, self.released = threading.Event(), threading.Event()
        self.fails = fails
        # Polyphase: the stand-in's black reaches a large photo's hole exactly (the "scaled"
        # strategy would match its colour to the hole's border).
        self.inpainter = Inpainter.from_function(black_network, strategy="polyphase")

    def warm_up(self, progress=None):
        progress(1, 3)
        self.started.set()
        assert self.released.wait(timeout=60), "never released"
        if self.fails is not None:
            raise self.fails
        progress(3, 3)

    def inpaint(self, image, mask, **kwargs):
        return self.inpainter.inpaint(image, mask, **kwargs)


def test_page_comes_up_while_the_model_compiles_and_says_so(tmp_path):
    inpainter = WarmingInpainter()
    blocks = webapp.build_app(inpainter)  # returns although the warm-up is blocked
    assert inpainter.started.wait(timeout=30) and not inpainter.released.is_set()
    assert isinstance(blocks, gr.Blocks)
    inpainter.released.set()

    inpainter = WarmingInpainter()
    page = webapp.InpaintingPage(inpainter)
    assert inpainter.started.wait(timeout=30)
    status, timer = page.refresh_status()
    assert "Preparing the model (compiling)... 1/3" in status and timer.active
    # A photo inpainted meanwhile is served (here at once; a real model compiles its size).
    rgb = np.full((20, 30, 3), 200, np.uint8)
    Image.fromarray(rgb).save(tmp_path / "early.png")
    photo, value, *_ = page.load_photo(str(tmp_path / "early.png"))
    layer = painted_layer(20, 30, slice(5, 10), slice(5, 10))
    (_, after), _ = page.inpaint(photo, editor_value(value["background"], layer))
    assert (after[5:10, 5:10] == 0).all() and (after[:5] == 200).all()
    inpainter.released.set()
    page.warm_up.thread.join(timeout=30)
    status, timer = page.refresh_status()
    assert status == "Ready." and not timer.active


def test_a_failed_warm_up_is_shown_in_the_status_and_inpainting_still_works(tmp_path):
    inpainter = WarmingInpainter(fails=RuntimeError("out of memory compiling 512x512"))
    page = webapp.InpaintingPage(inpainter)
    inpainter.released.set()
    page.warm_up.thread.join(timeout=30)
    status, timer = page.refresh_status()
    assert "Preparing the model failed" in status
    assert "RuntimeError: out of memory compiling 512x512" in status and not timer.active
    photo, value, *_ = page.load_photo(str(PHOTO))
    layer = painted_layer(300, 451, slice(10, 20), slice(10, 40))
    (_, after), _ = page.inpaint(photo, editor_value(value["background"], layer))
    assert (after[10:20, 10:40] == 0).all()
    # The real `Inpainter.warm_up` reports progress(done, total): 2 buckets x batches 1, 2, 4.
    real = Inpainter.from_function(black_network, buckets=(16, 32), max_batch=4)
    page = webapp.InpaintingPage(real)
    page.warm_up.thread.join(timeout=30)
    assert page.refresh_status()[0] == "Ready."
    assert (page.warm_up._done, page.warm_up._total) == (6, 6)


def test_a_failed_inpainting_names_its_error_on_the_page(page, monkeypatch):
    photo, value, *_ = page.load_photo(str(PHOTO))
    layer = painted_layer(300, 451, slice(10, 20), slice(10, 40))

    def fail(*args, **kwargs):
        raise MemoryError("cannot allocate 3.2 GB")

    monkeypatch.setattr(page.inpainter, "inpaint", fail)
    with pytest.raises(gr.Error, match=r"Inpainting failed: MemoryError: cannot allocate 3\.2 GB"):
        page.inpaint(photo, editor_value(value["background"], layer))


def test_cli_reports_a_missing_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepgin_jax.app", f"--checkpoint={tmp_path / 'nowhere'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "checkpoint path does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_missing_shipped_weights_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deepgin_jax.app"],
        cwd=REPO,
        env={**os.environ, shipped.ENV_VAR: str(tmp_path / "no-weights")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "shipped DeepGIN-compact weights are missing" in result.stderr
    assert "--checkpoint" in result.stderr and "Traceback" not in result.stderr


class FakeBlocks:
    """Stands in for the page: records the launch instead of serving."""

    def __init__(self) -> None:
        self.launched: dict | None = None
        self.queued: dict | None = None

    def queue(self, **kwargs) -> FakeBlocks:
        self.queued = kwargs
        return self

    def launch(self, **kwargs) -> None:
        self.launched = kwargs


def test_cli_without_checkpoint_serves_the_shipped_model(monkeypatch, caplog):
    monkeypatch.setenv(shipped.ENV_VAR, str(tiny_shipped()))
    flag_values = flags.FlagValues()
    webapp.define_flags(flag_values)
    flag_values(["app", "--port=7999", "--strategy=crop", "--max_queue=3"])
    monkeypatch.setattr(webapp.flags, "FLAGS", flag_values)
    built: list[tuple[Inpainter, FakeBlocks]] = []

    def build_app(inpainter, **kwargs):
        built.append((inpainter, FakeBlocks()))
        return built[-1][1]

    monkeypatch.setattr(webapp, "build_app", build_app)
    blas_limits: list[None] = []  # not run here: it would limit the whole test process
    monkeypatch.setattr(webapp.cli, "one_blas_thread", lambda: blas_limits.append(None))
    with caplog.at_level(logging.INFO, logger="absl"):
        assert webapp.main(["app"]) == 0
    assert len(blas_limits) == 1
    [(inpainter, blocks)] = built
    assert inpainter.model.base_features == TINY_WIDTH and inpainter.strategy == "crop"
    assert inpainter.max_batch == webapp.DEFAULT_MAX_BATCH == 4  # a short warm-up
    assert blocks.launched["server_port"] == 7999
    assert blocks.queued == {"max_size": 3, "default_concurrency_limit": 1}
    notes = [r.getMessage() for r in caplog.records if "using the shipped" in r.getMessage()]
    assert len(notes) == 1 and "DeepGIN-tiny" in notes[0]


# ----------------------------------------------------------------------------------------------
# The page in a browser


class RecordingInpainter:
    """Forwards to an Inpainter and keeps the masks it was given."""

    def __init__(self, inpainter: Inpainter):
        self.inpainter = inpainter
        self.masks: list[np.ndarray] = []

    def inpaint(self, image, mask, **kwargs):
        self.masks.append(np.array(mask))
        return self.inpainter.inpaint(image, mask, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_app(tmp_path_factory, tiny_generator) -> Iterator[tuple[str, RecordingInpainter]]:
    """The page around the tiny generator's checkpoint, served on 127.0.0.1."""
    _, variables = tiny_generator
    checkpoint = tmp_path_factory.mktemp("app") / "tiny"
    save_generator(checkpoint, {"params": variables["params"]}, TINY_ARCHITECTURE)
    # The whole photo in one network call: one compilation.
    recorder = RecordingInpainter(Inpainter(checkpoint, max_direct_size=512))
    blocks = webapp.build_app(recorder)
    port = free_port()
    blocks.queue(**webapp.queue_kwargs()).launch(
        prevent_thread_lock=True, quiet=True, **webapp.launch_kwargs("127.0.0.1", port)
    )
    try:
        yield f"http://127.0.0.1:{port}/", recorder
    finally:
        blocks.close()


def sync_playwright_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser test needs the playwright package (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the browser test needs Chromium at {CHROMIUM} (apt-get install chromium)")
    return sync_playwright


def test_browser_paint_inpaint_and_download(served_app, tmp_path):
    sync_playwright = sync_playwright_or_skip()
    url, recorder = served_app
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url)
            page.locator("#photo input[type=file]").set_input_files(str(PHOTO))
            page.get_by_text("451 x 300 pixels").wait_for()

            page.locator("#run").click()  # nothing painted yet: a message, not a result
            page.get_by_text("Nothing is painted").wait_for()

            page.locator("#editor button[aria-label='Brush Size']").click()
            page.locator("#editor input[type=range]").fill(str(BRUSH_SIZE))
            page.locator("#editor button[aria-label='Brush Size']").click()
            # A horizontal stroke through the middle of the canvas, where the photo is centred.
            box = page.locator("#editor canvas").first.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x - 100, y)
            page.mouse.down()
            page.mouse.move(x + 100, y, steps=4)
            page.mouse.up()

            page.locator("#run").click()
            link = page.locator("#result a").first
            link.wait_for(timeout=120_000)
            assert page.locator("#before_after img").count() == 2
            with page.expect_download() as download:
                link.click()
            result_path = tmp_path / download.value.suggested_filename
            download.value.save_as(result_path)
        finally:
            browser.close()

    assert result_path.name == "chelsea_inpainted.png"
    result = np.asarray(Image.open(result_path))
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    assert result.shape == photo.shape == (300, 451, 3)

    [hole] = recorder.masks
    rows, cols = np.nonzero(hole)
    # The stroke: a band 2 * BRUSH_SIZE rows thick across the middle of the photo.
    assert 2 * BRUSH_SIZE - 4 <= rows.max() - rows.min() + 1 <= 2 * BRUSH_SIZE + 4
    assert abs(rows.mean() - 150) < 10 and abs(cols.mean() - 225) < 10
    assert cols.max() - cols.min() > 150
    changed = (result != photo).any(axis=-1)
    assert changed.any()
    assert not changed[~hole].any(), "pixels outside the painted hole changed"

    local = (url, "blob:", "data:")
    assert [r for r in requests if not r.startswith(local)] == [], "the page fetched from outside"


def test_result_png_is_at_the_photo_size_for_odd_sizes(page, tmp_path):
    """Sizes that are not multiples of 8 come back unchanged (padding is the Inpainter's)."""
    rgb = np.random.default_rng(1).integers(0, 256, (13, 29, 3), dtype=np.uint8)
    source = tmp_path / "odd.png"
    Image.fromarray(rgb).save(source)
    photo, value, *_ = page.load_photo(str(source))
    layer = painted_layer(13, 29, slice(2, 6), slice(3, 9))
    (_, after), download = page.inpaint(photo, editor_value(value["background"], layer))
    assert after.shape == (13, 29, 3)
    assert np.asarray(Image.open(download)).shape == (13, 29, 3)
