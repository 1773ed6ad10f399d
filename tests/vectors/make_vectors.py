"""Regenerate tests/vectors/crypto.json: `python tests/vectors/make_vectors.py`.

Run it only when the protocol version changes on purpose. The test suite never calls
this: it recomputes every output from the committed JSON's inputs and compares, and
cross-checks the primitives with an independent stdlib implementation.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from blindmap import crypto

OUT = Path(__file__).with_name("crypto.json")

# Alice and Bob are the RFC 7748 §6.1 key pairs, so the shared secret is checkable there.
PRIVATE_KEYS = {
    "alice": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
    "bob": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    "carol": hashlib.sha256(b"blindmap test vector: carol").hexdigest(),
}
PARTNERSHIPS = [
    ("6f1d3a52-8c4e-4b7a-9f21-0d5e3c7b9a10", "alice", "bob"),
    ("0b8c6f5e-2d41-4e3a-8a77-5c9e1f02d3b4", "alice", "carol"),
]
TOKEN_INPUTS = [
    ("domain", "acme.com"),
    ("domain", "example.co.uk"),
    ("domain", "xn--mnchen-3ya.de"),
    ("domain", "xn--fiqs8s.xn--fiqz9s"),
    ("domain", "acme.github.io"),
    ("name", "acme"),
    ("name", "mullerandsohne"),
    ("name", "東京電力"),
    ("name", "acme.com"),  # same value, other kind: must differ from the domain token
]
LOCAL_IDS = ["0015g00000XyZ1AAA", "row-42", "Zürich/ü-ñ 7"]
PARTNER_FIELDS: dict[str, Any] = {
    "stage": "Closed Won",
    "owner_email": "jo@acme.com",
    "name": "Acme Müller GmbH",
    "arr": 125000,
    "tags": ["co-sell", "emea"],
    "partner": None,
    "quote": 'say "hi"\n\\',
}
SELF_FIELDS: dict[str, Any] = {"local_id": "0015g00000XyZ1AAA", "note": "Zürich 東京"}
NONCE = bytes(range(12))
NONCE2 = bytes.fromhex("a1a2a3a4a5a6a7a8a9aaabac")
# Small-order (and non-canonical small-order) u-coordinates: X25519 gives all zeros.
LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def build() -> dict[str, Any]:
    privs = {
        n: X25519PrivateKey.from_private_bytes(bytes.fromhex(h)) for n, h in PRIVATE_KEYS.items()
    }
    parties = {}
    for name, priv in privs.items():
        pk = crypto.public_key_bytes(priv)
        parties[name] = {
            "private_key_hex": PRIVATE_KEYS[name],
            "public_key_hex": pk.hex(),
            "public_key_b64url": crypto.encode_public_key(pk),
            "fingerprint": crypto.fingerprint(pk),
            "self_key_hex": crypto.self_key(priv).hex(),
        }
    partnerships = []
    for pid_text, a, b in PARTNERSHIPS:
        pid = uuid.UUID(pid_text)
        pa, pb = crypto.public_key_bytes(privs[a]), crypto.public_key_bytes(privs[b])
        ka = crypto.PartnershipKeys.derive(privs[a], pb, pid)
        kb = crypto.PartnershipKeys.derive(privs[b], pa, pid)
        assert all(ka.key(p) == kb.key(p) for p in crypto.PURPOSES)
        tr = crypto.transcript(pid, pa, pb)
        refs = [
            {
                "owner": owner,
                "local_id": lid,
                "ref": crypto.pseudonymous_ref(crypto.self_key(privs[owner]), pid, lid),
            }
            for owner in (a, b)
            for lid in LOCAL_IDS
        ]
        ref0 = refs[0]["ref"]
        seals = []
        for kind, key, aad, fields, nonce in (
            ("partner", ka.key("seal"), crypto.partner_aad(pid, ref0), PARTNER_FIELDS, NONCE),
            ("self", crypto.self_key(privs[a]), crypto.self_aad(pid, ref0), SELF_FIELDS, NONCE2),
        ):
            blob = crypto.seal(key, aad, fields, _nonce=nonce)
            seals.append(
                {
                    "kind": kind,
                    "owner": a,
                    "ref": ref0,
                    "fields": fields,
                    "nonce_hex": nonce.hex(),
                    "aad_hex": aad.hex(),
                    "plaintext_utf8": crypto.canonical_json(fields).decode("utf-8"),
                    "sealed_hex": blob.hex(),
                }
            )
        partnerships.append(
            {
                "partnership_id": pid_text,
                "a": a,
                "b": b,
                "shared_secret_hex": privs[a].exchange(X25519PublicKey.from_public_bytes(pb)).hex(),
                "transcript_hex": tr.hex(),
                "salt_hex": hashlib.sha256(tr).hexdigest(),
                "keys_hex": {p: ka.key(p).hex() for p in crypto.PURPOSES},
                "safety_code": crypto.safety_code(pid, pa, pb),
                "tokens": [
                    {"kind": k, "value": v, "token_hex": ka.tokenizer(k).token(v).hex()}
                    for k, v in TOKEN_INPUTS
                ],
                "refs": refs,
                "seals": seals,
            }
        )
    return {
        "description": (
            "Blindmap protocol v1 golden vectors; see docs/protocol.md §'Test vectors'. "
            "Hex is lowercase; strings are Unicode (UTF-8 when hashed)."
        ),
        "protocol": crypto.PROTOCOL_VERSION,
        "parties": parties,
        "partnerships": partnerships,
        "low_order_public_keys_hex": LOW_ORDER,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
