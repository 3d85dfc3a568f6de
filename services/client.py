"""A typed Python client for the all-models Bento (bentofile.yaml): one method per endpoint.

    from services.client import PipelinesClient

    with PipelinesClient("http://localhost:3000") as client:
        client.compare("cat1.jpg", "cat2.jpg").same
        client.segment("street.png")                   # PIL image, pixel value = class index
        client.classify("A lovely, fresh coffee.").predictions[0].label
        client.predict_records([{"island": "Biscoe", ...}]).predictions[0].prediction
        client.classify_image("cat.jpg", k=3).predictions[0].label

It needs only httpx, pydantic and Pillow (no ONNX Runtime, no model store). A 4xx or 5xx answer raises
PipelinesRequestError with the status and the server's message.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import httpx
from PIL import Image

from services.schemas import ClassifierResponse, SegmentationSummary, SiamesePrediction, TabularResponse, TextResponse

ImageInput = Union[str, Path, bytes, Image.Image]


class PipelinesRequestError(RuntimeError):
    """The server answered with an error; `status` is the HTTP status, `message` what the server said."""

    def __init__(self, endpoint: str, status: int, message: str):
        self.endpoint = endpoint
        self.status = status
        self.message = message
        super().__init__(f"{endpoint}: HTTP {status}: {message}")


def error_message(response: httpx.Response) -> str:
    """The services' one error shape: {"error": "<one line>", "detail": [...]}."""
    try:
        return str(response.json()["error"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase


def image_upload(image: ImageInput, name: str) -> tuple[str, bytes]:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return f"{name}.png", buffer.getvalue()
    if isinstance(image, bytes):
        return name, image
    path = Path(image)
    return path.name, path.read_bytes()


class PipelinesClient:
    def __init__(self, url: str = "http://localhost:3000", timeout: float = 60.0, **httpx_options: Any):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, **httpx_options)

    def __enter__(self) -> "PipelinesClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _post(self, endpoint: str, **request: Any) -> httpx.Response:
        response = self.http.post(endpoint, **request)
        if response.status_code >= 400:
            raise PipelinesRequestError(endpoint, response.status_code, error_message(response))
        return response

    def _image(self, endpoint: str, image: ImageInput) -> httpx.Response:
        return self._post(endpoint, files={"image": image_upload(image, "image")})

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def compare(self, image_a: ImageInput, image_b: ImageInput) -> SiamesePrediction:
        """Siamese: are the two images of the same class?"""
        files = {"image_a": image_upload(image_a, "image_a"), "image_b": image_upload(image_b, "image_b")}
        return SiamesePrediction.model_validate_json(self._post("/siamese/predict", files=files).content)

    def segment(self, image: ImageInput) -> Image.Image:
        """U-Net: the class mask (mode L, the upload's size; pixel value = class index)."""
        return Image.open(io.BytesIO(self._image("/unet/segment", image).content))

    def segmentation_summary(self, image: ImageInput) -> SegmentationSummary:
        """U-Net: the classes present with their pixel counts and coverage."""
        return SegmentationSummary.model_validate_json(self._image("/unet/summary", image).content)

    def overlay(self, image: ImageInput) -> Image.Image:
        """U-Net: the upload with each class painted in its own colour."""
        return Image.open(io.BytesIO(self._image("/unet/overlay", image).content))

    def classify(self, text: str) -> TextResponse:
        """Text: the class of one text."""
        return TextResponse.model_validate_json(self._post("/text/classify", json={"text": text}).content)

    def classify_batch(self, texts: list[str]) -> TextResponse:
        """Text: the class of each text, as each would get alone."""
        return TextResponse.model_validate_json(self._post("/text/classify_batch", json={"texts": texts}).content)

    def predict_records(self, records: list[dict]) -> TabularResponse:
        """Tabular: a prediction for each record (a dict keyed by column name)."""
        return TabularResponse.model_validate_json(self._post("/tabular/predict", json={"records": records}).content)

    def classify_image(self, image: ImageInput, k: int = 5) -> ClassifierResponse:
        """Classifier: the k most probable classes of one image."""
        response = self._post("/classifier/predict", files={"image": image_upload(image, "image")}, data={"k": str(k)})
        return ClassifierResponse.model_validate_json(response.content)

    def classify_images(self, images: list[ImageInput], k: int = 5) -> ClassifierResponse:
        """Classifier: the k most probable classes of each image, in order."""
        files = [("images", image_upload(image, f"image{n}")) for n, image in enumerate(images)]
        response = self._post("/classifier/predict_batch", files=files, data={"k": str(k)})
        return ClassifierResponse.model_validate_json(response.content)

    def models(self) -> dict[str, dict]:
        """Each task's model version, provider in use, inputs, outputs, labels and training metrics."""
        response = self.http.get("/models")
        if response.status_code >= 400:
            raise PipelinesRequestError("/models", response.status_code, error_message(response))
        return response.json()


EXAMPLE_REVIEW = ("I bought this coffee for the office and it was a great surprise: rich, smooth, never bitter, "
                  "and the beans arrived fresh. The price is fair for the quality. Would buy again!")


def example_image(width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A PNG of random pixels: a valid upload of a typical size for load tests (not a meaningful image)."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def example_requests(models: dict[str, dict]) -> dict[str, Any]:
    """One valid request per public endpoint of the tasks `/models` lists, each a function of an
    httpx.Client whose base URL is the server: for load tests (`pipelines bench --url`)."""
    first, second = example_image(seed=1), example_image(seed=2)
    builders = {
        "siamese": {"/siamese/predict": lambda http: http.post(
            "/siamese/predict", files={"image_a": ("a.png", first), "image_b": ("b.png", second)})},
        "unet": {"/unet/segment": lambda http: http.post("/unet/segment", files={"image": ("i.png", first)})},
        "text": {"/text/classify": lambda http: http.post("/text/classify", json={"text": EXAMPLE_REVIEW})},
        "tabular": {"/tabular/predict": lambda http: http.post(
            "/tabular/predict", json={"records": [models["tabular"]["example_record"]]})},
        "classifier": {"/classifier/predict": lambda http: http.post(
            "/classifier/predict", files={"image": ("i.png", first)}, data={"k": "3"})},
    }
    return {route: call for task in models if task in builders for route, call in builders[task].items()}
