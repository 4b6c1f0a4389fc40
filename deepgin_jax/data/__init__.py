"""Training data: dataset builders, sources, augmentation and the Grain input pipeline."""

from __future__ import annotations

from pathlib import Path

# Seven small public-domain / CC0 photos (see samples/LICENSE.md) for demos and smoke runs.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


def sample_image_paths() -> list[Path]:
    """The bundled sample photos, sorted by name."""
    return sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() == ".jpg")
