"""The route path of a request, as Starlette routes it (raylane tested starlette 1.10.0).

Starlette computes it with the private `starlette._utils.get_route_path`. raylane computes the same
from the ASGI scope's public keys instead; `tests/unit/test_compat_serving.py` checks the two
still agree, so a Starlette release that routes differently under a `root_path` is caught there.
"""

from __future__ import annotations

from starlette.types import Scope

TESTED = "1.10.0"


def route_path(scope: Scope) -> str:
    """Returns the request path without the app's mount point (ASGI `root_path`), e.g. '/invocations'
    for '/prefix/invocations' under root_path '/prefix'; the path itself when it is not under it."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path):]
    return rest if rest == "" or rest.startswith("/") else path
