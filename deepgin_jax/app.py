r"""A web page for inpainting: upload a photo, paint the hole with a brush, download the result.

  python -m deepgin_jax.app [--checkpoint CKPT] [--host 127.0.0.1] [--port 7860]

Without --checkpoint the page uses the DeepGIN-compact shipped with the package.

The page (Gradio) has three steps:
1. Photo: any format Pillow reads (16-bit PNG too), any size up to --max_megapixels (16 by
   default, to bound the server's memory; the message on the page names the limit and the
   flag), EXIF orientation applied. The size is read from the file's header before anything
   is decoded, for the photo and for the editor's layers alike, so that a small file declaring
   a huge image costs the server nothing.
2. Paint the hole in the editor: brush (the "Brush Size" button below the colour opens a size
   slider), eraser, undo/redo and layers. Every painted pixel of every layer is part of the
   hole, whatever its colour; the eraser takes pixels out again.
3. Inpaint: a before/after slider, and the result as a PNG at the photo's size and bit depth
   (alpha channel, ICC profile and EXIF kept) to download. Outside the hole its pixels are the
   photo's own, bit for bit (all 16 bits of a 16-bit PNG).

The photo is decoded on the server from the uploaded file, not from the editor's canvas, so the
browser's colour management and JPEG decoder never touch the pixels that are kept. All the
inpainting work (mask preparation, padding, tiling, compositing) is `Inpainter.inpaint`'s.

At start-up the inpainter compiles its shape buckets (`warm_up`, where it has one; --max_batch
defaults to `DEFAULT_MAX_BATCH` here, so there are few) in a background thread, so the page
comes up at once; a status line on the page says "Preparing the model" with
the buckets done, then "Ready" (or the error, if that failed). A photo inpainted before then
still works: it compiles what it needs itself.

Problems (an unreadable or too large file, no photo, nothing painted, a painted layer that no
longer matches the photo, a failed inpainting) are shown on the page as messages that name the
problem. One photo is
inpainted at a time; at most --max_queue visitors wait behind it (the next is told the queue is
full). Nothing is
fetched from the internet: Gradio's analytics and version check are off and the page uses fonts
shipped with Gradio.
"""

from __future__ import annotations

import os

# Gradio reads this when imported and when launching; set before importing it.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import contextlib
import dataclasses
import html
import io
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from absl import flags, logging
from gradio.data_classes import FileData
from PIL import Image

from deepgin_jax import cli, image_io
from deepgin_jax.checkpointing import CheckpointNotFoundError
from deepgin_jax.inference import Inpainter, MaskSizeError

DEFAULT_MAX_MEGAPIXELS = 16.0
DEFAULT_MAX_QUEUE = 16  # visitors waiting while one photo is inpainted
# One photo at a time has few network inputs per bucket; batches of at most 4 let the warm-up
# compile 3 batch sizes per bucket (12 executables) rather than 5 (20) on an accelerator.
DEFAULT_MAX_BATCH = 4
MAX_UPLOAD_SIZE = "100mb"
RESULT_SUFFIX = "_inpainted.png"
RESULT_LIFETIME_S = 3600  # results stay downloadable this long
BRUSH_COLOUR = "#ff00ff"

INSTRUCTIONS = """\
# DeepGIN inpainting
1. Upload a photo.
2. Paint over what should disappear. The button below the brush colour sets the brush size;
   the eraser, undo and redo fix mistakes.
3. Press **Inpaint**, compare before and after, and download the PNG at the photo's size.
"""


@dataclasses.dataclass(frozen=True)
class Photo:
    """The uploaded photo, kept by the page between upload and inpainting.

    name: the file name's stem; image: the decoded file (RGB, uint8 or for a 16-bit file
    uint16, alpha, EXIF, ICC).
    """

    name: str
    image: image_io.LoadedImage

    @property
    def preview(self) -> np.ndarray:
        """uint8 RGB [H, W, 3] for the browser (which shows 8 bits)."""
        return image_io.to_uint8(self.image.rgb)


def painted_hole(layers: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The union of the painted pixels of the editor's layers: bool [h, w], or None if none.

    layers: RGBA uint8 [h, w, 4] arrays; a pixel is painted where its alpha is above 0.
    Raises ValueError if the layers differ in size.
    """
    alphas = [np.asarray(layer)[..., 3] for layer in layers if layer is not None]
    if not alphas:
        return None
    if len({alpha.shape for alpha in alphas}) > 1:
        raise ValueError(f"the editor's layers differ in size: {[a.shape for a in alphas]}")
    hole = np.any(np.stack(alphas) > 0, axis=0)
    return hole if hole.any() else None


def declared_size(source: str | os.PathLike | bytes) -> tuple[int, int] | None:
    """(width, height) that an image file's header declares, read without decoding its pixels;
    None if Pillow cannot tell (not an image: the decoder's error says why later). A size
    beyond Pillow's decompression-bomb limit is returned too (as (pixels, 1))."""
    source = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(source) as image:  # reads the header only
                return image.size
        except Image.DecompressionBombError as e:
            pixels = re.search(r"\((\d+) pixels\)", str(e))
            return (int(pixels.group(1)), 1) if pixels else (2**62, 1)
        except (OSError, ValueError):
            return None


def too_large_error(what: str, size: tuple[int, int], max_pixels: int) -> gr.Error | None:
    """The page's message for an image of `size` (width, height) above `max_pixels`, or
    None."""
    width, height = size
    pixels = width * height
    if pixels <= max_pixels:
        return None
    shown = f"{width}x{height}" if height > 1 else str(pixels)
    return user_error(
        f"{what} is too large: {shown} pixels ({pixels / 1e6:.1f} megapixels); this page "
        f"accepts up to {max_pixels / 1e6:.1f} megapixels, a limit that bounds the server's "
        "memory. Reduce the photo and upload it again, or ask whoever runs this page to start "
        "it with a larger --max_megapixels."
    )


def refuse_large_layers(editor: gr.ImageEditor, max_pixels: int) -> gr.ImageEditor:
    """`editor`, refusing a background or layer whose header declares more than `max_pixels`
    before Gradio decodes it (with the page's message, not Gradio's generic error). Wraps the
    instance's method rather than subclassing: Gradio writes a .pyi file beside the module of
    every component subclass."""
    convert = editor.convert_and_format_image

    def checked_convert(file: FileData | bytes | None, flatten_on_white: bool = False) -> Any:
        if file is not None:
            size = declared_size(file.path if isinstance(file, FileData) else file)
            if size is not None and (
                error := too_large_error("The painted layer", size, max_pixels)
            ):
                raise error
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked_convert
    return editor


class WarmUp:
    """The inpainter's `warm_up(progress=...)` (compiling every shape bucket) run in a daemon
    thread, and the page's status line about it. `progress(done, total)` is called as buckets
    are compiled. An inpainter without `warm_up` is ready at once."""

    STATUS_REFRESH_S = 1.0

    def __init__(self, inpainter: Any):
        self._lock = threading.Lock()
        self._done, self._total = 0, 0
        self._error: str | None = None
        warm_up = getattr(inpainter, "warm_up", None)
        self.thread: threading.Thread | None = None
        if callable(warm_up):
            self.thread = threading.Thread(
                target=self._run, args=(warm_up,), name="deepgin-warm-up", daemon=True
            )
            self.thread.start()

    def _run(self, warm_up: Any) -> None:
        try:
            warm_up(progress=self._progress)
        except Exception as e:  # shown on the page; inpainting compiles on demand instead
            logging.exception("Preparing the model failed")
            with self._lock:
                self._error = f"{type(e).__name__}: {cli.one_line(e)}"

    def _progress(self, done: int, total: int) -> None:
        with self._lock:
            self._done, self._total = done, total

    @property
    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def status(self) -> str:
        """The page's status line (Markdown)."""
        with self._lock:
            done, total, error = self._done, self._total, self._error
        if error is not None:
            return (
                f"**Preparing the model failed:** {html.escape(error)}. Inpainting still works; "
                "each new size compiles when first used."
            )
        if self.busy:
            counts = f" {done}/{total}" if total else ""
            return (
                f"Preparing the model (compiling)...{counts} You can upload and paint "
                "meanwhile; an inpainting started now waits for the compiler."
            )
        return "Ready."


def user_error(message: str) -> gr.Error:
    """An error shown on the page as a message (HTML-escaped: it may quote file names), with no
    server-side traceback: it is the visitor's to fix."""
    return gr.Error(html.escape(message), title="Cannot continue", print_exception=False)


class InpaintingPage:
    """The page's event handlers; they raise `gr.Error` with a message for the user.

    Args:
      inpainter: does the work (`deepgin_jax.inference.Inpainter`).
      max_megapixels: larger photos are refused.

    Results are written for download into a new folder under the system's temporary folder
    (where Gradio serves files from).
    """

    def __init__(self, inpainter: Inpainter, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS):
        self.inpainter = inpainter
        self.max_pixels = int(max_megapixels * 1e6)
        self.output_dir = Path(tempfile.mkdtemp(prefix="deepgin_app_"))
        self.warm_up = WarmUp(inpainter)

    def refresh_status(self) -> tuple[str, gr.Timer]:
        """Status timer handler: (status line, the timer, stopped once nothing is left to
        report)."""
        return self.warm_up.status(), gr.Timer(active=self.warm_up.busy)

    def load_photo(self, path: str | None) -> tuple[Photo | None, dict | None, str, None, None]:
        """Upload handler: (photo state, editor value, photo description, cleared before/after,
        cleared download)."""
        if not path:
            return None, None, "", None, None
        name = Path(path).name
        size = declared_size(path)
        if size is not None and (error := too_large_error(name, size, self.max_pixels)):
            raise error
        try:
            image = image_io.load_image(path, name=name, keep_16_bit=True)
        except image_io.ImageReadError as e:
            raise user_error(f"Cannot read the photo: {e}") from e
        if error := too_large_error(name, (image.width, image.height), self.max_pixels):
            raise error  # a header that understated the size
        photo = Photo(Path(path).stem, image)
        editor_value = {"background": photo.preview, "layers": [], "composite": photo.preview}
        shown_name = name.replace("`", "'")  # a code span shows the name literally
        description = f"`{shown_name}`: {image.width} x {image.height} pixels"
        if image.bit_depth == 16:
            description += " (16 bits per channel, kept in the result)"
        return photo, editor_value, description, None, None

    def inpaint(
        self, photo: Photo | None, editor_value: dict | None
    ) -> tuple[tuple[np.ndarray, np.ndarray], str]:
        """Inpaint handler: ((before, after) for the slider, 8 bits; path of the PNG to download,
        at the photo's bit depth)."""
        if photo is None or not editor_value or editor_value.get("background") is None:
            raise user_error("Upload a photo first.")
        image = photo.image
        canvas_size = np.shape(editor_value["background"])[:2]
        if canvas_size != (image.height, image.width):
            raise user_error(
                f"The editor shows a {canvas_size[1]}x{canvas_size[0]} image, not the uploaded "
                f"{image.width}x{image.height} photo; upload the photo again in box 1."
            )
        try:
            hole = painted_hole(editor_value.get("layers") or [])
        except ValueError as e:
            raise user_error(f"Cannot read the painted hole: {e}") from e
        if hole is None:
            raise user_error("Nothing is painted: paint over the part of the photo to remove.")
        if hole.shape != (image.height, image.width):
            raise self._layer_size_error(hole.shape, image)
        try:
            result = self.inpainter.inpaint(image.rgb, hole)
        except MaskSizeError as e:
            raise self._layer_size_error(np.shape(hole), image) from e
        except ValueError as e:
            raise user_error(f"Cannot inpaint this photo: {e}") from e
        except Exception as e:
            logging.exception("Inpainting %s failed", photo.name)
            raise user_error(
                f"Inpainting failed: {type(e).__name__}: {cli.one_line(e)} (the server log has "
                "the details)."
            ) from e
        return (photo.preview, image_io.to_uint8(result)), str(self._save_result(photo, result))

    @staticmethod
    def _layer_size_error(shape: tuple[int, ...], image: image_io.LoadedImage) -> gr.Error:
        return user_error(
            f"The painted layer is {shape[1]}x{shape[0]} pixels but the photo is "
            f"{image.width}x{image.height}: the editor no longer matches the photo. Upload the "
            "photo again in box 1 and paint the hole again."
        )

    def _save_result(self, photo: Photo, result: np.ndarray) -> Path:
        """Writes the PNG into a folder of its own (two visitors may send photos of one name)
        and removes results older than RESULT_LIFETIME_S."""
        self._remove_old_results()
        folder = Path(tempfile.mkdtemp(dir=self.output_dir))
        output = folder / f"{photo.name}{RESULT_SUFFIX}"
        image = photo.image
        image_io.save_image(
            output, result, alpha=image.alpha, exif=image.exif, icc_profile=image.icc_profile
        )
        return output

    def _remove_old_results(self) -> None:
        cutoff = time.time() - RESULT_LIFETIME_S
        for folder in self.output_dir.iterdir():
            with contextlib.suppress(OSError):
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder)


def build_app(inpainter: Inpainter, *, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> gr.Blocks:
    """The inpainting page around `inpainter` (launch it with `launch_kwargs()`). Starts the
    inpainter's warm-up in the background (`WarmUp`)."""
    page = InpaintingPage(inpainter, max_megapixels=max_megapixels)
    with gr.Blocks(title="DeepGIN inpainting", analytics_enabled=False) as blocks:
        gr.Markdown(INSTRUCTIONS)
        status = gr.Markdown(page.warm_up.status, elem_id="status")
        status_timer = gr.Timer(WarmUp.STATUS_REFRESH_S, active=page.warm_up.busy)
        # Not behind an inpainting in the queue (one at a time): the status is instant.
        status_timer.tick(
            page.refresh_status,
            outputs=[status, status_timer],
            concurrency_limit=None,
            show_progress="hidden",
        )
        photo_state = gr.State(None)
        with gr.Row():
            with gr.Column():
                upload = gr.File(
                    label="1. Photo", file_types=["image"], type="filepath", elem_id="photo"
                )
                photo_info = gr.Markdown(elem_id="photo_info")
                editor = gr.ImageEditor(
                    label="2. Paint the hole",
                    elem_id="editor",
                    sources=[],
                    type="numpy",
                    image_mode="RGBA",
                    format="png",
                    transforms=[],  # cropping or resizing would detach the hole from the photo
                    brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed"),
                    eraser=gr.Eraser(),
                    layers=True,
                    interactive=True,
                )
                refuse_large_layers(editor, page.max_pixels)
                run = gr.Button("3. Inpaint", variant="primary", elem_id="run")
            with gr.Column():
                before_after = gr.ImageSlider(
                    label="Before / after",
                    type="numpy",
                    format="png",
                    interactive=False,
                    elem_id="before_after",
                )
                download = gr.File(
                    label="Result (PNG, the photo's size)", interactive=False, elem_id="result"
                )
        upload.change(
            page.load_photo,
            inputs=upload,
            outputs=[photo_state, editor, photo_info, before_after, download],
        )
        run.click(page.inpaint, inputs=[photo_state, editor], outputs=[before_after, download])
    return blocks


def queue_kwargs(max_queue: int = DEFAULT_MAX_QUEUE) -> dict[str, Any]:
    """Arguments of `gr.Blocks.queue`: one inpainting at a time (each can take the machine's
    cores and gigabytes), `max_queue` waiting."""
    return {"max_size": max_queue, "default_concurrency_limit": 1}


def launch_kwargs(host: str, port: int | None) -> dict[str, Any]:
    """Arguments of `gr.Blocks.launch` for a local server that contacts nothing outside."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "ssr_mode": False,
        "max_file_size": MAX_UPLOAD_SIZE,
        "footer_links": [],
        "show_error": False,
    }


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The command-line flags (defined only when run as a program, or on `flag_values`)."""
    fv = {"flag_values": flag_values}
    cli.define_checkpoint_flag(flag_values)
    flags.DEFINE_string(
        "host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).", **fv
    )
    flags.DEFINE_integer("port", 7860, "Port to listen on.", **fv)
    flags.DEFINE_integer(
        "max_queue",
        DEFAULT_MAX_QUEUE,
        "Most visitors waiting while one photo is inpainted; the next is told the queue is full.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_float(
        "max_megapixels",
        DEFAULT_MAX_MEGAPIXELS,
        "Refuse larger photos (bounds the server's memory; the page names this limit).",
        lower_bound=0.01,
        **fv,
    )
    cli.define_inpainter_flags(flag_values)
    cli.define_hyphenated_aliases(flag_values, ["max_megapixels", "max_queue"])
    flags.adopt_module_key_flags(cli, flag_values=flag_values)  # --help lists them here


def main(argv: Sequence[str]) -> int:
    cli.reject_arguments(argv)
    f = flags.FLAGS
    if (problem := cli.inpainter_flags_problem(f)) is not None:
        return cli.usage_failure("%s", problem)
    try:
        options = cli.inpainter_options(f)
        if f.max_batch is None:
            options["options"] = dataclasses.replace(
                options["options"], max_batch=DEFAULT_MAX_BATCH
            )
        inpainter = Inpainter.from_checkpoint(f.checkpoint, **options)
    except CheckpointNotFoundError as e:
        return cli.generator_failure(f.checkpoint, e)
    cli.one_blas_thread()
    cli.no_huge_page_advice()
    cli.reuse_freed_memory()
    # Pillow's own decompression-bomb limit must not refuse what the page accepts.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, int(f.max_megapixels * 1e6))
    blocks = build_app(inpainter, max_megapixels=f.max_megapixels)
    blocks.queue(**queue_kwargs(f.max_queue)).launch(**launch_kwargs(f.host, f.port))
    return cli.EXIT_OK


if __name__ == "__main__":
    define_flags()
    cli.run(main)
