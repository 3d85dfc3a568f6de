"""Uploaded files to decoded images for the BentoML services, or a 400 that names the field."""

from pathlib import Path

from bentoml.exceptions import InvalidArgument
from PIL import Image

from services.images import MAX_UPLOAD_BYTES, InvalidImageError, decode_image


def read_upload(path: Path, field: str, color_mode: str = "RGB") -> Image.Image:
    """A multipart upload to a decoded image, or a 400 (InvalidArgument) naming the field and the problem."""
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise InvalidImageError(field, f"the upload is {size:,} bytes, more than {MAX_UPLOAD_BYTES:,}")
        return decode_image(path.read_bytes(), field, color_mode)
    except InvalidImageError as error:
        raise InvalidArgument(str(error)) from None
