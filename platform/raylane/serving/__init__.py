"""Ray Serve stage: the inference application and its deployment."""

from contextvars import ContextVar

# The replica's ModelServer, once constructed (one replica per process). The ASGI middleware of
# the FastAPI app reads it here: Serve runs a pickled copy of the app, so module-level state of
# the app's own module is not a reliable meeting point, while this package is always imported.
REPLICA: dict = {}

# The version picked for the request being answered (champion or canary), so that its error
# responses and metrics name it too: set in the route, read by the middleware (one task, one
# context). It lives here for the same reason as REPLICA, and because a ContextVar cannot be pickled.
ANSWERING: ContextVar[str | None] = ContextVar("raylane_answering_version", default=None)
