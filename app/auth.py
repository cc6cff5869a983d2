"""Bearer JWT authentication for the HTTP endpoints.

Tokens are issued by the platform's identity service; we only verify them (HS256 with a shared
secret, or RS256 with its public key) and read the user id (`sub`) and `roles`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any
from uuid import UUID

import jwt

from app.config import Settings, get_settings
from models import Role


class AuthError(Exception):
    """Carries the HTTP status: 401 for a missing or bad token, 403 for a missing role."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Caller:
    user_id: UUID
    roles: frozenset[Role]

    def has_any(self, allowed: frozenset[Role]) -> bool:
        return bool(self.roles & allowed)


ANY_USER = frozenset(Role)
ADMINS = frozenset({Role.ADMIN, Role.SUPER_ADMIN})


def _verification_key(settings: Settings) -> str:
    key = settings.jwt_public_key if settings.jwt_algorithm.startswith("RS") else settings.jwt_secret
    if not key:
        raise AuthError(401, "token verification is not configured (JWT_SECRET or JWT_PUBLIC_KEY)")
    return key


def authenticate(authorization: str | None, settings: Settings, allowed: frozenset[Role]) -> Caller:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthError(401, "a bearer token is required")
    token = authorization.split(" ", 1)[1].strip()
    try:
        claims = jwt.decode(
            token,
            _verification_key(settings),
            algorithms=[settings.jwt_algorithm],
            options={"require": ["sub", "exp"]},
        )
        caller = Caller(UUID(str(claims["sub"])), frozenset(Role(r) for r in claims.get("roles", [])))
    except (jwt.PyJWTError, ValueError) as exc:
        raise AuthError(401, f"invalid token: {exc}") from exc
    if not caller.has_any(allowed):
        needed = ", ".join(sorted(r.value for r in allowed))
        raise AuthError(403, f"this action needs one of the roles: {needed}")
    return caller


def issue_token(secret: str, user_id: UUID, roles: list[Role], ttl: timedelta = timedelta(hours=12)) -> str:
    """An HS256 token for development and tests; production tokens come from the identity service."""
    now = datetime.now(UTC)
    claims = {"sub": str(user_id), "roles": [r.value for r in roles], "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


ViewMethod = Callable[..., Awaitable[Any]]


def authenticated(allowed: frozenset[Role]) -> Callable[[ViewMethod], ViewMethod]:
    """Decorate a Faust view method: it receives the `caller`, or the client gets 401/403 JSON.

    Path parameters named `*_id` arrive as UUIDs; one that is not a UUID gets a 400 here, once,
    instead of in every view."""

    def decorate(method: ViewMethod) -> ViewMethod:
        @wraps(method)
        async def checked(view: Any, request: Any, **path: Any) -> Any:
            try:
                caller = authenticate(request.headers.get("Authorization"), get_settings(), allowed)
            except AuthError as exc:
                return view.json({"error": str(exc)}, status=exc.status)
            for name, value in path.items():
                if name.endswith("_id"):
                    try:
                        path[name] = UUID(value)
                    except ValueError:
                        return view.json({"error": f"{name.replace('_', ' ')} must be a UUID"}, status=400)
            return await method(view, request, caller, **path)

        return checked

    return decorate
