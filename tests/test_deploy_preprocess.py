"""common.deploy.preprocess (numpy + PIL) equals the evaluation transform of torch_impl/evaluate.py (timm's),
bit for bit, on real PNG and JPEG files of every colour mode, for the tiny and the reference preprocessing,
every PIL filter DVT configs may name, and a crop larger than the resized image (zero padding)."""
import io

import numpy as np
import pytest
from PIL import Image

from common import get_config
from common.data.digits import load_digits_images
from common.deploy import DeployError, eval_preprocessing, preprocess_image_file
from common.deploy.preprocess import list_images
from common.readers import BadFileError
from torch_impl.data import eval_transform


def _files(folder):
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:61, 0:83]
    smooth = np.stack([(xx * 3) % 256, (yy * 4) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    noisy = np.clip(smooth + rng.randint(-40, 40, smooth.shape), 0, 255).astype(np.uint8)
    digits = load_digits_images()[0][:2].transpose(0, 2, 3, 1)  # real handwritten digits
    digits = (digits * 255).round().astype(np.uint8)
    files = []
    for name, arr, mode, fmt in [("rgb.png", noisy, "RGB", "PNG"), ("rgba.png", noisy, "RGBA", "PNG"),
                                 ("gray.png", noisy[..., 0], "L", "PNG"), ("pal.png", noisy, "P", "PNG"),
                                 ("rgb.jpg", noisy, "RGB", "JPEG"), ("gray.jpg", noisy[..., 1], "L", "JPEG"),
                                 ("tall.jpg", noisy.transpose(1, 0, 2), "RGB", "JPEG"),
                                 ("digit0.png", digits[0], "RGB", "PNG"), ("digit1.jpg", digits[1], "RGB", "JPEG")]:
        img = Image.fromarray(arr)
        img = img.convert("RGBA") if mode == "RGBA" else img.quantize(64) if mode == "P" else img
        path = folder / name
        img.save(path, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        files.append(path)
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return _files(tmp_path_factory.mktemp("images"))


CONFIGS = [("dvt_tiny_t2t", {}), ("dvt_t2t_vit_12", {}),
           ("dvt_tiny_deit", {"interpolation": "bicubic", "crop_pct": 0.875}),
           ("dvt_tiny_deit", {"interpolation": "nearest"}),
           ("dvt_tiny_deit", {"interpolation": "lanczos", "crop_pct": 0.95}),
           ("dvt_tiny_deit", {"interpolation": "bilinear", "crop_pct": 1.3})]


IDS = [f"{n}-{'-'.join(f'{v}' for v in o.values())}" for n, o in CONFIGS]


@pytest.mark.parametrize("name, overrides", CONFIGS, ids=IDS)
def test_equal_to_timms_eval_transform(files, name, overrides):
    cfg = get_config(name, **overrides)
    timm_transform = eval_transform(cfg)
    prep = eval_preprocessing(cfg)
    for path in files:
        with Image.open(path) as img:
            expected = timm_transform(img.convert("RGB")).numpy()
        got = preprocess_image_file(path, prep)
        assert got.dtype == np.float32 and got.shape == (3, cfg.img_size, cfg.img_size)
        np.testing.assert_array_equal(got, expected, err_msg=f"{path.name} with {name} {overrides}")


def test_file_objects_and_bad_files(files, tmp_path):
    cfg = get_config("dvt_tiny_t2t")
    np.testing.assert_array_equal(preprocess_image_file(io.BytesIO(files[0].read_bytes()), cfg),
                                  preprocess_image_file(files[0], cfg))
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(BadFileError, match="not_an_image.png: expected a decodable image file .*does not decode"):
        preprocess_image_file(bad, cfg)
    with pytest.raises(BadFileError, match="the image data: expected a decodable image file"):
        preprocess_image_file(io.BytesIO(b"GIF89a garbage"), cfg)
    with pytest.raises(FileNotFoundError):
        preprocess_image_file(tmp_path / "missing.jpg", cfg)
    assert [p.rsplit("/", 1)[-1] for p in list_images(files[0].parent)] == sorted(p.name for p in files)
    with pytest.raises(DeployError, match="no image files"):
        list_images(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("no images here")
    return d
