"""What the API answers when a request cannot be served: an HTTP status and an OpenAI-style error body.

Clients written for OpenAI's API read `{"error": {"message", "type", "param", "code"}}`; every refusal
here (bad JSON, a wrong type, an unknown model, a prompt too long, a bad key, a full server) has that
shape and a 4xx status. Only a bug in chat-pipeline is a 500.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)
