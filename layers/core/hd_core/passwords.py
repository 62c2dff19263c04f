"""User passwords: the length rule, Argon2id hashing and setting a user's password.

Passwords are hashed with the same Argon2id parameters as API keys (OWASP's: 19 MiB, 2 passes,
1 lane), so `ApiKeyHasher` serves both; only the policy around it differs.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import replace

from hd_core.api_keys import ApiKeyHasher
from hd_core.errors import Conflict, InvalidRequest, NotFound, PasswordChangeRequired
from hd_core.models import User, UserStatus, random_base62
from hd_core.ports import UserStore

MIN_PASSWORD_LENGTH = 12
# Argon2 hashes any length, but a megabyte-long "password" per login attempt is a cheap DoS lever.
MAX_PASSWORD_LENGTH = 1024

_dummy_hashes: weakref.WeakKeyDictionary[ApiKeyHasher, str] = weakref.WeakKeyDictionary()
_dummy_lock = threading.Lock()


def check_password_policy(plaintext: str) -> None:
    """Raise `InvalidRequest` unless the password is 12 to 1024 characters long."""
    if len(plaintext) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(plaintext) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")


def hash_password(hasher: ApiKeyHasher, plaintext: str) -> str:
    """The Argon2id hash of a password that meets the policy; raises `InvalidRequest` otherwise."""
    check_password_policy(plaintext)
    return hasher.hash(plaintext)


def verify_password(hasher: ApiKeyHasher, password_hash: str | None, plaintext: str) -> bool:
    """Whether `plaintext` matches `password_hash`; always costs one Argon2 verify, even without a hash.

    A user without a password (None) is checked against a dummy hash, so the time taken does not
    tell an attacker which accounts have a password.
    """
    if password_hash is None:
        hasher.verify(dummy_password_hash(hasher), plaintext)
        return False
    return hasher.verify(password_hash, plaintext)


def dummy_password_hash(hasher: ApiKeyHasher) -> str:
    """A hash of a random secret made with `hasher`'s parameters, computed once per hasher.

    Verifying against it costs what a real verify costs and never succeeds in practice.
    """
    with _dummy_lock:
        dummy = _dummy_hashes.get(hasher)
        if dummy is None:
            dummy = hasher.hash(random_base62(32))
            _dummy_hashes[hasher] = dummy
        return dummy


def set_password(
    store: UserStore, hasher: ApiKeyHasher, user_id: str, plaintext: str, *, must_change: bool = False
) -> User:
    """Hash and store a new password for a user that is not removed; returns the updated user.

    `must_change` marks an administrator's reset: the password then only serves to choose a new
    one (`require_password_current`). Who may set whose password, and with what proof, is decided
    by `hd_core.credential_admin`. Raises `InvalidRequest` for a password that breaks the length
    rule, `NotFound` for an unknown user and `Conflict` for a removed one.
    """
    password_hash = hash_password(hasher, plaintext)
    user = store.get_user(user_id)
    if user is None:
        raise NotFound("user not found")
    if user.status == UserStatus.REMOVED:
        raise Conflict("a removed user cannot be given a password")
    updated = replace(user, password_hash=password_hash, password_must_change=must_change)
    store.put_user(updated)
    return updated


def require_password_current(user: User) -> None:
    """Raise `PasswordChangeRequired` if the user's password was set by an administrator and not yet replaced."""
    if user.password_must_change:
        raise PasswordChangeRequired()
