"""Uploaded files to decoded images for the BentoML services, or a 400 that names the field."""

from pathlib import Path, PurePosixPath
from typing import BinaryIO, Union

from bentoml.exceptions import InvalidArgument
from PIL import Image
from pydantic_core import PydanticCustomError, core_schema
from starlette.datastructures import UploadFile

from services.images import MAX_UPLOAD_BYTES, InvalidImageError, decode_image


class UploadedFile(PurePosixPath):
    """The type of the services' file fields: a multipart upload read where the parser left it, in memory
    (or in Starlette's spool file past 1 MB). BentoML's own `Path` fields copy every upload into a new
    temporary file before the endpoint runs and delete it after: 0.73 ms of a two-file request on 2 cores
    (README, "Uploads read in memory"). As a pure path (the upload's file name), it is what BentoML treats
    as a multipart file field, in requests, in its Python client and in the OpenAPI document."""

    file: BinaryIO
    size: int

    @classmethod
    def from_upload(cls, value: object) -> "UploadedFile":
        if not isinstance(value, UploadFile):
            raise PydanticCustomError("file_type", "expected a file upload")
        upload = cls(value.filename or "upload")
        upload.file, upload.size = value.file, value.size
        return upload

    def read_bytes(self) -> bytes:
        self.file.seek(0)
        return self.file.read()

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        return core_schema.no_info_plain_validator_function(cls.from_upload)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema, handler):
        # what BentoML's FileSchema declares for a Path field
        return {"type": "file", "format": "binary"} if handler.mode == "validation" else {"type": "string", "format": "binary"}


# An image file as the handlers take it: an upload in a served request, a saved file in process
# (`pipelines predict`, the benchmarks).
ImageFile = Union[UploadedFile, Path]


def read_upload(upload: ImageFile, field: str, color_mode: str = "RGB") -> Image.Image:
    """An uploaded (or, in process, saved) image file to a decoded image, or a 400 (InvalidArgument) naming
    the field and the problem."""
    try:
        size = upload.size if isinstance(upload, UploadedFile) else upload.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise InvalidImageError(field, f"the upload is {size:,} bytes, more than {MAX_UPLOAD_BYTES:,}")
        return decode_image(upload.read_bytes(), field, color_mode)
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
