"""One-shot database tasks for the CLI: the demo tenant, tenants with a first key."""

from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

from sqlalchemy import func, select

from app.auth import accounts, keys
from app.auth.models import User
from app.auth.passwords import Passwords
from app.db import create_engine, session_factory
from app.tenants.service import create_tenant

DEMO_EMAIL = "demo@herald.example"
DEMO_COMPANY = "Demo Company"
DEMO_KEY_NAME = "demo key (make run)"


async def create_tenant_with_key(
    database_url: str, name: str, mode: str, plan: str = "free"
) -> tuple[uuid.UUID, str]:
    engine = create_engine(database_url, pool=False)
    try:
        async with session_factory(engine)() as session:
            tenant = await create_tenant(session, name=name, actor="cli")
            tenant.plan = plan  # benchmarks take a plan whose rate limits they cannot reach
            issued = await keys.issue_key(
                session,
                tenant_id=tenant.id,
                name="first key",
                mode=mode,
                scopes=["send", "read", "manage"],
                actor="cli",
            )
            await session.commit()
            return tenant.id, issued.secret
    finally:
        await engine.dispose()


async def seed_demo(database_url: str, data_dir: Path) -> dict[str, str]:
    """The demo tenant and owner (created once), and a fresh hk_test_ key for this run."""
    credentials_file = data_dir / "demo-credentials.json"
    engine = create_engine(database_url, pool=False)
    passwords = Passwords()
    try:
        async with session_factory(engine)() as session:
            user = await session.scalar(select(User).where(func.lower(User.email) == DEMO_EMAIL))
            if user is None or not credentials_file.exists():
                password = secrets.token_urlsafe(12)
                if user is None:
                    # An operator's tenant: verified, its live keys work.
                    user, _ = await accounts.create_account(
                        session,
                        passwords,
                        email=DEMO_EMAIL,
                        name="Demo Owner",
                        password=password,
                        company=DEMO_COMPANY,
                        verified=True,
                    )
                else:
                    user.password_hash = await passwords.hash(password)
                credentials_file.write_text(json.dumps({"email": DEMO_EMAIL, "password": password}))
                credentials_file.chmod(0o600)
            demo = json.loads(credentials_file.read_text())
            tenant = (await accounts.tenants_of(session, user_id=user.id))[0].tenant
            # One demo key at a time: each run's replaces the last (a tenant's keys are capped).
            earlier = await keys.list_keys(
                session, tenant_id=tenant.id, limit=keys.MAX_ACTIVE_KEYS, include_revoked=False
            )
            for key in earlier.items:
                if key.name == DEMO_KEY_NAME:
                    await keys.revoke_key(session, tenant_id=tenant.id, key_id=key.id, actor="cli")
            issued = await keys.issue_key(
                session,
                tenant_id=tenant.id,
                name=DEMO_KEY_NAME,
                mode="test",
                scopes=["send", "read", "manage"],
                actor="cli",
            )
            await session.commit()
            return {**demo, "api_key": issued.secret}
    finally:
        passwords.close()
        await engine.dispose()
