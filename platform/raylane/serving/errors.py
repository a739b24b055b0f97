"""The errors a request to the endpoint can get, by what was wrong with it.

Call sites raise these with a message that names the field or value and what would be accepted;
the HTTP boundary (`raylane.serving.app.STATUS`, one table) turns each type into its status and
the protocol's body shape. A version or model the endpoint does not serve is
`raylane.errors.ModelNotFoundError` (404 there).
"""

from __future__ import annotations

from typing import Any

from raylane.errors import RaylaneError


class RequestError(RaylaneError):
    """A request the endpoint refuses; the base of the types below."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        """MLflow's own code for the refusal (`/invocations` answers with it); None: BAD_REQUEST."""


class InvalidInput(RequestError):
    """The body cannot be read as the protocol's request for this model (400)."""


class UnprocessableEntity(RequestError):
    """A well-formed V1 request with a value of the wrong type, as a JSON schema check says (422)."""


class UnsupportedMediaType(RequestError):
    """A content type or charset `/invocations` does not take (415)."""


class PayloadTooLarge(RequestError):
    """A request body over `serve.max_body_bytes`, or an image declaring more pixels than
    `raylane.images.MAX_PIXELS` (413)."""


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """One line naming the first invalid field of pydantic's `errors()`, e.g.
    'inputs.0.shape: Input should be a valid list'."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return f"{where}: {first['msg']}"
