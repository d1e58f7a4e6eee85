"""docs/dashboard.md's table of roles says what app/auth/roles.py enforces."""

from __future__ import annotations

from pathlib import Path

from app.auth import roles

DOC = Path(__file__).resolve().parents[2] / "docs" / "dashboard.md"


def test_the_documented_roles_table_is_the_enforced_one() -> None:
    documented = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 1 + len(roles.ROLES) and cells[1:] and set(cells[1:]) <= {"yes", "—"}:
            documented[cells[0].replace(" ", "_")] = {
                role for role, cell in zip(roles.ROLES, cells[1:], strict=True) if cell == "yes"
            }
    enforced = {action: set(allowed) for action, (allowed, _) in roles.PERMISSIONS.items()}
    assert documented == enforced
