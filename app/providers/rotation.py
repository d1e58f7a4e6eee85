"""Moving every provider credential to the newest encryption key, so older keys can go.

`herald keys rotate-encryption` walks provider_configs in id order, a batch per transaction,
each batch's rows locked (FOR UPDATE) while they are rewritten: an API update of the same
config waits for the batch or the batch for it, and either way the row ends sealed under the
current key. Workers never wait: they read the committed row, old or new, and open it with
whichever configured key it names — which is why every process must already have the new
key in HERALD_ENCRYPTION_KEYS (first) before the rotation runs, and why the old one may be
removed only after it reports nothing left unreadable.

A row is rewritten when its key is not the current one or its fingerprint is not the keyed
digest under the current key (rows from before fingerprints were keyed); re-running finds
nothing to do. `herald migrate` runs the same walk with `reseal=False`: fingerprints only,
no re-encryption (that waits for the operator).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.crypto import DecryptionError, Keyring
from app.providers.models import ProviderConfig
from app.providers.service import fingerprint, open_credentials, seal_credentials

log = structlog.get_logger(__name__)

BATCH_SIZE = 200


@dataclass
class RotationReport:
    checked: int = 0
    resealed: int = 0  # re-encrypted under the current key (and fingerprinted under it)
    fingerprinted: int = 0  # already under the current key; only the fingerprint replaced
    unreadable: list[uuid.UUID] = field(default_factory=list)  # no configured key opens them

    @property
    def current(self) -> int:
        return self.checked - self.resealed - self.fingerprinted - len(self.unreadable)


async def rotate(
    session: AsyncSession,
    keyring: Keyring,
    *,
    reseal: bool = True,
    batch_size: int = BATCH_SIZE,
    actor: str = "cli",
) -> RotationReport:
    """Bring every config to the current key (or, reseal=False, only its fingerprint).

    Commits after each batch; every rewritten config gets an audit entry in its tenant's log.
    """
    report = RotationReport()
    cursor: uuid.UUID | None = None
    while True:
        query = select(ProviderConfig).order_by(ProviderConfig.id).limit(batch_size)
        if cursor is not None:
            query = query.where(ProviderConfig.id > cursor)
        batch = (await session.scalars(query.with_for_update())).all()
        if not batch:
            return report
        for config in batch:
            await _bring_up_to_date(session, config, keyring, reseal, actor, report)
        cursor = batch[-1].id
        await session.commit()


async def _bring_up_to_date(
    session: AsyncSession,
    config: ProviderConfig,
    keyring: Keyring,
    reseal: bool,
    actor: str,
    report: RotationReport,
) -> None:
    report.checked += 1
    try:
        credentials = open_credentials(config, keyring)
    except DecryptionError as error:
        log.error(
            "provider credentials cannot be opened", config_id=str(config.id), error=str(error)
        )
        report.unreadable.append(config.id)
        return
    keyed = fingerprint(credentials, keyring)
    if reseal and config.key_id != keyring.current_key_id:
        seal_credentials(config, credentials, keyring)
        report.resealed += 1
    elif config.fingerprint != keyed:
        config.fingerprint = keyed
        report.fingerprinted += 1
    else:
        return
    await session.flush()
    await audit.append(
        session,
        tenant_id=config.tenant_id,
        actor=actor,
        action="provider.rekeyed",
        target=str(config.id),
        details={"key_id": config.key_id, "fingerprint": config.fingerprint},
    )
