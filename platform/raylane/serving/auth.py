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
MIN_TOKEN_CHARS = 16
"""Shorter tokens are refused when loaded: a guessable token is no auth."""
log = logging.getLogger("ray.serve")


def read_tokens(cfg: AuthConfig) -> list[str]:
    """Returns the accepted tokens; ConfigError naming the source when there are none, or naming
    where a token shorter than MIN_TOKEN_CHARS is (never the token)."""
    tokens: list[str] = []
    if cfg.token_env:
        listed = [t for t in re.split(r"[\s,]+", env.configured(cfg.token_env)) if t]
        for position, token in enumerate(listed, 1):
            _check_length(token, f"serve.auth.token_env: token {position} of ${cfg.token_env}")
        tokens += listed
    if cfg.token_file:
        try:
            with open(cfg.token_file, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"serve.auth.token_file: cannot read {cfg.token_file!r}: {reason}") from err
        for number, line in enumerate(lines, 1):
            if line and not line.startswith("#"):  # a comment is a whole line: '#' may be in a token
                where = f"serve.auth.token_file: the token at {cfg.token_file}:{number}"
                if any(c.isspace() for c in line):  # `token # laptop`: once a comment, now never a match
                    raise ConfigError(f"{where} holds a space; one token per line, and a comment is a "
                                      "line of its own starting with '#'")
                _check_length(line, where)
                tokens.append(line)
    if not tokens:
        sources = " or ".join(filter(None, [cfg.token_env and f"${cfg.token_env}",
                                            cfg.token_file and repr(cfg.token_file)]))
        raise ConfigError(f"serve.auth is on but {sources} holds no token; the endpoint would "
                          "refuse every request (set a token, or remove serve.auth)")
    return tokens


def _check_length(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where} is shorter than {MIN_TOKEN_CHARS} characters; use a long random "
                          "token (e.g. `openssl rand -hex 32`)")


def _token_bytes(token: str) -> bytes:
    """The bytes a client sent: ASGI servers hand header values over decoded as latin-1, so a
    UTF-8 token in the header comes back as its UTF-8 bytes (a str that is not latin-1: UTF-8)."""
    try:
        return token.encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


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
        presented = hashlib.sha256(_token_bytes(token.strip())).digest()
        valid = False
        for digest in self._digests:  # no early exit: the time taken does not say which one matched
            valid |= hmac.compare_digest(presented, digest)
        return None if valid else "invalid bearer token"

    def _load(self) -> list[bytes]:
        return [hashlib.sha256(t.encode("utf-8")).digest() for t in read_tokens(self.cfg)]
