"""A tenant's members: who they are, inviting people by e-mail, roles, removal.

Only owners manage members (`manage_members` in app/auth/roles.py): every function that
changes anything takes the acting member's `role` and refuses any other first. A tenant
always keeps at least one owner: demoting or removing its last owner is refused
(`LastOwner`), the acting owner included; membership changes of a tenant queue up on its
row (`FOR UPDATE`), so two owners demoting each other at once cannot leave it with none.
Every change is written to the audit log.

The plan's members limit (`members` in the plans file, app/tenants/plans.py; 0: no limit)
bounds a tenant's members. Pending invites hold a seat each: inviting is refused once
members and pending (unexpired) invites together reach the limit. Joining (accepting an
invite, or a first single sign-on of a tenant's domain, app/auth/sso/signin.py) is checked
again, against the members alone for an invite (its seat was counted when it was made),
against members and the other pending invites for single sign-on (which had no seat):
a plan downgraded since the invite was made refuses the acceptance, and the invite stays
usable until it expires, for when the tenant upgrades or frees a seat. Every check and
the write it guards run under the tenant row's lock, so two joins at once cannot pass the
limit together. A downgrade never removes anyone: a tenant over its new limit keeps its
members and admits no one until it is back under it.

Invitations. An invite names an e-mail address and a role; its link carries a random token
of which only the SHA-256 is stored. It works once (accepting deletes the row, in the
statement that checks it), for `INVITE_LIFETIME`; inviting the same address again replaces
the pending invite (the old link stops working); a tenant has at most
`MAX_PENDING_INVITES` at a time (expired ones are cleared as new ones are made), and at
most `INVITES_PER_TENANT` mailed an hour (app/auth/throttle.py), since each one is a mail
Herald sends to an address a tenant typed. Whoever holds the link joins as the invited
address only: a person new to Herald creates the account of that address (name and
password), someone with an account signs in to it (or is signed in to it already).

How the link travels depends on the data the inviting owner is working on (the live/test
switch of the dashboard), as everything a tenant sends does:

- live: through Herald's own system mailer (app/auth/mailer.py, the operator's SMTP server,
  HERALD_SMTP_URL): the mail proves the address, so a person who joins through it starts
  with a verified e-mail. Like live keys, this waits until an owner of the tenant has
  verified their own address (app/auth/verification.py): otherwise a throwaway sign-up
  could have Herald mail its text to anyone.
- test: nothing is mailed, as a test key never reaches a real provider. The mail goes to
  the sandbox instead: the dashboard shows it, link and all, once, to the owner who made
  the invite, for them to open or hand over. It is not written to the tenant's test
  delivery log, which every member (viewers too) may read: an invite link there would let
  anyone who can read it join as an owner. An address reached this way is not proven, so
  the account is not marked verified.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import accounts, roles, verification
from app.auth.accounts import AccountError, Client, Guards, TooManyAttempts, normalise_email
from app.auth.models import MemberInvite, Membership, User
from app.auth.throttle import INVITE_ACCEPT_PER_NETWORK, INVITES_PER_TENANT, AccountThrottle
from app.db import utcnow
from app.tenants import plans
from app.tenants.models import Tenant

INVITE_LIFETIME = timedelta(days=7)
MAX_PENDING_INVITES = 50
MAX_MEMBERS_LISTED = 500
MAX_TOKEN_LENGTH = 100  # tokens are 43 characters; anything much longer is not one
MAIL = "mail"
SANDBOX = "sandbox"
UNVERIFIED = (
    "Invitations are mailed once an owner of this tenant has verified their e-mail address. "
    "Meanwhile, invite from test data: the link is shown to you, to hand over yourself."
)


class MemberError(ValueError):
    """A change that breaks a rule; `field` names the form field at fault, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class LastOwner(MemberError):
    def __init__(self) -> None:
        super().__init__(
            "A tenant keeps at least one owner: make someone else an owner first.", field="role"
        )


@dataclass(frozen=True)
class Seats:
    """A tenant's members against its plan's limit."""

    plan: str  # the plan's name (an unknown one: the fallback plan whose limits apply)
    limit: int  # 0: no limit
    members: int
    invites: int  # pending and unexpired

    def full(self, *, counting_invites: bool) -> bool:
        """No seat left for one more member (pending invites taking theirs, if counted)."""
        taken = self.members + (self.invites if counting_invites else 0)
        return self.limit > 0 and taken >= self.limit


def _people(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


class MembersLimitReached(MemberError):
    """The plan allows no more members; the message says so for whoever is refused."""

    def __init__(self, message: str, seats: Seats) -> None:
        super().__init__(message, field="email")
        self.seats = seats


@dataclass(frozen=True)
class MemberRow:
    user_id: uuid.UUID
    name: str
    email: str
    role: str
    joined_at: datetime


@dataclass(frozen=True)
class IssuedInvite:
    invite: MemberInvite
    link: str  # shown or mailed once; only its digest is kept
    replaced: bool  # an earlier pending invite of the address stopped working


@dataclass(frozen=True)
class OpenInvite:
    """What the accept page needs to know about a valid link."""

    tenant_name: str
    email: str
    role: str
    expires_at: datetime
    has_account: bool
    tenant_id: uuid.UUID


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _plausible(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH


def _check_role(role: str) -> None:
    if role not in roles.ROLES:
        raise MemberError(f"Choose one of: {', '.join(roles.ROLES)}.", field="role")


async def list_members(session: AsyncSession, *, tenant_id: uuid.UUID) -> list[MemberRow]:
    """The tenant's members, owners first, then by name (at most MAX_MEMBERS_LISTED)."""
    rank = {role: n for n, role in enumerate(roles.ROLES)}
    rows = await session.execute(
        select(User.id, User.name, User.email, Membership.role, Membership.created_at)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.tenant_id == tenant_id)  # ix_memberships_tenant_id
        .order_by(Membership.created_at, User.id)
        .limit(MAX_MEMBERS_LISTED)
    )
    members = [MemberRow(*row) for row in rows.all()]
    return sorted(members, key=lambda m: (rank.get(m.role, 9), m.name.lower(), m.email))


async def list_invites(session: AsyncSession, *, tenant_id: uuid.UUID) -> list[MemberInvite]:
    """The tenant's invites not accepted yet, expired ones too, newest first (bounded)."""
    result = await session.scalars(
        select(MemberInvite)
        .where(MemberInvite.tenant_id == tenant_id)  # uq_member_invites_tenant_id_email_lower
        .order_by(MemberInvite.created_at.desc())
        .limit(MAX_PENDING_INVITES + 1)
    )
    return list(result.all())


async def _lock_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> str | None:
    """Membership changes of one tenant, one at a time (until the caller commits); the
    tenant's plan as the lock found it (None: no such tenant). A plan change (billing's
    `settle`) locks the same row, so a check made under this lock sees the plan current."""
    plan: str | None = await session.scalar(
        select(Tenant.plan).where(Tenant.id == tenant_id).with_for_update()
    )
    return plan


async def _seats(
    session: AsyncSession, tenant_id: uuid.UUID, plan_name: str, *, but: str | None = None
) -> Seats:
    """The tenant's seats; `but`: an address whose own pending invite is not counted (it is
    being replaced, or used)."""
    known = plan_name if plan_name in plans.plan_names() else plans.FALLBACK_PLAN
    members = await session.scalar(
        select(func.count()).where(Membership.tenant_id == tenant_id)  # ix_memberships_tenant_id
    )
    pending = select(func.count()).where(
        MemberInvite.tenant_id == tenant_id, MemberInvite.expires_at > func.now()
    )
    if but is not None:
        pending = pending.where(func.lower(MemberInvite.email) != but.lower())
    invites = await session.scalar(pending)
    return Seats(known, plans.plan(known).members, members or 0, invites or 0)


async def seats(session: AsyncSession, *, tenant_id: uuid.UUID) -> Seats:
    """The tenant's members and pending invites against its plan's limit (for display)."""
    plan_name = await session.scalar(select(Tenant.plan).where(Tenant.id == tenant_id))
    return await _seats(session, tenant_id, plan_name or plans.FALLBACK_PLAN)


def _invite_refusal(seats: Seats) -> MembersLimitReached:
    pending = f" and {_people(seats.invites, 'invitation', 'invitations')} pending"
    return MembersLimitReached(
        f"The {seats.plan} plan allows {_people(seats.limit, 'member', 'members')}: this "
        f"tenant has {seats.members}{pending if seats.invites else ''}. Upgrade the plan on "
        "the billing page, or remove a member or revoke an invitation, to invite someone "
        "else.",
        seats,
    )


def join_refusal(
    seats: Seats, *, tenant_name: str, email: str, counting_invites: bool
) -> MembersLimitReached:
    """Why `email` cannot join now: for the person joining, who cannot change the plan."""
    pending = ""
    if counting_invites and seats.invites:
        pending = f" (and {_people(seats.invites, 'invitation', 'invitations')} pending)"
    return MembersLimitReached(
        f"{tenant_name} is on the {seats.plan} plan, which allows "
        f"{_people(seats.limit, 'member', 'members')}, and has "
        f"{seats.members}{pending} already, so {email} cannot join it now. Ask one of its "
        "owners to upgrade the plan or to remove a member.",
        seats,
    )


async def _is_member(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> bool:
    found = await session.scalar(
        select(Membership.user_id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.tenant_id == tenant_id, func.lower(User.email) == email.lower())
    )
    return found is not None


async def check_join(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    email: str,
    counting_invites: bool,
    lock: bool = True,
) -> None:
    """MembersLimitReached when `email`, not a member yet, would take a seat the tenant's
    plan does not have; nothing for one already a member (joining changes nothing). With
    `lock` (the default) the tenant row is locked first, so the check holds until the
    caller commits the membership; without it, it is an early answer that the locked
    check repeats. `counting_invites`: the joiner has no seat of their own (single
    sign-on), so pending invites of other addresses keep theirs."""
    if lock:
        plan_name = await _lock_tenant(session, tenant_id)
    else:
        plan_name = await session.scalar(select(Tenant.plan).where(Tenant.id == tenant_id))
    if plan_name is None or await _is_member(session, tenant_id, email):
        return
    found = await _seats(session, tenant_id, plan_name, but=email)
    if found.full(counting_invites=counting_invites):
        name = await session.scalar(select(Tenant.name).where(Tenant.id == tenant_id))
        raise join_refusal(
            found, tenant_name=name or "This tenant", email=email, counting_invites=counting_invites
        )


async def invite(
    session: AsyncSession,
    throttle: AccountThrottle,
    *,
    tenant_id: uuid.UUID,
    email: str,
    role: str,
    delivery: str,
    actor: str,
    public_url: str,
    acting_role: str | None = None,
) -> IssuedInvite:
    """Invite `email` to the tenant with `role`, in the caller's transaction; the caller
    commits, then delivers the link (mails it for MAIL, shows it for SANDBOX). Refusals
    (MemberError, AccountError, RoleNotAllowed) come before anything is written."""
    roles.require(acting_role, "manage_members")
    email = normalise_email(email)
    if len(email) > 200 - len("user:"):
        raise MemberError("At most 195 characters, please.", field="email")
    _check_role(role)
    if delivery not in (MAIL, SANDBOX):
        raise ValueError(f"unknown delivery {delivery!r}")
    plan_name = await _lock_tenant(session, tenant_id)
    if await _is_member(session, tenant_id, email):
        raise MemberError(f"{email} is a member already.", field="email")
    # Every check comes before the first write: a refused invite leaves nothing to undo.
    # The address's own pending invite is replaced below: its seat passes to the new one.
    taken = await _seats(session, tenant_id, plan_name or plans.FALLBACK_PLAN, but=email)
    if taken.full(counting_invites=True):
        raise _invite_refusal(taken)
    others = await session.scalar(
        select(func.count()).where(
            MemberInvite.tenant_id == tenant_id,
            MemberInvite.expires_at > func.now(),
            func.lower(MemberInvite.email) != email.lower(),
        )
    )
    if (others or 0) >= MAX_PENDING_INVITES:
        raise MemberError(
            f"{MAX_PENDING_INVITES} invites are pending: revoke some before inviting more.",
            field="email",
        )
    if delivery == MAIL and not await verification.live_keys_allowed(session, tenant_id=tenant_id):
        raise MemberError(UNVERIFIED, field="email")
    if delivery == MAIL:
        wait = await throttle.take((f"invite:tenant:{tenant_id}", INVITES_PER_TENANT))
        if wait:
            raise TooManyAttempts(wait)
    await session.execute(
        delete(MemberInvite).where(
            MemberInvite.tenant_id == tenant_id, MemberInvite.expires_at <= func.now()
        )
    )
    replaced = await session.execute(
        delete(MemberInvite)
        .where(MemberInvite.tenant_id == tenant_id, func.lower(MemberInvite.email) == email.lower())
        .returning(MemberInvite.id)
    )
    was_pending = replaced.first() is not None
    token = secrets.token_urlsafe(32)
    row = MemberInvite(
        tenant_id=tenant_id,
        email=email,
        role=role,
        token_hash=_digest(token),
        invited_by=actor,
        delivery=delivery,
        expires_at=utcnow() + INVITE_LIFETIME,
    )
    session.add(row)
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="member.invited",
        target=email,
        details={"role": role, "delivery": delivery, "replaced": was_pending},
    )
    return IssuedInvite(row, f"{public_url}/invite/{quote(token)}", was_pending)


def invite_mail(*, tenant_name: str, inviter: str, role: str, link: str) -> tuple[str, str]:
    """Subject and text of the message carrying an invite link."""
    days = INVITE_LIFETIME.days
    text = (
        f"Hello,\n\n{inviter} invited you to join {tenant_name} on Herald as {role}.\n\n"
        f"Accept the invitation here:\n\n{link}\n\n"
        f"The link works once, within {days} days. If you did not expect this invitation, "
        "ignore this message.\n"
    )
    # A name is the tenant's own text: whitespace (line breaks too) is folded, as a header
    # may not hold a line break.
    return f"You are invited to {' '.join(tenant_name.split())} on Herald", text


async def revoke_invite(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    invite_id: uuid.UUID,
    actor: str,
    acting_role: str | None = None,
) -> bool:
    """Delete a pending invite of the tenant (its link stops working); False: none such."""
    roles.require(acting_role, "manage_members")
    gone = (
        await session.execute(
            delete(MemberInvite)
            .where(MemberInvite.tenant_id == tenant_id, MemberInvite.id == invite_id)
            .returning(MemberInvite.email, MemberInvite.role)
        )
    ).first()
    if gone is None:
        return False
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="member.invite_revoked",
        target=gone.email,
        details={"role": gone.role},
    )
    return True


async def open_invite(session: AsyncSession, *, token: str) -> OpenInvite | None:
    """The invite a link names, when it still works; reading it uses nothing up."""
    if not _plausible(token):
        return None
    row = (
        await session.execute(
            select(MemberInvite, Tenant.name)
            .join(Tenant, Tenant.id == MemberInvite.tenant_id)
            .where(MemberInvite.token_hash == _digest(token), MemberInvite.expires_at > func.now())
        )
    ).first()
    if row is None:
        return None
    found, tenant_name = row
    user = await session.scalar(
        select(User.id).where(func.lower(User.email) == found.email.lower())
    )
    return OpenInvite(
        tenant_name, found.email, found.role, found.expires_at, user is not None, found.tenant_id
    )


async def invite_refusal(session: AsyncSession, *, found: OpenInvite) -> MembersLimitReached | None:
    """Why the invite cannot be accepted now (its tenant has no seat left), if it cannot:
    an early answer, before anyone types a password; accepting checks again under the
    lock."""
    try:
        await check_join(
            session,
            tenant_id=found.tenant_id,
            email=found.email,
            counting_invites=False,
            lock=False,
        )
    except MembersLimitReached as refusal:
        return refusal
    return None


@dataclass(frozen=True)
class Accepted:
    tenant_id: uuid.UUID
    email: str
    role: str
    mailed: bool  # the link came by mail, which proves the address


async def take_invite(session: AsyncSession, *, token: str) -> Accepted | None:
    """Use up a valid link (in the caller's transaction): None when it does not work.
    The tenant row is locked first (as every membership change locks it before touching
    an invite), and stays locked for `join`'s check until the caller commits."""
    if not _plausible(token):
        return None
    tenant_id = await session.scalar(
        select(MemberInvite.tenant_id).where(MemberInvite.token_hash == _digest(token))
    )
    if tenant_id is None:
        return None
    await _lock_tenant(session, tenant_id)
    row = (
        await session.execute(
            delete(MemberInvite)
            .where(MemberInvite.token_hash == _digest(token), MemberInvite.expires_at > func.now())
            .returning(
                MemberInvite.tenant_id,
                MemberInvite.email,
                MemberInvite.role,
                MemberInvite.delivery,
            )
        )
    ).first()
    if row is None:
        return None
    return Accepted(row.tenant_id, row.email, row.role, row.delivery == MAIL)


async def join(session: AsyncSession, *, accepted: Accepted, user: User) -> str:
    """Make `user` (whose address the invite named) a member with the invite's role, in the
    caller's transaction; one already a member keeps the role they have. Their role.
    MembersLimitReached when the tenant's plan has no seat left (a downgrade since the
    invite was made): the caller rolls back, and the invite works again later."""
    if user.email.lower() != accepted.email.lower():
        raise MemberError(f"This invitation is for {accepted.email}.")
    # The invite's seat was counted when it was made: only members are counted now.
    await check_join(
        session, tenant_id=accepted.tenant_id, email=user.email, counting_invites=False
    )
    await session.execute(
        insert(Membership)
        .values(user_id=user.id, tenant_id=accepted.tenant_id, role=accepted.role)
        .on_conflict_do_nothing()
    )
    role = await session.scalar(
        select(Membership.role).where(
            Membership.user_id == user.id, Membership.tenant_id == accepted.tenant_id
        )
    )
    if accepted.mailed and user.email_verified_at is None:
        user.email_verified_at = utcnow()
        session.add(user)
    await audit.append(
        session,
        tenant_id=accepted.tenant_id,
        actor=f"user:{user.email}",
        action="member.joined",
        target=str(user.id),
        details={"email": user.email, "role": role or accepted.role},
    )
    return role or accepted.role


async def _owners(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count()).where(
            Membership.tenant_id == tenant_id, Membership.role == roles.OWNER
        )
    )
    return count or 0


async def _membership(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> tuple[Membership, str] | None:
    row = (
        await session.execute(
            select(Membership, User.email)
            .join(User, User.id == Membership.user_id)
            .where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
        )
    ).first()
    return (row[0], row[1]) if row else None


async def change_role(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    role: str,
    actor: str,
    acting_role: str | None = None,
) -> bool:
    """Give a member of the tenant another role; False: no such member. LastOwner when it
    would leave the tenant without an owner (raised before anything is written)."""
    roles.require(acting_role, "manage_members")
    _check_role(role)
    await _lock_tenant(session, tenant_id)
    found = await _membership(session, tenant_id, user_id)
    if found is None:
        return False
    membership, email = found
    before = membership.role
    if before == role:
        return True
    if before == roles.OWNER and await _owners(session, tenant_id) <= 1:
        raise LastOwner
    await session.execute(
        update(Membership)
        .where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
        .values(role=role)
    )
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="member.role_changed",
        target=str(user_id),
        details={"email": email, "from": before, "to": role},
    )
    return True


async def remove_member(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    actor: str,
    acting_role: str | None = None,
) -> bool:
    """Take a member's access to the tenant away (their account stays); False: no such
    member. LastOwner for the tenant's last owner (raised before anything is written)."""
    roles.require(acting_role, "manage_members")
    await _lock_tenant(session, tenant_id)
    found = await _membership(session, tenant_id, user_id)
    if found is None:
        return False
    membership, email = found
    if membership.role == roles.OWNER and await _owners(session, tenant_id) <= 1:
        raise LastOwner
    await session.execute(
        delete(Membership).where(Membership.tenant_id == tenant_id, Membership.user_id == user_id)
    )
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="member.removed",
        target=str(user_id),
        details={"email": email, "role": membership.role},
    )
    return True


@dataclass(frozen=True)
class Joined:
    user: User
    tenant_id: uuid.UUID
    role: str
    device_token: str | None = None  # of a sign-in made to accept, for the device cookie


INVALID_LINK = "This invitation does not work: it expired, was used or revoked, or was replaced."


async def accept_as_new_person(
    session: AsyncSession, guards: Guards, client: Client, *, token: str, name: str, password: str
) -> Joined:
    """A person new to Herald takes the invite: the account of the invited address, with
    this name and password, joins the tenant; the caller commits.
    AccountError (TooManyAttempts, a bad field, a link that does not work) otherwise."""
    accounts.check_name(name)
    accounts.check_new_password(password)
    wait = await guards.throttle.take((f"invite:net:{client.network}", INVITE_ACCEPT_PER_NETWORK))
    if wait:
        raise TooManyAttempts(wait)
    found = await open_invite(session, token=token)
    if found is None:
        raise AccountError(INVALID_LINK)
    if found.has_account:
        raise AccountError(f"{found.email} has a Herald account: sign in to it to join.")
    refusal = await invite_refusal(session, found=found)
    if refusal is not None:
        raise refusal
    await session.commit()  # hand the connection back while hashing
    password_hash = await guards.passwords.hash(password)
    accepted = await take_invite(session, token=token)
    if accepted is None:
        raise AccountError(INVALID_LINK)
    user = await accounts.add_user(
        session,
        email=accepted.email,
        name=name,
        password_hash=password_hash,
        verified=accepted.mailed,
    )
    return Joined(user, accepted.tenant_id, await join(session, accepted=accepted, user=user))


async def accept_as_user(
    session: AsyncSession,
    guards: Guards,
    client: Client,
    *,
    token: str,
    password: str,
    signed_in: User | None,
) -> Joined:
    """Someone with an account takes the invite: signed in to the invited address already,
    or signing in to it now with `password` (within the sign-in limits); the caller
    commits."""
    found = await open_invite(session, token=token)
    if found is None:
        raise AccountError(INVALID_LINK)
    refusal = await invite_refusal(session, found=found)
    if refusal is not None:
        raise refusal
    device_token = None
    user = signed_in
    if user is None or user.email.lower() != found.email.lower():
        signed = await accounts.sign_in(
            session, guards, client, email=found.email, password=password
        )
        user, device_token = signed.user, signed.device_token
    accepted = await take_invite(session, token=token)
    if accepted is None:
        raise AccountError(INVALID_LINK)
    role = await join(session, accepted=accepted, user=user)
    return Joined(user, accepted.tenant_id, role, device_token)
