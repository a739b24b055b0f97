"""The errors a request to the endpoint can get, by what was wrong with it.

Call sites raise these with a message that names the field or value and what would be accepted;
the HTTP boundary (`raylane.serving.app.STATUS`, one table) turns each type into its status and
the protocol's body shape. A version or model the endpoint does not serve is
`raylane.errors.ModelNotFoundError` (404 there).
"""

from __future__ import annotations

import json
import math
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
    """A content type an inference route does not take, or a charset `/invocations` does not (415)."""


class RequestTimeout(RequestError):
    """A request body not received within `serve.body_timeout_s` of the request's start (408)."""


class PayloadTooLarge(RequestError):
    """A request body over `serve.max_body_bytes`, or an image declaring more pixels than
    `raylane.images.MAX_PIXELS` (413)."""


EXPECTED = {"finite_number": "a finite number", "int_type": "a number", "float_type": "a number",
            "bool_type": "true/false", "string_type": "text", "list_type": "a list", "dict_type": "an object"}
"""What a value was expected to be, by the type of pydantic's error; the alternatives of a union
that a value failed are merged into one 'expected ..., got ...'."""


def describe_validation(errors: list[dict[str, Any]], body: Any = None) -> str:
    """One line naming the first problem in pydantic's `errors()`, e.g.
    'instances[0][3]: expected a finite number, got NaN' (see `validation_problems`)."""
    problems = validation_problems(errors, body) or [{"loc": (), "msg": "invalid request"}]
    return f"{json_path(problems[0]['loc'])}: {problems[0]['msg']}"


def validation_problems(errors: list[dict[str, Any]], body: Any = None) -> list[dict[str, Any]]:
    """pydantic's `errors()` as one {type, loc, msg} per real problem. pydantic reports a value that
    fails a union once per alternative, with the alternative's name in `loc` (and a wrong row shape
    once more a level up); here they are one entry at the value's place in the request: for errors
    located under "body" that place is read from the request `body` itself."""
    by_place: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for error in errors:
        by_place.setdefault(_place(error, body), []).append(error)
    # A place with problems below it is a union alternative the value was not (a list, not an object).
    real = [p for p in by_place if not any(len(q) > len(p) and q[:len(p)] == p for q in by_place)]
    return [_merged(place, by_place[place]) for place in real]


def _place(error: dict[str, Any], body: Any) -> tuple[Any, ...]:
    loc = tuple(error.get("loc", ()))
    if not loc or loc[0] != "body":
        return loc
    place, value = ["body"], body
    for i, part in enumerate(loc[1:], start=1):
        if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        elif not (error.get("type") == "missing" and i == len(loc) - 1):
            continue  # a union alternative's name, not a key of the request
        place.append(part)
    return tuple(place)


def _merged(place: tuple[Any, ...], errors: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = [e.get("type", "") for e in errors]
    other = next((e for e in errors if e.get("type") not in EXPECTED), None)
    if other is not None:  # not a value of the wrong type: pydantic's own words
        return {"type": other.get("type"), "loc": place, "msg": other.get("msg", "invalid")}
    # A number that is not finite failed only for being a number; the other alternatives are noise.
    kind = "finite_number" if "finite_number" in kinds else kinds[0]
    expected = list(dict.fromkeys(EXPECTED[k] for k in ([kind] if kind == "finite_number" else kinds)))
    said = expected[0] if len(expected) == 1 else f"{', '.join(expected[:-1])} or {expected[-1]}"
    return {"type": kind, "loc": place, "msg": f"expected {said}, got {shown(errors[0].get('input'))}"}


def json_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """A request location as a client writes it: ('body', 'instances', 0, 'age') -> 'instances[0].age'."""
    text = ""
    for part in (p for p in loc if p != "body"):
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).isidentifier():
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(str(part))}]"
    return text or "body"


def shown(value: Any, limit: int = 40) -> str:
    """A value as the client wrote it in JSON (NaN, Infinity, -Infinity included), cut to `limit`."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
