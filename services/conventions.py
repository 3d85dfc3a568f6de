"""HTTP conventions every service keeps, as one ASGI middleware (BentoML's `add_asgi_middleware`):

- `GET /models`: each task's model tag, provider, precision, inputs, labels and metrics (BentoML's API
  routes take POST only; POST /models stays for older clients).
- One error shape: every 4xx/5xx JSON answer, ours or BentoML's own (validation errors come as
  `{"error": "6 validation error for Input", "detail": [...]}`, others wrapped in a list), is rewritten to
  `{"error": "<one line naming the field or record>", "detail": [...]}`.
- A client's bad request is one WARNING line in the server log ("Client error 400 on /path [POST]: <what
  was wrong>"); BentoML logs it at ERROR with a traceback, as it does a failure of the server's own.
"""

from __future__ import annotations

import json
import logging

from services.messages import message_line

BENTOML_ENDPOINT_LOGGER = "bentoml._internal.server.http_app"  # where BentoML's log_exception writes


def error_line(error: str, detail: list) -> str:
    """One line that names what was wrong: pydantic's field locations and messages when there are any."""
    named = []
    for item in detail:
        if isinstance(item, dict) and "msg" in item:
            where = ".".join(str(part) for part in item.get("loc", []) if part != "body")
            named.append(f"{where}: {item['msg']}" if where else str(item["msg"]))
    line = "; ".join(named) if named else error
    return " ".join(line.split())[:1000]


def one_error_shape(body: bytes) -> bytes:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = {"error": body.decode("utf-8", "replace")}
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        parsed = {"error": json.dumps(parsed)}
    detail = parsed.get("detail")
    detail = detail if isinstance(detail, list) else ([] if detail is None else [detail])
    error = str(parsed.get("error") or parsed.get("message") or "request failed")
    return json.dumps({"error": error_line(error, detail), "detail": detail}).encode()


def client_error(exception: BaseException | None) -> tuple[int, str] | None:
    """(status, one line) where an endpoint's exception is the client's doing (BentoML answers it with a
    4xx), None where it is the server's."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exception, ValidationError):
        return 400, error_line(message_line(exception), exception.errors(include_context=False, include_input=False))
    if isinstance(exception, BentoMLException) and 400 <= exception.error_code.value < 500:
        return exception.error_code.value, message_line(exception, limit=1000)
    return None


class ClientErrorsInOneLine(logging.Filter):
    """Rewrites BentoML's "Exception on PATH [METHOD]" record of a 4xx into one WARNING line without the
    traceback; a 5xx keeps its ERROR and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = client_error(record.exc_info[1]) if record.exc_info else None
        if found is not None:
            status, line = found
            where = record.getMessage().removeprefix("Exception on ")
            record.msg, record.args = "Client error %d on %s: %s", (status, where, line)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def log_client_errors_in_one_line() -> None:
    logger = logging.getLogger(BENTOML_ENDPOINT_LOGGER)
    if not any(isinstance(existing, ClientErrorsInOneLine) for existing in logger.filters):
        logger.addFilter(ClientErrorsInOneLine())


def models_info() -> dict:
    import bentoml

    service = bentoml.get_current_service()
    handlers = getattr(service, "handlers", None) or {service.handler.task: service.handler}
    return {task: handler.describe() for task, handler in handlers.items()}


class ServingConventions:
    def __init__(self, app):
        self.app = app
        log_client_errors_in_one_line()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD") and scope["path"].rstrip("/") == "/models":
            return await self.send_json(send, 200, json.dumps(models_info()).encode())
        held: dict = {}

        async def reshape_errors(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"], held["body"] = message, b""
                return
            if "start" in held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if not message.get("more_body"):
                    await self.send_json(send, held["start"]["status"], one_error_shape(held["body"]),
                                         [(k, v) for k, v in held["start"].get("headers", [])
                                          if k.lower() not in (b"content-length", b"content-type")])
                return
            await send(message)

        await self.app(scope, receive, reshape_errors)

    @staticmethod
    async def send_json(send, status: int, body: bytes, headers: list | None = None) -> None:
        headers = [*(headers or []), (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
