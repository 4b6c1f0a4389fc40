"""Per-item training augmentation and batch formation (spec 5.4).

One dataset item (an RGB photo) becomes one `crop_size`^2 ground truth with K masks, one per
entry of `mask_types`; a batch of B items is then laid out as B*K samples, each item's K
samples consecutive and sharing the same ground truth (the reference orders them
[box, CA, free-form]).

Two augmentations:
* "reference" (spec 5.4): bicubic resize to `load_size`^2 regardless of aspect ratio, rotation
  by a uniform multiple of 90 degrees, polyphase 2x subsampling with a uniform phase, and a
  horizontal flip (p = 0.5) shared by the image and its masks. Needs load_size = 2*crop_size.
* "crops": a square crop whose side is a uniform fraction (`crop_scale`) of the short side, at
  a uniform position, bicubic-resized to `crop_size`^2, plus the shared flip; for small sets of
  photos of any aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from deepgin_jax import masks as masks_lib

AUGMENTATIONS = ("reference", "crops")
# Polyphase offsets (row, column) in the reference's order of its random choice.
POLYPHASE_OFFSETS = ((0, 0), (1, 1), (1, 0), (0, 1))


def resize_bicubic(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bicubic resize (antialiased when shrinking, as in the reference) of uint8 `[H, W, 3]`."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def polyphase_subsample(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """Keeps pixels (2i + a, 2j + b) for `offset` = (a, b): `[2H, 2W, C]` -> `[H, W, C]`."""
    row, col = offset
    return image[row::2, col::2]


def reference_augment(
    rgb: np.ndarray, rng: np.random.Generator, *, load_size: int, crop_size: int
) -> np.ndarray:
    """Spec 5.4 steps 1-3: resize to load_size^2, random rot90, random polyphase phase.

    Args:
      rgb: uint8 `[H, W, 3]` of any size.

    Returns:
      uint8 `[crop_size, crop_size, 3]`.
    """
    if load_size != 2 * crop_size:
        raise ValueError(
            f"The reference augmentation needs load_size == 2 * crop_size, got {load_size} "
            f"and {crop_size}."
        )
    image = resize_bicubic(rgb, load_size, load_size)
    image = np.rot90(image, k=int(rng.integers(0, 4)))  # counter-clockwise, as PIL's rotate
    offset = POLYPHASE_OFFSETS[int(rng.integers(0, len(POLYPHASE_OFFSETS)))]
    return np.ascontiguousarray(polyphase_subsample(image, offset))


def random_crop_augment(
    rgb: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int,
    crop_scale: tuple[float, float] = (0.5, 1.0),
) -> np.ndarray:
    """A random square crop (side uniform in `crop_scale` x short side), resized to crop_size^2.

    Args:
      rgb: uint8 `[H, W, 3]` of any size.

    Returns:
      uint8 `[crop_size, crop_size, 3]`.
    """
    low, high = crop_scale
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}.")
    height, width = rgb.shape[:2]
    short_side = min(height, width)
    side = int(np.clip(round(rng.uniform(low, high) * short_side), 1, short_side))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = np.ascontiguousarray(rgb[top : top + side, left : left + side])
    return resize_bicubic(crop, crop_size, crop_size)


def generate_item_masks(
    rng: np.random.Generator, mask_types: Sequence[str], size: int, scale_strokes: bool = False
) -> np.ndarray:
    """One mask per entry of `mask_types`, in that order: uint8 `[K, size, size, 1]`, 1 = hole.

    scale_strokes: free-form strokes scaled to `size` (`masks.free_form_mask`).
    """
    stack = [
        masks_lib.generate_mask(kind, rng, size, size, scale_strokes=scale_strokes)
        for kind in mask_types
    ]
    return np.stack(stack).astype(np.uint8)[..., None]


def shared_horizontal_flip(
    rng: np.random.Generator, image: np.ndarray, masks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Spec 5.4 step 5: flips image `[S, S, 3]` and masks `[K, S, S, 1]` together with p = 0.5."""
    if rng.random() < 0.5:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(masks[:, :, ::-1])
    return image, masks


class InpaintingItemTransform(grain.transforms.RandomMap):
    """uint8 RGB `[H, W, 3]` -> `{"image": uint8 [S, S, 3], "mask": uint8 [K, S, S, 1]}`.

    Random draws, in order: the augmentation's, then the K masks, then the flip.
    """

    def __init__(
        self,
        *,
        augmentation: str,
        load_size: int,
        crop_size: int,
        mask_types: Sequence[str],
        crop_scale: tuple[float, float] = (0.5, 1.0),
        scale_strokes: bool = False,
    ):
        if augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"Unknown augmentation {augmentation!r}; expected one of {AUGMENTATIONS}."
            )
        if not mask_types:
            raise ValueError("mask_types must name at least one mask type.")
        for kind in mask_types:
            masks_lib.resolve_mask_kind(kind, np.random.default_rng(0))
        if augmentation == "reference" and load_size != 2 * crop_size:
            raise ValueError(
                f"augmentation='reference' needs load_size == 2 * crop_size, got load_size="
                f"{load_size}, crop_size={crop_size}; use augmentation='crops' for other sizes."
            )
        self.augmentation = augmentation
        self.load_size = load_size
        self.crop_size = crop_size
        self.mask_types = tuple(mask_types)
        self.crop_scale = tuple(crop_scale)
        self.scale_strokes = scale_strokes

    def random_map(self, element: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if self.augmentation == "reference":
            image = reference_augment(
                element, rng, load_size=self.load_size, crop_size=self.crop_size
            )
        else:
            image = random_crop_augment(
                element, rng, crop_size=self.crop_size, crop_scale=self.crop_scale
            )
        item_masks = generate_item_masks(rng, self.mask_types, self.crop_size, self.scale_strokes)
        image, item_masks = shared_horizontal_flip(rng, image, item_masks)
        return {"image": image, "mask": item_masks}


def stack_items(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch formation: B items with K masks each -> B*K samples, item-major.

    Returns:
      `{"image": uint8 [B*K, S, S, 3], "mask": uint8 [B*K, S, S, 1]}`; samples k*K .. k*K+K-1
      share item k's ground truth and carry its masks in `mask_types` order.
    """
    item_masks = np.stack([item["mask"] for item in items])  # [B, K, S, S, 1]
    num_masks = item_masks.shape[1]
    images = np.repeat(np.stack([item["image"] for item in items]), num_masks, axis=0)
    return {"image": images, "mask": item_masks.reshape(-1, *item_masks.shape[2:])}
