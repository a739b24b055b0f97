"""Ray Serve stage: the inference application and its deployment."""

# The replica's ModelServer, once constructed (one replica per process). The ASGI middleware of
# the FastAPI app reads it here: Serve runs a pickled copy of the app, so module-level state of
# the app's own module is not a reliable meeting point, while this package is always imported.
REPLICA: dict = {}
