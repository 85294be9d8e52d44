"""Secret key files (the operator's reset and heartbeat key, the bundle-signing key): where
they live, how they are made and checked, and the MAC and canonical JSON signed with them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class OperatorKeyError(ValueError):
    """The operator key file is missing or unsafe; the message says how to fix it."""


def default_key_path() -> Path:
    env = os.environ.get("ALGD_OPERATOR_KEY")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "algd-runtime" / "operator.key"


def create_key(path: str | Path) -> Path:
    """A new random key, readable by its owner only; an existing key is never overwritten."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


def secret_file_problem(path: Path) -> str | None:
    """Why a key file may not be used as a secret (missing, or readable by others), or None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    if st.st_mode & 0o077:
        return f"{path} is readable by others (mode {st.st_mode & 0o777:o}); expected 600: chmod 600 {path}"
    return None


def load_key(path: str | Path) -> bytes:
    path = Path(path).expanduser()
    hint = f"create one with `algd-reset --init-key {path}`"
    problem = secret_file_problem(path)
    if problem:
        raise OperatorKeyError(f"operator_key_file: {problem}" + (f"; {hint}" if not path.exists() else ""))
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise OperatorKeyError(f"operator_key_file: {path}: expected {KEY_BYTES * 2} hex digits; {hint}") from None
    if len(key) < 16:
        raise OperatorKeyError(f"operator_key_file: {path}: expected at least 16 bytes of key, got {len(key)}; {hint}")
    return key


def mac(key: bytes, purpose: str, *parts: str) -> str:
    """HMAC-SHA256 over purpose and parts: one purpose's MAC is never valid for another."""
    msg = "\x1f".join((purpose, *parts)).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def canonical(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))
