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


def tolerate_unexpected_multipart_fields() -> None:
    """BentoML 1.4's multipart parser JSON-decodes every form field an endpoint does not declare; a file
    sent under another field name (binary bytes) raises UnicodeDecodeError there, which BentoML answers
    with a 500. Wrapped here (once), that becomes a 400 naming the missing and the unexpected fields.
    tests/test_hostile_inputs.py sends such requests to every file endpoint."""
    from _bentoml_impl.serde import MultipartSerde

    original = MultipartSerde.parse_request
    if getattr(original, "names_unexpected_fields", False):
        return

    async def parse_request(self, request, cls):
        try:
            return await original(self, request, cls)
        except UnicodeDecodeError:
            form = await request.form()
            sent = list(dict.fromkeys(form.keys()))
            missing = [name for name, field in cls.model_fields.items() if field.is_required() and name not in sent]
            unexpected = [name for name in sent if name not in cls.model_fields]
            raise InvalidArgument(
                f"missing field(s) {', '.join(missing) or '-'}; unexpected field(s) {', '.join(unexpected)} "
                f"(this endpoint takes {', '.join(cls.model_fields)})") from None

    parse_request.names_unexpected_fields = True
    MultipartSerde.parse_request = parse_request
