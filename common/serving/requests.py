"""One prediction request, checked before it joins a batch: an encoded image file and an optional budget.

Every refusal is a `RequestError` with the HTTP status and a message that names what was expected, so the
service answers 4xx and goes on serving:

- 415: a Content-Type other than image/png or image/jpeg;
- 413: a body larger than the limit;
- 400: an empty body, bytes that do not decode as that image type, an image of the wrong size (a side below
  `min_side` or more than `max_pixels` pixels), a budget that is not a finite positive number;
- 422: a budget the model cannot meet (below the cost of its cheapest threshold set).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from common.deploy.preprocess import preprocess_image

CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


class RequestError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class RequestLimits:
    max_bytes: int = 8 * 1024 * 1024  # encoded body
    min_side: int = 8  # pixels; the smallest side of an image
    max_pixels: int = 25_000_000  # width * height


def parse_budget(text: str | None, lowest: float | None = None) -> float | None:
    """The `budget` query parameter (GFLOPs per image) -> float, or None when absent."""
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise RequestError(400, f"budget must be a number of GFLOPs per image, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise RequestError(400, f"budget must be a finite positive number of GFLOPs per image, got {text!r}")
    if lowest is not None and value < lowest * (1 - 1e-9):
        raise RequestError(422, f"budget {value:.6g} GFLOPs per image is below what this model can spend: its "
                                f"cheapest threshold set costs {lowest:.6g} GFLOPs per image")
    return value


def content_kind(content_type: str | None) -> str:
    """'PNG' or 'JPEG' from the Content-Type header (parameters such as charset ignored)."""
    base = (content_type or "").split(";")[0].strip().lower()
    if base not in CONTENT_TYPES:
        raise RequestError(415, f"Content-Type must be image/png or image/jpeg (the raw encoded file as the body), "
                                f"got {content_type or 'none'!r}")
    return CONTENT_TYPES[base]


def decode_image(body: bytes, kind: str, limits: RequestLimits) -> Image.Image:
    """The decoded image of a request body, checked against the declared type and the size limits."""
    if len(body) > limits.max_bytes:
        raise RequestError(413, f"the body has {len(body)} bytes; at most {limits.max_bytes} are accepted")
    if not body:
        raise RequestError(400, f"empty body: expected a {kind} file")
    try:
        with Image.open(io.BytesIO(body)) as img:
            if img.format != kind:
                raise RequestError(400, f"the body is a {img.format or 'unknown'} image but Content-Type says {kind}")
            w, h = img.size
            if min(w, h) < limits.min_side or w * h > limits.max_pixels:
                raise RequestError(400, f"wrong image size {w}x{h}: each side must be at least {limits.min_side} "
                                        f"pixels and the image at most {limits.max_pixels} pixels")
            img.load()
            return img.copy()
    except RequestError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise RequestError(400, f"the body is not a decodable {kind} file ({type(err).__name__}: {err})") from None


def request_image(body: bytes, content_type: str | None, preprocessing: dict, limits: RequestLimits) -> np.ndarray:
    """(C, H, W) float32: the body decoded and put through the evaluation preprocessing of the model."""
    return preprocess_image(decode_image(body, content_kind(content_type), limits), preprocessing)


def json_ready(value):
    """`value` with every non-finite float written as the string "inf", "-inf" or "nan", recursively through
    dicts, lists and tuples. JSON has no infinities (Starlette's JSONResponse refuses them), and thresholds hold
    them: inf at an exit nobody may leave, -inf at the last exit, which takes everyone."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
