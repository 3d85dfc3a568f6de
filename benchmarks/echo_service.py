"""BentoML's floors, served the same way as our Bento (for bench_overhead): a do-nothing JSON endpoint, the
same reading two uploaded files (as BentoML's `Path` fields and as the services' `UploadedFile` fields),
and, on a Starlette app mounted in the service (where BentoML's middlewares, `/metrics` and `/readyz` still
apply), the file echo and the Siamese endpoint without BentoML's request parsing: how far a mounted ASGI
route would take the file endpoints. The `..._after_wait` variants read the files after 5 ms of sleeping: what
any endpoint that takes a few milliseconds pays beyond the echo and its own work on this machine, with no
work of ours at all (cores that go idle while a request waits are slower to wake)."""

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from services.images import decode_image
from services.uploads import UploadedFile

mounted = Starlette()


async def form_files(request, *fields: str) -> list[bytes]:
    form = await request.form()
    return [await form[field].read() for field in fields]


async def mounted_echo_files(request) -> JSONResponse:
    return JSONResponse(sum(len(data) for data in await form_files(request, "image_a", "image_b")))


async def mounted_siamese_predict(request) -> JSONResponse:
    handler = request.app.state.siamese
    data_a, data_b = await form_files(request, "image_a", "image_b")

    def answer():  # decoded and run in a worker thread, as BentoML runs a sync endpoint
        mode = handler.spec.color_mode
        return handler.compare(decode_image(data_a, "image_a", mode), decode_image(data_b, "image_b", mode))

    return JSONResponse((await run_in_threadpool(answer)).model_dump())


WAIT_S = 0.005


BLOCK = bytes(32 * 1024)
HELPER_COUNT = max(1, (os.cpu_count() or 1) - 1)
HELPERS = ThreadPoolExecutor(HELPER_COUNT, thread_name_prefix="busy-helper")


def hash_until(end: float) -> None:
    while time.perf_counter() < end:
        hashlib.sha256(BLOCK)


def busy(milliseconds: float) -> None:
    """Work on every core for that long without holding the GIL, as a model's run in ONNX Runtime does: the
    request's thread and one helper per other core (ONNX Runtime's intra-op threads; a sleeping thread
    would let its core go idle, a Python loop would hold the GIL). hashlib lets the GIL go while it hashes
    blocks of this size."""
    end = time.perf_counter() + milliseconds / 1000
    helpers = [HELPERS.submit(hash_until, end) for _ in range(HELPER_COUNT)]
    hash_until(end)
    for helper in helpers:
        helper.result()


async def mounted_echo_files_after_wait(request) -> JSONResponse:
    await run_in_threadpool(time.sleep, WAIT_S)
    return await mounted_echo_files(request)


mounted.add_route("/echo_files", mounted_echo_files, methods=["POST"])
mounted.add_route("/echo_files_after_wait", mounted_echo_files_after_wait, methods=["POST"])
mounted.add_route("/siamese/predict", mounted_siamese_predict, methods=["POST"])


@bentoml.service(name="echo")
@bentoml.asgi_app(mounted, path="/mounted")
class Echo:
    def __init__(self) -> None:
        from services.siamese import SiameseHandler

        mounted.state.siamese = SiameseHandler.from_store(bentoml.models.get("siamese:latest"))

    @bentoml.api
    def echo(self, x: int) -> int:
        return x

    @bentoml.api
    def echo_files(self, image_a: Path, image_b: Path) -> int:
        return len(image_a.read_bytes()) + len(image_b.read_bytes())

    @bentoml.api
    def echo_uploads(self, image_a: UploadedFile, image_b: UploadedFile) -> int:
        """The same with the services' file type: each upload read where the parser left it."""
        return len(image_a.read_bytes()) + len(image_b.read_bytes())

    @bentoml.api
    def echo_uploads_after_wait(self, image_a: UploadedFile, image_b: UploadedFile) -> int:
        time.sleep(WAIT_S)
        return len(image_a.read_bytes()) + len(image_b.read_bytes())

    @bentoml.api
    def echo_busy(self, x: int, busy_ms: float) -> int:
        """The JSON echo after `busy_ms` of work in the request's thread: the floor of an endpoint whose
        handler takes that long, with nothing of ours in it."""
        busy(busy_ms)
        return x

    @bentoml.api
    def echo_upload_busy(self, image: UploadedFile, busy_ms: float) -> int:
        """The same for one uploaded file (as the U-Net and classifier endpoints take)."""
        busy(busy_ms)
        return len(image.read_bytes())

    @bentoml.api
    def echo_uploads_busy(self, image_a: UploadedFile, image_b: UploadedFile, busy_ms: float) -> int:
        """The same for two uploaded files (as the Siamese endpoint takes)."""
        busy(busy_ms)
        return len(image_a.read_bytes()) + len(image_b.read_bytes())
