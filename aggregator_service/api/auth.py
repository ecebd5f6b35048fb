"""Who may call what: per-client bearer tokens, one admin token and one read-only viewer
token, checked in constant time.

The tokens file holds one ``client_id: token`` line per client (``#`` comments and blank
lines allowed), a flat mapping that YAML tools read too. Tokens are at least 32
characters of ``A-Z a-z 0-9 - . _ ~ + /`` (RFC 6750's token characters) with at least
10 different ones; ids are client ids. A duplicate id, a token used twice or a weak token
stops the aggregator at start. With no tokens file, client authentication is off.

Tokens are kept only as sha256 digests. A presented token is hashed and compared with
EVERY known digest by `hmac.compare_digest` (equal lengths, no early exit), so the time
taken says nothing about which client ids exist or how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from aggregator_service.settings import AggregatorSettings
from shared.errors import ConfigError, Forbidden, Unauthorized

__all__ = [
    "Access",
    "AdminCaller",
    "Caller",
    "ClientCaller",
    "ReaderCaller",
    "check_client",
    "parse_tokens",
    "read_admin_token",
    "read_viewer_token",
]

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 32
MIN_DISTINCT_CHARS = 10
GENERATE_HINT = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a client (by id), the admin, the viewer, or anyone (auth off)."""

    client_id: str | None = None
    admin: bool = False
    viewer: bool = False  # may read /status, /history, /clients, /model, /events, the model


ANYONE = Caller()


def token_problem(token: str) -> str | None:
    """Return why `token` is unusable (without quoting it), or None if it is strong enough."""
    if not token:
        return "is empty"
    if not _TOKEN.fullmatch(token):
        return "has characters outside A-Z a-z 0-9 - . _ ~ + /"
    if len(token) < MIN_TOKEN_CHARS:
        return f"is too short ({len(token)} characters; at least {MIN_TOKEN_CHARS})"
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return f"is too repetitive (fewer than {MIN_DISTINCT_CHARS} different characters)"
    return None


def parse_tokens(text: str, *, source: str) -> dict[str, str]:
    """Parse `client_id: token` lines; raise ConfigError naming the line (never the token)."""
    tokens: dict[str, str] = {}
    first_line: dict[str, int] = {}
    owner_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        client_id, colon, token = (
            part.strip() for part in line.rpartition(":")
        )  # ids may hold ":"
        if not colon:
            raise ConfigError(f"{where}: expected 'client_id: token'")
        if not _CLIENT_ID.fullmatch(client_id):
            raise ConfigError(
                f"{where}: {client_id!r} is not a client id (1-64 characters of "
                "A-Z a-z 0-9 _ . : -, starting with a letter or digit)"
            )
        if client_id in tokens:
            raise ConfigError(
                f"{where}: client {client_id!r} is listed twice (also line {first_line[client_id]})"
            )
        problem = token_problem(token)
        if problem is not None:
            raise ConfigError(
                f"{where}: the token of client {client_id!r} {problem}; {GENERATE_HINT}"
            )
        if token in owner_line:
            raise ConfigError(
                f"{where}: the token of client {client_id!r} is the same as on line "
                f"{owner_line[token]}; every client needs its own token"
            )
        tokens[client_id] = token
        first_line[client_id] = number
        owner_line[token] = number
    if not tokens:
        raise ConfigError(f"{source} lists no client tokens; add 'client_id: token' lines")
    return tokens


def read_admin_token(settings: AggregatorSettings) -> str | None:
    """Return the admin token from its file or TRIBUTARY_AGG_ADMIN_TOKEN, checked; None if unset."""
    return _read_role_token("admin", settings.admin_token, settings.admin_token_file)


def read_viewer_token(settings: AggregatorSettings) -> str | None:
    """Return the viewer token (file or TRIBUTARY_AGG_VIEWER_TOKEN), checked; None if unset."""
    return _read_role_token("viewer", settings.viewer_token, settings.viewer_token_file)


def _read_role_token(role: str, secret: SecretStr | None, path: Path | None) -> str | None:
    if secret is not None:
        token, source = secret.get_secret_value().strip(), f"TRIBUTARY_AGG_{role.upper()}_TOKEN"
    elif path is not None:
        token, source = _read_secret_file(path).strip(), f"the {role} token file {path}"
    else:
        return None
    problem = token_problem(token)
    if problem is not None:
        raise ConfigError(f"the {role} token in {source} {problem}; {GENERATE_HINT}")
    return token


def _read_secret_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        info = path.stat()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from None
    # Group bits are fine when the group is this process's own (Kubernetes mounts Secrets
    # 0440 with the pod's fsGroup); anything for other users is not.
    shared_group = info.st_gid not in (os.getgid(), *os.getgroups())
    if info.st_mode & stat.S_IRWXO or (shared_group and info.st_mode & stat.S_IRWXG):
        log.warning("%s is readable by other users; chmod 600 it", path)
    return text


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class Access:
    """The configured tokens; `identify` maps a presented token to its caller."""

    def __init__(
        self,
        client_tokens: dict[str, str],
        admin_token: str | None = None,
        viewer_token: str | None = None,
    ) -> None:
        if admin_token is not None and admin_token in client_tokens.values():
            raise ConfigError("the admin token is also a client's token; give the admin its own")
        if viewer_token is not None and viewer_token in (*client_tokens.values(), admin_token):
            raise ConfigError(
                "the viewer token is also a client's or the admin's token; give it its own"
            )
        self._clients = [(client_id, _digest(token)) for client_id, token in client_tokens.items()]
        self._admin = _digest(admin_token) if admin_token is not None else None
        self._viewer = _digest(viewer_token) if viewer_token is not None else None

    @classmethod
    def from_settings(cls, settings: AggregatorSettings) -> Access:
        """Load the tokens file and the admin token named by `settings`."""
        clients: dict[str, str] = {}
        if settings.tokens_file is not None:
            text = _read_secret_file(settings.tokens_file)
            clients = parse_tokens(text, source=f"tokens file {settings.tokens_file}")
        return cls(clients, read_admin_token(settings), read_viewer_token(settings))

    @property
    def clients_enabled(self) -> bool:
        """Whether clients must present their token (a tokens file is configured)."""
        return bool(self._clients)

    @property
    def admin_enabled(self) -> bool:
        """Whether an admin token is configured (the admin endpoints are usable)."""
        return self._admin is not None

    @property
    def num_clients(self) -> int:
        """How many client tokens are configured."""
        return len(self._clients)

    def identify(self, token: str) -> Caller | None:
        """Return who holds `token`, or None; the time taken is the same for every token."""
        presented = _digest(token)
        found: str | None = None
        for client_id, expected in self._clients:  # all of them: no early exit
            if hmac.compare_digest(presented, expected):
                found = client_id
        admin = self._admin is not None and hmac.compare_digest(presented, self._admin)
        viewer = self._viewer is not None and hmac.compare_digest(presented, self._viewer)
        if admin:
            return Caller(admin=True)
        if viewer:
            return Caller(viewer=True)
        return Caller(client_id=found) if found is not None else None


# ---------------------------------------------------------------------- dependencies

_bearer = HTTPBearer(
    auto_error=False,
    description="A client's token (client endpoints), the admin token or the read-only viewer "
    "token (docs/security.md).",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


def _unauthorized(credentials: HTTPAuthorizationCredentials | None) -> Exception:
    challenge = 'Bearer realm="tributary"'
    if credentials is not None:
        challenge += ', error="invalid_token"'
    return Unauthorized(
        "unauthorized",
        "missing or invalid bearer token (send 'Authorization: Bearer <token>')",
        challenge=challenge,
    )


def _identify(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    caller = _access(request).identify(credentials.credentials) if credentials else None
    if caller is None:
        raise _unauthorized(credentials)
    return caller


async def client_caller(request: Request, credentials: Credentials) -> Caller:
    """Require a client's token when client authentication is on."""
    if not _access(request).clients_enabled:
        return ANYONE
    caller = _identify(request, credentials)
    if caller.client_id is None:
        raise Forbidden("forbidden", "this endpoint needs a client's token")
    return caller


async def reader_caller(request: Request, credentials: Credentials) -> Caller:
    """Require any client's, the admin's or the viewer's token when client auth is on."""
    if not _access(request).clients_enabled:
        return ANYONE
    return _identify(request, credentials)


async def admin_caller(request: Request, credentials: Credentials) -> Caller:
    """Require the admin token; refuse everyone when no admin token is configured."""
    if not _access(request).admin_enabled:
        raise Forbidden(
            "admin_disabled",
            "no admin token is configured (TRIBUTARY_AGG_ADMIN_TOKEN or --admin-token-file)",
        )
    caller = _identify(request, credentials)
    if not caller.admin:
        raise Forbidden("forbidden", "this endpoint needs the admin token")
    return caller


def check_client(caller: Caller, client_id: str) -> None:
    """Refuse (403 wrong_client) a request about `client_id` by someone else's token."""
    if caller == ANYONE or caller.client_id == client_id:
        return
    raise Forbidden("wrong_client", f"the bearer token does not belong to client_id {client_id!r}")


ClientCaller = Annotated[Caller, Depends(client_caller)]
ReaderCaller = Annotated[Caller, Depends(reader_caller)]
AdminCaller = Annotated[Caller, Depends(admin_caller)]
