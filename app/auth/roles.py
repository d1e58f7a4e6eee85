"""What each role of a tenant's members may do; the services that act for a member enforce it.

A member (memberships.role) is an `owner`, `admin`, `developer` or `viewer` of a tenant.
Reading is open to every member. Creating and revoking API keys is for KEY_MANAGERS: the key
service refuses anyone else (RoleNotAllowed), whichever page or client asked, and the
dashboard asks the same rule only to decide what it shows. The tenant's creator is its
OWNER, and live keys work once an owner has verified their e-mail
(app/auth/verification.py).
"""

from __future__ import annotations

OWNER = "owner"
KEY_MANAGERS = frozenset({OWNER, "admin", "developer"})


class RoleNotAllowed(PermissionError):
    """The acting member's role may not do this; the message says what it may not do."""

    def __init__(self, role: str, refused: str) -> None:
        super().__init__(f"A member whose role is {role} {refused}.")
        self.role = role
        self.refused = refused


def may_manage_keys(role: str) -> bool:
    return role in KEY_MANAGERS


def require_key_manager(role: str) -> None:
    """Refuse (RoleNotAllowed) a role that may not create or revoke API keys."""
    if not may_manage_keys(role):
        raise RoleNotAllowed(role, "can see API keys but not create or revoke them")
