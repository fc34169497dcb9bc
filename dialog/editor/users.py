"""Editor accounts and their sessions, stored in the bank's ``users`` and ``sessions`` tables.

Passwords are hashed with scrypt (hashlib, no extra dependency) and a random salt per user; the stored
string names its parameters so they can be raised later without breaking old hashes. Session tokens are
random; only their SHA-256 is stored, so reading the database does not let anyone log in.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.bank.schema import ROLES, BankError
from core.bank.store import PhraseBank
from core.text import normalize_text

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD_CHARS = 8
SESSION_HOURS = 12
RANK = {role: rank for rank, role in enumerate(ROLES)}


@dataclass(frozen=True)
class User:
    name: str
    role: str
    disabled: bool

    def can(self, role: str) -> bool:
        """Roles are ordered (viewer < editor < reviewer < admin): each may do what the ones below may."""
        return not self.disabled and RANK[self.role] >= RANK[role]


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(actual.hex(), digest)


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def _now() -> datetime:
    return datetime.now(UTC)


def _audit(conn: sqlite3.Connection, who: str, at: str, action: str, target: str, detail: str) -> None:
    conn.execute("INSERT INTO audit (who, at, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                 (who, at, action, target, detail))


def _token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """Accounts and sessions of one bank."""

    def __init__(self, bank: PhraseBank) -> None:
        self.bank = bank

    def add(self, name: str, password: str, role: str, *, who: str = "cli") -> User:
        name = normalize_text(name)
        if not name or len(name) > 64 or any(ch in name for ch in "<>&\"'"):
            raise BankError(f"user name {name!r} must be 1-64 characters without <>&\"'")
        if role not in ROLES:
            raise BankError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD_CHARS:
            raise BankError(f"the password is shorter than {MIN_PASSWORD_CHARS} characters; choose a longer one")
        hashed = hash_password(password)
        with self.bank.connect(write=True) as conn:
            if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise BankError(f"user {name!r} already exists; pick another name or disable the old account")
            at = _now().isoformat(timespec="seconds")
            conn.execute("INSERT INTO users (name, password, role, disabled, created) VALUES (?, ?, ?, 0, ?)",
                         (name, hashed, role, at))
            _audit(conn, who, at, "add user", name, f"role {role}")
        return User(name, role, False)

    def list(self) -> list[User]:
        with self.bank.connect() as conn:
            rows = conn.execute("SELECT name, role, disabled FROM users ORDER BY name").fetchall()
        return [User(name, role, bool(disabled)) for name, role, disabled in rows]

    def disable(self, name: str, *, who: str = "cli") -> None:
        with self.bank.connect(write=True) as conn:
            if conn.execute("UPDATE users SET disabled = 1 WHERE name = ?", (name,)).rowcount == 0:
                raise BankError(f"no user {name!r}; `repliq editor users list` shows the accounts")
            conn.execute("DELETE FROM sessions WHERE user = ?", (name,))
            _audit(conn, who, _now().isoformat(timespec="seconds"), "disable user", name, "")

    def record(self, who: str, action: str, target: str, detail: str = "") -> None:
        """An audited action that is not an account change (an admin's publish, with its outcome)."""
        with self.bank.connect(write=True) as conn:
            _audit(conn, who, _now().isoformat(timespec="seconds"), action, target, detail[:500])

    def audit(self, limit: int = 50) -> list[tuple[str, str, str, str, str]]:
        """The latest account changes, newest first: (who, at, action, target, detail)."""
        with self.bank.connect() as conn:
            return conn.execute("SELECT who, at, action, target, detail FROM audit ORDER BY id DESC LIMIT ?",
                                (limit,)).fetchall()

    def has_admin(self) -> bool:
        with self.bank.connect() as conn:
            return conn.execute("SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0").fetchone() is not None

    def login(self, name: str, password: str) -> str | None:
        """A new session token for valid credentials of an enabled user, else None (no hint which was wrong)."""
        with self.bank.connect() as conn:
            row = conn.execute("SELECT password, disabled FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            verify_password(password, _dummy_hash())  # as slow as a real check: no hint that the name is unknown
            return None
        if not verify_password(password, row[0]) or row[1]:
            return None
        token = secrets.token_urlsafe(32)
        now = _now()
        with self.bank.connect(write=True) as conn:
            conn.execute("DELETE FROM sessions WHERE expires < ?", (now.isoformat(),))
            conn.execute("INSERT INTO sessions (token_sha256, user, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
                         (_token_sha(token), name, secrets.token_urlsafe(24), now.isoformat(),
                          (now + timedelta(hours=SESSION_HOURS)).isoformat()))
        return token

    def session(self, token: str) -> Session | None:
        if not token:
            return None
        with self.bank.connect() as conn:
            row = conn.execute(
                "SELECT u.name, u.role, u.disabled, s.csrf, s.expires FROM sessions s JOIN users u ON u.name = s.user "
                "WHERE s.token_sha256 = ?", (_token_sha(token),)).fetchone()
        if row is None or row[2] or row[4] < _now().isoformat():
            return None
        return Session(User(row[0], row[1], False), row[3])

    def logout(self, token: str) -> None:
        with self.bank.connect(write=True) as conn:
            conn.execute("DELETE FROM sessions WHERE token_sha256 = ?", (_token_sha(token),))
