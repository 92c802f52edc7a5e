"""Optional API keys: ``DETECTOR_API_KEYS`` (comma-separated keys, or a file of them) turns them on.

A key is accepted from ``X-API-Key``, from ``Authorization: Bearer``, or on the DeepStack routes from the form field
``api_key`` (what DeepStack clients send). Health, readiness and metrics stay open (probes and scrapers carry no
keys), and so do the static page and the OpenAPI documents, which hold no data.

Comparison is constant-time against every key (``hmac.compare_digest``, no early exit), so neither the position of
a match nor the length of a common prefix shows in the response time. Keys are never logged: the setting is a
``SecretStr`` (masked in the settings dump) and nothing else holds them outside this module.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Unauthorized

API_KEY_HEADER = "X-API-Key"
# What a file of keys may hold besides keys: blank lines and comments.
_COMMENT = "#"
# A value that looks like a path but names no file is a mistake, not a key.
_PATH_PREFIXES = ("/", "./", "../", "~/")

MESSAGE = f"a valid API key is required: send it as {API_KEY_HEADER} or Authorization: Bearer"


class ApiKeys:
    """The keys the service accepts.

    Args:
        keys: the accepted keys (non-empty strings).
    """

    def __init__(self, keys: Iterable[str]):
        self._keys = tuple(key.encode("utf-8") for key in keys if key)
        if not self._keys:
            raise ValueError("DETECTOR_API_KEYS is set but holds no key")

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys({len(self._keys)} keys)"  # never the keys themselves

    @classmethod
    def parse(cls, value: str | None) -> ApiKeys | None:
        """The keys from the setting: None (authentication off) when unset or empty; a file's keys when ``value``
        names a file (one per line or comma-separated, ``#`` comments); else ``value`` split at commas.

        Raises ``ValueError`` for a path that names no file, or a setting that holds no key.
        """
        if value is None or not value.strip():
            return None
        text = value.strip()
        path = Path(text).expanduser()
        if path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            text = ",".join(line for line in lines if not line.lstrip().startswith(_COMMENT))
        elif text.startswith(_PATH_PREFIXES):
            raise ValueError("DETECTOR_API_KEYS looks like a path, but no such file exists")
        return cls(key.strip() for key in text.split(","))

    def accepts(self, candidate: str | None) -> bool:
        """Whether ``candidate`` is one of the keys, in time independent of which one (or how much of it) matches."""
        if not candidate:
            return False
        presented = candidate.encode("utf-8")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    def require(self, *candidates: str | None) -> None:
        """Raise ``Unauthorized`` unless one of ``candidates`` is a key."""
        # Every candidate is compared (no short-circuit), for the same reason as in ``accepts``.
        if not any([self.accepts(candidate) for candidate in candidates]):
            raise Unauthorized(MESSAGE)


# FastAPI's security schemes: they read the headers and document them in the OpenAPI schema ("Authorize" in /docs).
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="an API key, when the service has DETECTOR_API_KEYS set"
)
bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token, when DETECTOR_API_KEYS is set")

HeaderKey = Annotated[str | None, Security(api_key_header)]
BearerKey = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def header_keys(header_key: str | None, bearer_key: HTTPAuthorizationCredentials | None) -> tuple[str | None, ...]:
    """The keys a request presents in its headers."""
    return header_key, bearer_key.credentials if bearer_key is not None else None


def app_keys(request: Request) -> ApiKeys | None:
    """The app's keys; None when authentication is off."""
    return request.app.state.api_keys


async def require_api_key(request: Request, header_key: HeaderKey, bearer_key: BearerKey) -> None:
    """A route dependency: 401 unless the headers carry a valid key (nothing to check when keys are off)."""
    keys = app_keys(request)
    if keys is not None:
        keys.require(*header_keys(header_key, bearer_key))
