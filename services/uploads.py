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


def guard_multipart_parsing() -> None:
    """Wraps BentoML 1.4's multipart parser (once) so that two kinds of bad request are a 400 naming the
    fields instead of a 500:
    - a file sent under another field name: BentoML JSON-decodes every form field an endpoint does not
      declare, and binary bytes raise UnicodeDecodeError there;
    - text where a file belongs: BentoML takes a text value of a file field for a URL and downloads it on the
      client's behalf, and anything that is not a reachable URL fails. The services take uploads only, so
      the server never fetches what a client names.
    tests/test_hostile_inputs.py sends such requests to every file endpoint."""
    from _bentoml_impl.serde import MultipartSerde

    original = MultipartSerde.parse_request
    if getattr(original, "guarded", False):
        return

    async def parse_request(self, request, cls):
        form = await request.form()  # Starlette parses once and keeps it for the original parser
        not_files = [name for name in cls.multipart_fields
                     if any(not isinstance(value, UploadFile) for value in form.getlist(name))]
        if not_files:
            raise InvalidArgument(f"{', '.join(not_files)}: expected a file upload, got a text field (send the file "
                                  "itself, as a multipart file)")
        try:
            return await original(self, request, cls)
        except UnicodeDecodeError:
            sent = list(dict.fromkeys(form.keys()))
            missing = [name for name, field in cls.model_fields.items() if field.is_required() and name not in sent]
            unexpected = [name for name in sent if name not in cls.model_fields]
            raise InvalidArgument(
                f"missing field(s) {', '.join(missing) or '-'}; unexpected field(s) {', '.join(unexpected)} "
                f"(this endpoint takes {', '.join(cls.model_fields)})") from None

    parse_request.guarded = True
    MultipartSerde.parse_request = parse_request
