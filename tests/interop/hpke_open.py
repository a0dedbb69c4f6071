"""Opening silta's sealed identity (Alert.sealed_identity) in Python: RFC 9180 HPKE, base mode,
DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, written out from the RFC with the
`cryptography` package's X25519 and ChaCha20-Poly1305 and the standard library's HMAC.

(`cryptography`'s own `hazmat.primitives.hpke` seals and opens this suite but takes no AAD,
which silta uses to bind the ciphertext to the alert; `pyhpke` supports AAD and works too.)

    code = open_sealed_identity(private_key_b64, alert, my_org)
"""

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

SUITE = "HPKE-base/X25519-HKDF-SHA256/HKDF-SHA256/ChaCha20Poly1305"
KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0003
KEM_SUITE = b"KEM" + KEM_ID.to_bytes(2, "big")
HPKE_SUITE = b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")


def _extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def _expand(prk, info, length):
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


def _labeled_extract(suite, salt, label, ikm):
    return _extract(salt, b"HPKE-v1" + suite + label + ikm)


def _labeled_expand(suite, prk, label, info, length):
    return _expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


def hpke_open(private_key: bytes, enc: bytes, ciphertext: bytes, info: bytes, aad: bytes) -> bytes:
    """RFC 9180 SetupBaseR + Open (sequence 0). Raises on any mismatch."""
    sk = X25519PrivateKey.from_private_bytes(private_key)
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    eae_prk = _labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + pk, 32)
    psk_id_hash = _labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash  # mode_base
    secret = _labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = _labeled_expand(HPKE_SUITE, secret, b"key", context, 32)
    nonce = _labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    return ChaCha20Poly1305(key).decrypt(nonce, ciphertext, aad)


def open_sealed_identity(private_key_b64: str, alert, my_org: str) -> str:
    """The identity code in `alert` (a silta.v1.Alert), as organisation `my_org`."""
    sealed = alert.sealed_identity
    if sealed.suite != SUITE:
        raise ValueError(f"unknown suite {sealed.suite!r}")
    info = b"silta/v1 sealed-identity\x00" + alert.flow_id.encode() + b"\x00" + my_org.encode()
    plain = hpke_open(base64.b64decode(private_key_b64.strip()), sealed.enc, sealed.ciphertext,
                      info, alert.alert_id.encode())
    return plain.decode("ascii")
