"""Ed25519 signatures over index records.

A record lists the sha256 of each of its payloads, so a valid signature over the record
vouches for every byte the loader will later deserialize. The loader checks the
signature before it reads any payload.
"""
from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .canonical import canonical_bytes

_SIGNATURE_FIELDS = ("signature", "signer")


def signed_bytes(record: dict) -> bytes:
    return b"ejaot-record-v1\0" + canonical_bytes({k: v for k, v in record.items() if k not in _SIGNATURE_FIELDS})


def public_key_id(pub: Ed25519PublicKey) -> str:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


class Signer:
    def __init__(self, key: Ed25519PrivateKey):
        self.key = key
        self.key_id = public_key_id(key.public_key())
        self._own = None          # a Verifier of this key, made on first use

    @classmethod
    def from_file(cls, path) -> "Signer":
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as e:
            raise ValueError(f"{path}: cannot read the signing key ({e.strerror})") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a PEM private key without a password ({e})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an ed25519 private key")
        return cls(key)

    def own_signature_problem(self, record: dict) -> str | None:
        """None when this key signed `record` as it is; else why not (unsigned, another
        key, tampered). Whoever re-signs or reuses a record checks this first, so that a
        signature never launders a record it did not cover."""
        if self._own is None:
            self._own = Verifier([self.key.public_key()])
        return self._own.problem(record)

    def sign(self, record: dict) -> dict:
        return {**record, "signer": self.key_id, "signature": self.key.sign(signed_bytes(record))}


def _load_public(k) -> Ed25519PublicKey:
    if isinstance(k, Ed25519PublicKey):
        return k
    if isinstance(k, Path) or (isinstance(k, str) and not k.startswith("-----BEGIN") and len(k) != 64):
        try:
            data = Path(k).read_bytes()
        except OSError as e:
            raise ValueError(f"trusted key {str(k)!r}: cannot read it ({e.strerror})") from None
        try:
            return _load_public(data)
        except ValueError as e:
            raise ValueError(f"trusted key file {str(k)!r}: {e}") from None
    if isinstance(k, str):
        k = k.encode()
    if isinstance(k, bytes) and k.startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(k)
    elif isinstance(k, bytes) and len(k) == 64:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(k.decode()))
    elif isinstance(k, bytes) and len(k) == 32:
        key = Ed25519PublicKey.from_public_bytes(k)
    else:
        raise ValueError("a trusted key must be an Ed25519PublicKey, PEM, 32 raw bytes or 64 hex digits")
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("trusted keys must be ed25519 public keys")
    return key


class Verifier:
    def __init__(self, trusted_keys):
        """trusted_keys: one key (a path, PEM text or bytes, hex, or an Ed25519PublicKey)
        or a list of them."""
        if isinstance(trusted_keys, (str, bytes, Path, Ed25519PublicKey)):
            trusted_keys = [trusted_keys]
        try:
            keys = [_load_public(k) for k in trusted_keys]
        except TypeError:
            raise ValueError(f"trusted_keys must be a key or a list of keys, got {type(trusted_keys).__name__}") from None
        if not keys:
            raise ValueError("trusted_keys is empty: no entry could ever be accepted")
        self.keys = {public_key_id(k): k for k in keys}

    def problem(self, record: dict) -> str | None:
        sig, signer = record.get("signature"), record.get("signer")
        if sig is None or signer is None:
            return "unsigned entry (trusted_keys were given)"
        key = self.keys.get(signer)
        if key is None:
            return f"signed by an untrusted key {str(signer)[:16]}"
        if not isinstance(sig, bytes):
            return "malformed signature"
        try:
            key.verify(sig, signed_bytes(record))
        except InvalidSignature:
            return "signature does not match the record (tampered)"
        return None


def generate_keypair(private_path, public_path) -> str:
    key = Ed25519PrivateKey.generate()
    Path(private_path).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    Path(public_path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_key_id(key.public_key())
