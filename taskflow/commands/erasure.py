"""Erasure of a user by crypto-shredding (docs/privacy.md).

The log is append-only and hash-chained, so nothing in it is deleted: the user's personal data
there is ciphertext under their data key, and destroying the key erases it. Around that:

1. the data key is destroyed (a tombstone first, so no process can make a new one; every process
   is told to forget its cached copy), so from here on nothing personal of the user opens;
2. every refresh family of the user is revoked; their access tokens are refused by the erased
   check every authenticated request makes (principal.py);
3. their password hashes are deleted;
4. UserErased is appended to their stream: it holds no personal data, and the projectors,
   meeting it in log order, strip the user's task views of titles, descriptions, tags and
   search terms (projections/views.py `without_personal_data`);
5. the e-mail reservation is deleted, so the address can be registered again;
6. the caches around the read models (projections/erasure_purge.py, which the caller runs
   after this handler): the cached stream heads of the user and their tasks, cached list pages,
   change feeds and idempotent outcomes (those hold only ciphertext or ids, or are short-lived,
   but need not wait to expire).

Every step is idempotent, so erasing twice, or again after a crash, is harmless and finishes
what was left. An erasure racing a command cannot leave readable data: a command that still
had the key appends ciphertext under a key that no longer exists.
"""

from __future__ import annotations

from datetime import datetime

from taskflow import names
from taskflow.auth.refresh import RefreshTokens
from taskflow.commands.aggregates import USER
from taskflow.commands.errors import UserNotFoundError
from taskflow.commands.runner import Context, Outcome, execute
from taskflow.commands.user import EraseUser, UserState
from taskflow.commands.user_handlers import Accounts, Clock, load_user, reservations_of, utc_now
from taskflow.privacy.data_keys import DataKeys


async def handle_erase_user(
    accounts: Accounts,
    keys: DataKeys,
    refresh_tokens: RefreshTokens,
    *,
    user_id: str,
    context: Context,
    clock: Clock = utc_now,
) -> Outcome[UserState]:
    """Erase `user_id` (see the module docstring); UserNotFoundError if there is no such user."""
    user = await load_user(accounts.store, user_id)
    if user is None:
        raise UserNotFoundError(user_id)
    # Computed while the address can still be read (a second erasure finds it by user id).
    digest = accounts.email_digest(user.email) if user.email else None
    await keys.destroy(user_id)
    await _revoke_sessions(refresh_tokens, user_id, clock())
    await accounts.credentials.erase(user_id)
    outcome = await execute(
        accounts.store, USER, user_id, EraseUser(user_id=user_id), context, clock()
    )
    await reservations_of(accounts.db).delete_many({"user_id": user_id})
    if digest is not None:
        await accounts.redis.delete(names.email_user_key(digest))
    return outcome


async def _revoke_sessions(refresh_tokens: RefreshTokens, user_id: str, now: datetime) -> None:
    families = {
        str(doc["family_id"])
        async for doc in refresh_tokens.tokens.find({"user_id": user_id}, {"family_id": 1})
    }
    for family_id in families:
        await refresh_tokens.revoke_family(family_id, user_id, now, reason="erasure")
