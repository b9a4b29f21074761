"""Framework-neutral data sources: arrays and file lists that both trainers wrap in their own loaders."""
from .cifar import load_cifar
from .digits import load_digits_images
from .image_folder import list_image_folder

__all__ = ["load_cifar", "load_digits_images", "list_image_folder"]
