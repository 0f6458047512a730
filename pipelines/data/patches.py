"""A small colour image-folder data set cut from scikit-learn's two sample photographs (shipped in its wheel).

Classes are regions of the photographs (the top and bottom halves of `china.jpg` and `flower.jpg`); each
file is a patch of random size and place in its region, saved as JPEG, PNG, BMP or TIFF in turn, in the
class-per-subfolder layout of Keras' `image_dataset_from_directory`. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATCH_CLASSES = ("china_bottom", "china_top", "flower_bottom", "flower_top")
SUFFIXES = (".jpg", ".png", ".bmp", ".tif")


def _regions() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    half_c, half_f = china.shape[0] // 2, flower.shape[0] // 2
    return {
        "china_bottom": china[half_c:],
        "china_top": china[:half_c],
        "flower_bottom": flower[half_f:],
        "flower_top": flower[:half_f],
    }


def write_patch_folder(
    root: str | Path,
    per_class: int = 40,
    size: tuple[int, int] = (24, 72),
    seed: int = 0,
    suffixes: tuple[str, ...] = SUFFIXES,
    grayscale: bool = False,
) -> list[Path]:
    """Write `per_class` patches (sides drawn from `size`) per class under root/<class>/; return the files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    written = []
    for name, region in _regions().items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            top = int(rng.integers(0, region.shape[0] - h + 1))
            left = int(rng.integers(0, region.shape[1] - w + 1))
            image = Image.fromarray(region[top : top + h, left : left + w])
            if grayscale:
                image = image.convert("L")
            path = folder / f"{name}-{i:05d}{suffixes[i % len(suffixes)]}"
            image.save(path)
            written.append(path)
    return written
