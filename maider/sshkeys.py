"""OpenSSH public keys: parsing and the fingerprints vendors use to identify them."""

from __future__ import annotations

import base64
import hashlib

from maider.errors import ConfigError


def parse_public_key(text: str) -> tuple[str, bytes, str]:
    """(key type, key blob, comment) of an OpenSSH public key line."""
    parts = text.strip().split(None, 2)
    if len(parts) < 2:
        raise ConfigError("not an OpenSSH public key (expected 'ssh-ed25519 AAAA… comment')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ConfigError("not an OpenSSH public key: its base64 part does not decode") from None
    return parts[0], blob, parts[2] if len(parts) > 2 else ""


def fingerprint_md5(text: str) -> str:
    """aa:bb:… — the form DigitalOcean (and older tools) use."""
    digest = hashlib.md5(parse_public_key(text)[1], usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def fingerprint_sha256(text: str) -> str:
    """SHA256:… — the form `ssh-keygen -lf` prints."""
    digest = hashlib.sha256(parse_public_key(text)[1]).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def same_key(a: str, b: str) -> bool:
    """Whether two public key lines are the same key (comments and spacing ignored)."""
    try:
        return parse_public_key(a)[:2] == parse_public_key(b)[:2]
    except ConfigError:
        return False
