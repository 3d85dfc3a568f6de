"""Text service: a text (or a batch of texts) in, the class and its probabilities out.

Each text gets what fastai's `learn.predict` gives it alone, whatever else is in the batch. Empty
texts and texts over `TEXT_MAX_CHARS` characters are a 400 naming the text; a body that is not valid
UTF-8 JSON is a 400 from BentoML's own validation.
"""

from __future__ import annotations

import os
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from pydantic import Field

from services.loading import ServedTask, TaskHandler, service_model, softmax
from services.runtime import configured_request_threads
from services.schemas import TextPrediction, TextResponse
from services.text_preprocessing import Numericalizer, batch_ids, tokenize

TASK = "text"
MODEL = service_model(TASK)
MAX_CHARS = int(os.environ.get("TEXT_MAX_CHARS", "100000"))
MAX_TEXTS = int(os.environ.get("TEXT_MAX_BATCH", "64"))
Texts = Annotated[list[str], Field(min_length=1, max_length=MAX_TEXTS)]


class TextHandler(TaskHandler):
    task = TASK

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.numericalize = Numericalizer(self.spec)
        tokenize("warm up the tokenizer", self.spec)

    def infer(self, ids: list[list[int]]) -> np.ndarray:
        """Token ids of each text to its class probabilities."""
        tokens, lengths = batch_ids(ids, self.spec.pad_index)
        return softmax(self.model.run({"tokens": tokens, "lengths": lengths}))

    def classify(self, texts: list[str]) -> TextResponse:
        for index, text in enumerate(texts):
            where = f"texts[{index}]" if len(texts) > 1 else "text"
            if not text.strip():
                raise InvalidArgument(f"{where}: the text is empty")
            if len(text) > MAX_CHARS:
                raise InvalidArgument(f"{where}: the text has {len(text):,} characters, more than {MAX_CHARS:,}")
        ids = [self.numericalize(tokenize(text, self.spec)) for text in texts]
        probabilities = self.infer(ids)
        labels = self.manifest.labels
        predictions = [
            TextPrediction(label=labels[int(np.argmax(row))], probabilities={l: float(p) for l, p in zip(labels, row)},
                           tokens=len(one))
            for row, one in zip(probabilities, ids)
        ]
        return TextResponse(predictions=predictions, **self.served_by())

    def describe(self) -> dict:
        return {**super().describe(), "vocab_size": len(self.spec.vocab), "max_len": self.spec.max_len}


class TextEndpoints:
    """The public endpoints in the all-models Bento (services/pipelines.py)."""

    @bentoml.api(route="/text/classify")
    def text_classify(self, text: str) -> TextResponse:
        """Text: classify one text."""
        return self.handlers[TASK].classify([text])

    @bentoml.api(route="/text/classify_batch")
    def text_classify_batch(self, texts: Texts) -> TextResponse:
        """Text: classify several texts; each gets the answer it would get alone."""
        return self.handlers[TASK].classify(texts)


@bentoml.service(name="text", traffic={"timeout": 120}, threads=configured_request_threads())
class TextService:
    model_ref = MODEL

    def __init__(self) -> None:
        self.handler = TextHandler.from_store(self.model_ref)

    @bentoml.api
    def classify(self, text: str) -> TextResponse:
        """Classify one text."""
        return self.handler.classify([text])

    @bentoml.api
    def classify_batch(self, texts: Texts) -> TextResponse:
        """Classify several texts at once; each gets the same answer it would get alone."""
        return self.handler.classify(texts)

    @bentoml.api
    def model_info(self) -> dict:
        """The model version, the ONNX Runtime provider in use, labels, vocabulary size and metrics."""
        return self.handler.describe()


SERVED = ServedTask(TASK, MODEL, TextHandler, TextEndpoints, TextService)
