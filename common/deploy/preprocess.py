"""Image files -> the float32 (C, H, W) rows an export expects, exactly as `torch_impl/evaluate.py` makes them.

The evaluation transform of the project is timm's (`timm.data.create_transform(is_training=False,
interpolation=cfg.interpolation, crop_pct=cfg.crop_pct, mean, std)`): resize the shorter side to
floor(img_size / crop_pct) with the config's PIL filter, centre crop img_size x img_size (zero padding where
the image is smaller), to float32 / 255, normalise with mean and std. It is written again here with PIL and
numpy because an exported model must run where neither torch nor timm is installed; tests check it equal to
timm's transform on real PNG and JPEG files. Files are read as `torch_impl.data` reads them
(`common.readers.read_image`: decoded, converted to RGB, no EXIF rotation).

    prep = eval_preprocessing(cfg)                    # what the manifest stores under "preprocessing"
    row = preprocess_image_file("cat.jpg", manifest)  # (3, 224, 224) float32
"""
from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from common.config import DVTConfig
from common.readers import BadFileError, read_image

from .manifest import DeployError

# timm's names for PIL filters (timm.data.transforms.str_to_pil_interp)
PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
               "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def eval_preprocessing(cfg: DVTConfig) -> dict:
    """The manifest's description of the evaluation transform of `cfg`."""
    if cfg.interpolation not in PIL_FILTERS:
        raise DeployError(f"{cfg.name}: interpolation {cfg.interpolation!r} has no PIL filter; expected one of "
                          f"{sorted(PIL_FILTERS)}")
    if cfg.in_chans != 3:
        raise DeployError(f"{cfg.name}: image files are read as RGB (3 channels), the model takes {cfg.in_chans}")
    return {"transform": "resize shorter side, centre crop, /255, normalise (timm eval transform)",
            "img_size": cfg.img_size, "crop_pct": cfg.crop_pct, "resize": math.floor(cfg.img_size / cfg.crop_pct),
            "interpolation": cfg.interpolation, "crop_mode": "center", "scale": 255.0,
            "mean": list(cfg.mean), "std": list(cfg.std), "color": "RGB"}


def _prep_of(spec) -> dict:
    if isinstance(spec, dict):
        return spec
    if isinstance(spec, DVTConfig):
        return eval_preprocessing(spec)
    return spec.preprocessing  # a Manifest


def _resized_size(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side `size`, the longer one truncated (torchvision's rule)."""
    if w <= h:
        return size, int(size * h / w)
    return int(size * w / h), size


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, C]) uint8 -> size x size: zero padding where smaller, then the centre (torchvision's rule)."""
    h, w = a.shape[:2]
    if size > w or size > h:
        pad_w, pad_h = max(size - w, 0), max(size - h, 0)
        pads = [(pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pads)
        h, w = a.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return a[top:top + size, left:left + size]


def preprocess_image(img: Image.Image, spec) -> np.ndarray:
    """A PIL image -> (C, H, W) float32 (`spec`: a Manifest, its preprocessing dict or a DVTConfig)."""
    prep = _prep_of(spec)
    img = img.convert(prep["color"])  # already RGB when read by open_image
    w, h = img.size
    new = _resized_size(w, h, int(prep["resize"]))
    if new != (w, h):
        img = img.resize(new, PIL_FILTERS[prep["interpolation"]])
    a = _center_crop(np.asarray(img, dtype=np.uint8), int(prep["img_size"]))
    a = a[:, :, None] if a.ndim == 2 else a
    x = a.transpose(2, 0, 1).astype(np.float32) / np.float32(prep["scale"])
    mean = np.asarray(prep["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(prep["std"], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std)


def open_image(source) -> Image.Image:
    """The decoded RGB image of a file (path, or binary file object such as a request body), read by the
    project's image reader (`common.readers.read_image`, as `torch_impl.data` reads data sets): BadFileError
    naming the file when it is not an image, FileNotFoundError when there is none."""
    try:
        return read_image(source)
    except BadFileError as err:
        if isinstance(source, (str, os.PathLike)):
            raise
        raise BadFileError(getattr(source, "name", "the image data"), err.expected, err.problem) from None


def preprocess_image_file(path, manifest) -> np.ndarray:
    """An image file (path or binary file object) -> (C, H, W) float32, as the manifest's preprocessing says."""
    return preprocess_image(open_image(path), manifest)


def list_images(folder) -> list[str]:
    """Image files under `folder` (recursively, by suffix), sorted; DeployError when there are none."""
    if not os.path.isdir(folder):
        raise DeployError(f"--image-folder {folder}: no such folder")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise DeployError(f"--image-folder {folder}: no image files (expected files ending in "
                          f"{', '.join(IMAGE_SUFFIXES)})")
    return found
