"""File fields as BentoML parses them for our endpoints: kept where the multipart parser left them (no copy
into a temporary file per upload), size-checked before they are read, and declared as files to clients."""

import asyncio

import httpx
import pytest
from bentoml._internal.context import ServiceContext
from bentoml.exceptions import InvalidArgument
from starlette.requests import Request

from services.client import example_image
from services.classifier import ClassifierService
from services.siamese import SiameseService
from services.uploads import UploadedFile, read_upload


def parse_with_bentoml(service, api: str, **request_args):
    """The endpoint's input as BentoML's HTTP server builds it from a request, and whether BentoML had to
    take a per-request temporary folder for it."""
    from _bentoml_impl.serde import MultipartSerde

    sent = httpx.Request("POST", "http://127.0.0.1/", **request_args)
    body = sent.read()
    headers = [(name.lower().encode(), value.encode()) for name, value in sent.headers.items()]

    async def parse():
        delivered = False

        async def receive():
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)
        with ServiceContext().in_request(request):
            parsed = await service.apis[api].input_spec.from_http_request(request, MultipartSerde())
            return parsed, hasattr(request.state, "temp_dir")

    return asyncio.run(parse())


def test_siamese_uploads_are_read_in_memory_with_their_names():
    first, second = example_image(seed=1), example_image(seed=2)
    parsed, used_temp_folder = parse_with_bentoml(
        SiameseService, "predict", files={"image_a": ("first.png", first), "image_b": ("second.png", second)})
    assert isinstance(parsed.image_a, UploadedFile) and isinstance(parsed.image_b, UploadedFile)
    assert (parsed.image_a.name, parsed.image_a.size, parsed.image_a.read_bytes()) == ("first.png", len(first), first)
    assert parsed.image_b.read_bytes() == second
    assert parsed.image_b.read_bytes() == second  # read again from the start
    assert not used_temp_folder


def test_a_list_of_uploads_and_a_form_value_parse_together():
    images = [example_image(seed=seed) for seed in range(3)]
    parsed, _ = parse_with_bentoml(ClassifierService, "predict_batch", data={"k": "2"},
                                   files=[("images", (f"{i}.png", data)) for i, data in enumerate(images)])
    assert parsed.k == 2
    assert [upload.read_bytes() for upload in parsed.images] == images


def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(monkeypatch):
    import services.uploads

    parsed, _ = parse_with_bentoml(SiameseService, "predict", files={"image_a": ("a.png", example_image(32, 32)),
                                                                     "image_b": ("b.png", example_image())})
    monkeypatch.setattr(services.uploads, "MAX_UPLOAD_BYTES", parsed.image_b.size - 1)
    parsed.image_b.file.close()  # reading it would fail: the size alone must decide
    with pytest.raises(InvalidArgument, match=f"image_b: the upload is {parsed.image_b.size:,} bytes, more than"):
        read_upload(parsed.image_b, "image_b")
    assert read_upload(parsed.image_a, "image_a").size == (32, 32)


def test_file_fields_are_files_in_the_schema_clients_read():
    schema = SiameseService.apis["predict"].input_spec.model_json_schema()
    assert SiameseService.apis["predict"].input_spec.multipart_fields == ["image_a", "image_b"]
    assert schema["properties"]["image_a"] == {"type": "file", "format": "binary", "title": "Image A"}
