"""Bearer-token auth for the endpoint (RFC 6750), off unless `serve.auth` names where tokens live.

Several tokens may be valid at once, so a client can move to a new token before the old one is
removed. Only SHA-256 digests are kept in memory; a presented token is compared with every digest
in constant time, and no token or digest is ever logged or put in an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

from raylane import env
from raylane.config import AuthConfig
from raylane.errors import ConfigError

# Routes a load balancer, an orchestrator or a browser reading the docs must reach without a token.
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/health", "/-/healthz",
                        "/docs", "/docs/oauth2-redirect", "/openapi.json"})
CHALLENGE = 'Bearer realm="raylane"'
log = logging.getLogger("ray.serve")


def read_tokens(cfg: AuthConfig) -> list[str]:
    """Returns the accepted tokens; ConfigError naming the source when there are none."""
    tokens: list[str] = []
    if cfg.token_env:
        tokens += [t for t in re.split(r"[\s,]+", env.configured(cfg.token_env)) if t]
    if cfg.token_file:
        try:
            with open(cfg.token_file, encoding="utf-8") as f:
                lines = [line.split("#", 1)[0].strip() for line in f]
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"serve.auth.token_file: cannot read {cfg.token_file!r}: {reason}") from err
        tokens += [line for line in lines if line]
    if not tokens:
        sources = " or ".join(filter(None, [cfg.token_env and f"${cfg.token_env}",
                                            cfg.token_file and repr(cfg.token_file)]))
        raise ConfigError(f"serve.auth is on but {sources} holds no token; the endpoint would "
                          "refuse every request (set a token, or remove serve.auth)")
    return tokens


class TokenAuth:
    """Checks `Authorization` headers against the configured tokens."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.cfg = cfg
        self._digests = self._load()

    def reload(self) -> None:
        """Re-reads the sources (token rotation). A source that now holds no token, or cannot be
        read, revokes every token: removing the file or emptying it must lock the endpoint."""
        try:
            self._digests = self._load()
        except Exception as err:  # ConfigError, OSError, a file that is not text...
            self._digests = []
            log.error("raylane: serve.auth now refuses every request: %s", err)

    def check(self, authorization: str | None) -> str | None:
        """Returns None if the header carries a valid token, else the reason to refuse."""
        if not authorization:
            return "missing bearer token: send 'Authorization: Bearer <token>'"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "the Authorization header must be 'Bearer <token>'"
        presented = hashlib.sha256(token.strip().encode()).digest()
        valid = False
        for digest in self._digests:  # no early exit: the time taken does not say which one matched
            valid |= hmac.compare_digest(presented, digest)
        return None if valid else "invalid bearer token"

    def _load(self) -> list[bytes]:
        return [hashlib.sha256(t.encode()).digest() for t in read_tokens(self.cfg)]
