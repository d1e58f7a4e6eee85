"""What each role of a tenant's members may do; the services that act for a member enforce it.

A member (memberships.role) is an `owner`, `admin`, `developer` or `viewer` of a tenant.
Reading is open to every member. Every other action is named in PERMISSIONS with the roles
that may take it: the service doing it refuses anyone else (RoleNotAllowed), whichever page
or client asked, and the dashboard asks the same table only to decide what it shows. A
service called for an API key or an operator is given no role (None) and checks none: keys
are bounded by their scopes instead.

Viewers read only; owners alone manage members, billing and single sign-on. The tenant's
creator is its OWNER, and live keys work once an owner has verified their e-mail
(app/auth/verification.py).
"""

from __future__ import annotations

from typing import Final

OWNER = "owner"
ADMIN = "admin"
DEVELOPER = "developer"
VIEWER = "viewer"
ROLES: Final = (OWNER, ADMIN, DEVELOPER, VIEWER)

_BUILDERS = frozenset({OWNER, ADMIN, DEVELOPER})
_ADMINS = frozenset({OWNER, ADMIN})
_OWNERS = frozenset({OWNER})

# action -> (roles allowed, what a refused role is told it may not do)
PERMISSIONS: Final[dict[str, tuple[frozenset[str], str]]] = {
    "manage_keys": (_BUILDERS, "can see API keys but not create or revoke them"),
    "manage_templates": (_BUILDERS, "can read templates but not change them"),
    "send_test": (_BUILDERS, "cannot send test notifications"),
    "cancel_notifications": (_BUILDERS, "cannot cancel, pause or resume notifications"),
    "manage_dlq": (_BUILDERS, "can see the dead-letter queue but not replay or discard it"),
    "manage_providers": (_BUILDERS, "can see providers but not change them"),
    "manage_webhooks": (_BUILDERS, "can see webhook endpoints but not change them"),
    "manage_recipients": (_BUILDERS, "can see recipients but not change them"),
    "erase_recipients": (_ADMINS, "cannot erase recipients"),
    "manage_settings": (_ADMINS, "cannot change the tenant's settings"),
    "manage_members": (_OWNERS, "cannot manage members"),
    "manage_billing": (_OWNERS, "cannot manage billing"),
    "manage_sso": (_OWNERS, "cannot configure single sign-on"),
}
KEY_MANAGERS = PERMISSIONS["manage_keys"][0]


class RoleNotAllowed(PermissionError):
    """The acting member's role may not do this; the message says what it may not do."""

    def __init__(self, role: str, refused: str) -> None:
        super().__init__(f"A member whose role is {role} {refused}.")
        self.role = role
        self.refused = refused


def may(role: str, action: str) -> bool:
    """Whether `role` may take `action` (a key of PERMISSIONS; an unknown one is refused)."""
    allowed, _ = PERMISSIONS.get(action, (frozenset(), ""))
    return role in allowed


def require(role: str | None, action: str) -> None:
    """Refuse (RoleNotAllowed) a member's role that may not take `action`; None (an API key
    or an operator, not a member) passes."""
    if role is None:
        return
    if action not in PERMISSIONS:
        raise KeyError(f"unknown action {action!r}")
    if not may(role, action):
        raise RoleNotAllowed(role, PERMISSIONS[action][1])


def may_manage_keys(role: str) -> bool:
    return may(role, "manage_keys")


def require_key_manager(role: str) -> None:
    """Refuse (RoleNotAllowed) a role that may not create or revoke API keys."""
    require(role, "manage_keys")
