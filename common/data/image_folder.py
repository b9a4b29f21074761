"""ImageNet-layout trees (`root/<class>/<image>`): a sorted, validated file list both loaders share."""
from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def list_image_folder(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """([(path, class_index)], class_names) with classes and files in sorted order (torchvision's)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist (expected root/<class>/<image> files)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"image folder {root!r} has no class sub-folders (expected root/<class>/<image>)")
    samples = []
    for idx, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
            for fname in sorted(files):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, fname), idx))
    if not samples:
        raise FileNotFoundError(f"image folder {root!r} has class folders {classes[:5]} but no images with "
                                f"extensions {IMAGE_EXTENSIONS}")
    return samples, classes
