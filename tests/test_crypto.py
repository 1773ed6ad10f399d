"""Protocol v1 crypto: golden vectors, an independent re-implementation, properties.

The golden vectors in tests/vectors/crypto.json are committed; this file recomputes them
and never regenerates them. The independent implementation below (pure-Python X25519
per RFC 7748, HKDF per RFC 5869, HMAC from the stdlib) checks that the vectors are not
merely self-confirming.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindmap import crypto

pytestmark = pytest.mark.usefixtures("no_network")

VECTORS = json.loads((Path(__file__).parent / "vectors" / "crypto.json").read_text("utf-8"))


# --------------------------------------------------------- independent reference


_P = 2**255 - 19
_A24 = 121665


def ref_x25519(k: bytes, u: bytes) -> bytes:
    """RFC 7748 §5 Montgomery ladder, straight from the text."""
    kb = bytearray(k)
    kb[0] &= 248
    kb[31] &= 127
    kb[31] |= 64
    scalar = int.from_bytes(kb, "little")
    ub = bytearray(u)
    ub[31] &= 127
    x1 = int.from_bytes(ub, "little") % _P
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(32, "little")


def ref_hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 extract-then-expand with stdlib hmac."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def ref_hmac16(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:16]


def test_reference_x25519_matches_rfc7748() -> None:
    # RFC 7748 §5.2 first test vector and §6.1 Diffie-Hellman
    assert (
        ref_x25519(
            bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
            bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
        ).hex()
        == "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    )
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    base = (9).to_bytes(32, "little")
    assert (
        ref_x25519(alice, base).hex()
        == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )


def test_reference_hkdf_matches_rfc5869() -> None:
    # RFC 5869 A.1
    okm = ref_hkdf(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# ---------------------------------------------------------------- golden vectors


def _priv(name: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(
        bytes.fromhex(VECTORS["parties"][name]["private_key_hex"])
    )


def _pub(name: str) -> bytes:
    return bytes.fromhex(VECTORS["parties"][name]["public_key_hex"])


def test_vector_file_shape() -> None:
    assert VECTORS["protocol"] == crypto.PROTOCOL_VERSION == "blindmap-v1"
    assert len(VECTORS["partnerships"]) >= 2
    kinds = {t["kind"] for p in VECTORS["partnerships"] for t in p["tokens"]}
    assert kinds == set(crypto.TOKEN_KINDS)


@pytest.mark.parametrize("name", sorted(VECTORS["parties"]))
def test_party_vectors(name: str) -> None:
    v = VECTORS["parties"][name]
    priv = _priv(name)
    raw_priv = bytes.fromhex(v["private_key_hex"])
    pk = crypto.public_key_bytes(priv)
    assert pk.hex() == v["public_key_hex"]
    assert ref_x25519(raw_priv, (9).to_bytes(32, "little")) == pk
    assert crypto.encode_public_key(pk) == v["public_key_b64url"]
    assert crypto.decode_public_key(v["public_key_b64url"]) == pk
    assert crypto.fingerprint(pk) == v["fingerprint"]
    fp = hashlib.sha256(b"blindmap-v1/fingerprint" + pk).hexdigest()[:32]
    assert v["fingerprint"] == ":".join(fp[i : i + 4] for i in range(0, 32, 4))
    assert crypto.self_key(priv).hex() == v["self_key_hex"]
    label = b"blindmap-v1/self"
    assert ref_hkdf(raw_priv, hashlib.sha256(label).digest(), label).hex() == v["self_key_hex"]


@pytest.mark.parametrize("p", VECTORS["partnerships"], ids=lambda p: f"{p['a']}-{p['b']}")
def test_partnership_vectors(p: dict[str, Any]) -> None:
    pid = uuid.UUID(p["partnership_id"])
    a, b = p["a"], p["b"]
    pa, pb = _pub(a), _pub(b)

    # independent derivation
    shared = ref_x25519(bytes.fromhex(VECTORS["parties"][a]["private_key_hex"]), pb)
    assert shared.hex() == p["shared_secret_hex"]
    assert shared == ref_x25519(bytes.fromhex(VECTORS["parties"][b]["private_key_hex"]), pa)
    transcript = b"blindmap-v1" + pid.bytes + min(pa, pb) + max(pa, pb)
    assert transcript.hex() == p["transcript_hex"]
    salt = hashlib.sha256(transcript).digest()
    assert salt.hex() == p["salt_hex"]
    for purpose, key_hex in p["keys_hex"].items():
        assert ref_hkdf(shared, salt, b"blindmap-v1/" + purpose.encode()).hex() == key_hex
    assert set(p["keys_hex"]) == set(crypto.PURPOSES)

    # the package, from both sides
    ka = crypto.PartnershipKeys.derive(_priv(a), pb, pid)
    kb = crypto.PartnershipKeys.derive(_priv(b), pa, pid)
    assert crypto.transcript(pid, pa, pb).hex() == p["transcript_hex"]
    for keys in (ka, kb):
        assert {q: keys.key(q).hex() for q in crypto.PURPOSES} == p["keys_hex"]
        assert keys.safety_code() == p["safety_code"]

    digest = hashlib.sha256(b"blindmap-v1/safety" + pid.bytes + min(pa, pb) + max(pa, pb))
    n = int.from_bytes(digest.digest()[:16], "big") % 10**30
    assert p["safety_code"].replace(" ", "") == f"{n:030d}"
    assert [len(g) for g in p["safety_code"].split(" ")] == [5] * 6

    for t in p["tokens"]:
        key = bytes.fromhex(p["keys_hex"]["match/" + t["kind"]])
        assert ref_hmac16(key, t["value"].encode("utf-8")).hex() == t["token_hex"]
        assert ka.tokenizer(t["kind"]).token(t["value"]).hex() == t["token_hex"]
        assert kb.tokenizer(t["kind"]).tokens([t["value"]]) == [bytes.fromhex(t["token_hex"])]

    for r in p["refs"]:
        sk = bytes.fromhex(VECTORS["parties"][r["owner"]]["self_key_hex"])
        assert ref_hmac16(sk, pid.bytes + r["local_id"].encode()).hex() == r["ref"]
        assert crypto.pseudonymous_ref(sk, pid, r["local_id"]) == r["ref"]
        assert crypto.RefMaker(sk, pid).refs([r["local_id"]]) == [r["ref"]]

    for s in p["seals"]:
        if s["kind"] == "partner":
            key = bytes.fromhex(p["keys_hex"]["seal"])
            aad = b"blindmap-v1/partner" + pid.bytes + s["ref"].encode()
            assert crypto.partner_aad(pid, s["ref"]) == aad
        else:
            key = bytes.fromhex(VECTORS["parties"][s["owner"]]["self_key_hex"])
            aad = b"blindmap-v1/self" + pid.bytes + s["ref"].encode()
            assert crypto.self_aad(pid, s["ref"]) == aad
        assert aad.hex() == s["aad_hex"]
        nonce = bytes.fromhex(s["nonce_hex"])
        plain = json.dumps(s["fields"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert plain == s["plaintext_utf8"]
        assert crypto.canonical_json(s["fields"]) == plain.encode("utf-8")
        blob = bytes.fromhex(s["sealed_hex"])
        # straight AES-GCM, bypassing the Sealer
        assert blob == nonce + AESGCM(key).encrypt(nonce, plain.encode("utf-8"), aad)
        assert crypto.seal(key, aad, s["fields"], _nonce=nonce) == blob
        assert crypto.open_sealed(key, aad, blob) == s["fields"]
        if s["kind"] == "partner":
            assert kb.sealer().open(kb.aad(s["ref"]), blob) == s["fields"]


def test_vectors_differ_across_partnerships() -> None:
    p1, p2 = VECTORS["partnerships"][:2]
    assert not set(p1["keys_hex"].values()) & set(p2["keys_hex"].values())
    assert not {t["token_hex"] for t in p1["tokens"]} & {t["token_hex"] for t in p2["tokens"]}
    assert p1["safety_code"] != p2["safety_code"]


@pytest.mark.parametrize("bad_hex", VECTORS["low_order_public_keys_hex"])
def test_low_order_public_keys_rejected(bad_hex: str) -> None:
    bad = bytes.fromhex(bad_hex)
    assert ref_x25519(bytes.fromhex(VECTORS["parties"]["alice"]["private_key_hex"]), bad) == bytes(
        32
    )
    with pytest.raises(crypto.InvalidPublicKeyError, match="all-zero shared secret"):
        crypto.PartnershipKeys.derive(_priv("alice"), bad, uuid.uuid4())


# ----------------------------------------------------------------- unit behaviour


def test_public_key_validation() -> None:
    with pytest.raises(crypto.InvalidPublicKeyError, match="32 bytes"):
        crypto.load_public_key(b"\x01" * 31)
    with pytest.raises(crypto.InvalidPublicKeyError):
        crypto.load_public_key("not bytes")  # type: ignore[arg-type]
    for text in ["", "abc", "A" * 44, "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTm+", "é" * 43]:
        with pytest.raises(crypto.InvalidPublicKeyError):
            crypto.decode_public_key(text)
    # non-canonical trailing bits in the last base64 character
    with pytest.raises(crypto.InvalidPublicKeyError, match="canonical"):
        crypto.decode_public_key("hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmp")


def test_unknown_purpose_and_kind() -> None:
    keys = crypto.PartnershipKeys.derive(_priv("alice"), _pub("bob"), uuid.uuid4())
    with pytest.raises(ValueError, match="purpose"):
        keys.key("match/email")
    with pytest.raises(ValueError, match="kind"):
        keys.tokenizer("email")


def test_no_key_material_in_repr() -> None:
    keys = crypto.PartnershipKeys.derive(_priv("alice"), _pub("bob"), uuid.uuid4())
    secrets = [keys.key(p) for p in crypto.PURPOSES]
    objs = [
        keys,
        keys.tokenizer("domain"),
        keys.sealer(),
        crypto.RefMaker(secrets[0], uuid.uuid4()),
    ]
    for obj in objs:
        text = repr(obj) + str(obj)
        for s in secrets:
            assert s.hex() not in text
            assert repr(s) not in text
    assert "bob" not in repr(keys)  # only fingerprints
    assert crypto.fingerprint(_pub("bob")) in repr(keys)


def test_seal_open_errors() -> None:
    key = os.urandom(32)
    with pytest.raises(crypto.SealError, match="too short"):
        crypto.open_sealed(key, b"", b"\x00" * 27)
    with pytest.raises(crypto.SealError, match="cannot be sealed"):
        crypto.seal(key, b"", {"x": float("nan")})
    with pytest.raises(crypto.SealError, match="cannot be sealed"):
        crypto.seal(key, b"", {"x": "\ud800"})  # lone surrogate: not UTF-8
    with pytest.raises(ValueError, match="nonce"):
        crypto.seal(key, b"", {}, _nonce=b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        crypto.Sealer(b"k" * 16)
    nonce = os.urandom(12)
    not_object = nonce + AESGCM(key).encrypt(nonce, b"[1,2]", b"")
    with pytest.raises(crypto.SealError, match="not a JSON object"):
        crypto.open_sealed(key, b"", not_object)


def test_random_nonces_differ() -> None:
    sealer = crypto.Sealer(os.urandom(32))
    blobs = {sealer.seal(b"aad", {"a": 1})[:12] for _ in range(50)}
    assert len(blobs) == 50


def test_safety_codes_equal() -> None:
    code = VECTORS["partnerships"][0]["safety_code"]
    assert crypto.safety_codes_equal(code, code.replace(" ", ""))
    assert crypto.safety_codes_equal(code, " " + code.replace(" ", "-") + " ")
    wrong = ("1" if code[0] != "1" else "2") + code[1:]
    assert not crypto.safety_codes_equal(code, wrong)
    assert not crypto.safety_codes_equal(code, code[:-1])


def test_public_all() -> None:
    for name in crypto.__all__:
        assert hasattr(crypto, name), name


# ---------------------------------------------------------------------- properties

_keys_cache: dict[int, X25519PrivateKey] = {}


def _key(seed: int) -> X25519PrivateKey:
    if seed not in _keys_cache:
        _keys_cache[seed] = X25519PrivateKey.from_private_bytes(
            hashlib.sha256(b"prop-key-%d" % seed).digest()
        )
    return _keys_cache[seed]


seeds = st.integers(min_value=0, max_value=40)
uuids = st.uuids()
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
field_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=10,
)
fields_st = st.dictionaries(texts, field_values, max_size=6)
prop = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@prop
@given(seeds, seeds, uuids, st.lists(texts, min_size=1, max_size=8))
def test_prop_both_sides_agree(sa: int, sb: int, pid: uuid.UUID, values: list[str]) -> None:
    if sa == sb:
        sb = sa + 41
    a, b = _key(sa), _key(sb)
    ka = crypto.PartnershipKeys.derive(a, crypto.public_key_bytes(b), pid)
    kb = crypto.PartnershipKeys.derive(b, crypto.public_key_bytes(a), pid)
    for kind in crypto.TOKEN_KINDS:
        assert ka.tokenizer(kind).tokens(values) == kb.tokenizer(kind).tokens(values)
        assert [ka.tokenizer(kind).token(v) for v in values] == ka.tokenizer(kind).tokens(values)
    assert ka.safety_code() == kb.safety_code()
    assert crypto.safety_codes_equal(ka.safety_code(), kb.safety_code())


@prop
@given(seeds, seeds, uuids, uuids, texts)
def test_prop_tokens_differ_across_partnerships_and_kinds(
    sa: int, sb: int, p1: uuid.UUID, p2: uuid.UUID, value: str
) -> None:
    if sa == sb:
        sb = sa + 41
    if p1 == p2:
        return
    pb = crypto.public_key_bytes(_key(sb))
    k1 = crypto.PartnershipKeys.derive(_key(sa), pb, p1)
    k2 = crypto.PartnershipKeys.derive(_key(sa), pb, p2)
    assert k1.tokenizer("domain").token(value) != k2.tokenizer("domain").token(value)
    assert k1.tokenizer("domain").token(value) != k1.tokenizer("name").token(value)
    assert len({k1.key(p) for p in crypto.PURPOSES} | {k2.key(p) for p in crypto.PURPOSES}) == 6
    assert k1.safety_code() != k2.safety_code()


@prop
@given(seeds, seeds, seeds, uuids, texts)
def test_prop_third_party_derives_nothing(
    sa: int, sb: int, sc: int, pid: uuid.UUID, value: str
) -> None:
    sb = sb + 41 if sb == sa else sb
    sc = sc + 100 if sc in (sa, sb) else sc
    a, b, c = _key(sa), _key(sb), _key(sc)
    pa, pb = crypto.public_key_bytes(a), crypto.public_key_bytes(b)
    ab = crypto.PartnershipKeys.derive(a, pb, pid)
    # Carol pretends to be B towards A (and A towards B): none of her keys match.
    for mallory in (
        crypto.PartnershipKeys.derive(c, pa, pid),
        crypto.PartnershipKeys.derive(c, pb, pid),
    ):
        assert not {ab.key(p) for p in crypto.PURPOSES} & {mallory.key(p) for p in crypto.PURPOSES}
        for kind in crypto.TOKEN_KINDS:
            assert mallory.tokenizer(kind).token(value) != ab.tokenizer(kind).token(value)
        assert not crypto.safety_codes_equal(mallory.safety_code(), ab.safety_code())
    blob = ab.sealer().seal(ab.aad("r"), {"x": value})
    with pytest.raises(crypto.SealError):
        crypto.PartnershipKeys.derive(c, pa, pid).sealer().open(ab.aad("r"), blob)


@prop
@given(fields_st, uuids, texts)
def test_prop_seal_round_trip(fields: dict[str, Any], pid: uuid.UUID, ref: str) -> None:
    keys = crypto.PartnershipKeys.derive(_key(1), crypto.public_key_bytes(_key(2)), pid)
    partner = keys.sealer()
    blob = partner.seal(crypto.partner_aad(pid, ref), fields)
    assert len(blob) == 12 + len(crypto.canonical_json(fields)) + 16
    assert partner.open(crypto.partner_aad(pid, ref), blob) == fields
    mine = crypto.Sealer(crypto.self_key(_key(1)))
    blob2 = mine.seal(crypto.self_aad(pid, ref), fields)
    assert mine.open(crypto.self_aad(pid, ref), blob2) == fields
    # a self-sealed blob is not a partner-sealed one, and vice versa
    with pytest.raises(crypto.SealError):
        partner.open(crypto.partner_aad(pid, ref), blob2)
    with pytest.raises(crypto.SealError):
        mine.open(crypto.partner_aad(pid, ref), blob2)


@prop
@given(fields_st, uuids, texts, texts, st.data())
def test_prop_tampering_fails(
    fields: dict[str, Any], pid: uuid.UUID, ref: str, other_ref: str, data: st.DataObject
) -> None:
    key = crypto.PartnershipKeys.derive(_key(3), crypto.public_key_bytes(_key(4)), pid).key("seal")
    sealer = crypto.Sealer(key)
    aad = crypto.partner_aad(pid, ref)
    blob = sealer.seal(aad, fields)
    # flip one bit anywhere: nonce, ciphertext or tag
    pos = data.draw(st.integers(0, len(blob) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(blob)
    tampered[pos] ^= 1 << bit
    with pytest.raises(crypto.SealError):
        sealer.open(aad, bytes(tampered))
    with pytest.raises(crypto.SealError):
        sealer.open(aad, blob[:-1])
    if other_ref != ref:  # payload moved to another record
        with pytest.raises(crypto.SealError):
            sealer.open(crypto.partner_aad(pid, other_ref), blob)
    other_pid = uuid.UUID(int=pid.int ^ 1)
    with pytest.raises(crypto.SealError):
        sealer.open(crypto.partner_aad(other_pid, ref), blob)
    with pytest.raises(crypto.SealError):
        sealer.open(crypto.self_aad(pid, ref), blob)


@prop
@given(st.binary(min_size=32, max_size=32), uuids, st.lists(texts, max_size=6))
def test_prop_ref_maker_matches_one_shot(sk: bytes, pid: uuid.UUID, ids: list[str]) -> None:
    maker = crypto.RefMaker(sk, pid)
    expected = [crypto.pseudonymous_ref(sk, pid, i) for i in ids]
    assert maker.refs(ids) == expected == [maker.ref(i) for i in ids]
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in expected)
    assert expected == [ref_hmac16(sk, pid.bytes + i.encode()).hex() for i in ids]


@prop
@given(st.binary(min_size=0, max_size=100), st.binary(max_size=200))
def test_prop_prekeyed_hmac_is_hmac(key: bytes, msg: bytes) -> None:
    mac = crypto._PrekeyedHmacSha256(key)
    assert mac.digest16(msg) == ref_hmac16(key, msg)
    assert mac.digests16([msg, msg + b"x"]) == [ref_hmac16(key, msg), ref_hmac16(key, msg + b"x")]


# ------------------------------------------------- acceptance: separate processes

_SIDE = textwrap.dedent(
    """
    import json, sys, uuid
    from pathlib import Path
    from blindmap import crypto, keyfile

    key_file, partner_pub_file, pid = sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3])
    priv = keyfile.load_private_key(key_file)
    partner = crypto.decode_public_key(Path(partner_pub_file).read_text())
    keys = crypto.PartnershipKeys.derive(priv, partner, pid)
    values = ["acme.com", "xn--mnchen-3ya.de", "acme"]
    print(json.dumps({
        "keys": {p: keys.key(p).hex() for p in crypto.PURPOSES},
        "tokens": {k: [t.hex() for t in keys.tokenizer(k).tokens(values)]
                   for k in crypto.TOKEN_KINDS},
        "safety_code": keys.safety_code(),
    }))
    """
)


def test_separate_processes_derive_identical_keys(tmp_path: Path) -> None:
    """Acceptance: key pairs generated in separate processes agree; a third party does not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLINDMAP_")}
    pid = str(uuid.uuid4())
    names = ["a", "b", "c"]
    pubs: dict[str, Path] = {}
    for name in names:
        home = tmp_path / name
        home.mkdir(mode=0o700)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "blindmap.cli",
                "--json",
                "init",
                "--key-file",
                str(home / "key.pem"),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        info = json.loads(out.stdout)
        assert "PRIVATE" not in out.stdout + out.stderr
        pubs[name] = home / "pub.txt"
        pubs[name].write_text(info["public_key"])

    def side(me: str, partner: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-c", _SIDE, str(tmp_path / me / "key.pem"), str(pubs[partner]), pid],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    a_view, b_view = side("a", "b"), side("b", "a")
    assert a_view == b_view
    assert len(set(a_view["keys"].values())) == 3
    for mallory in (side("c", "a"), side("c", "b")):
        assert not set(mallory["keys"].values()) & set(a_view["keys"].values())
        for kind in crypto.TOKEN_KINDS:
            assert not set(mallory["tokens"][kind]) & set(a_view["tokens"][kind])
        assert mallory["safety_code"] != a_view["safety_code"]


def test_seal_many_opens_like_seal_with_fresh_nonces() -> None:
    key = os.urandom(32)
    sealer = crypto.Sealer(key)
    items = [(f"aad{i}".encode(), {"n": str(i), "z": None, "ü": "ß"}) for i in range(20)]
    blobs = sealer.seal_many(items)
    assert [sealer.open(aad, b) for (aad, _), b in zip(items, blobs, strict=True)] == [
        f for _, f in items
    ]
    assert len({b[:12] for b in blobs}) == 20
    assert sealer.seal_many([]) == []


def test_canonical_json_fast_path_equals_the_encoder() -> None:
    cases: list[dict[str, Any]] = [
        {},
        {"b": "x", "a": None, "c": 'q"\\\n\t\x01é漢'},
        {"n": 1, "f": 1.5, "t": True, "l": [1, "a"], "d": {"y": 2, "x": 1}},
    ]
    for fields in cases:
        expected = json.dumps(
            fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
        assert crypto.canonical_json(fields) == expected
    for bad in ({"x": float("nan")}, {"x": object()}, {"x": "\ud800"}):
        with pytest.raises(crypto.SealError):
            crypto.canonical_json(bad)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8),
        st.none() | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12),
        max_size=5,
    )
)
def test_flat_fields_encode_like_canonical_json(fields: dict[str, str | None]) -> None:
    flat = crypto.FlatFields(fields)
    assert flat.names == tuple(sorted(fields))
    assert flat.encode([fields[n] for n in flat.names]) == crypto.canonical_json(fields)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=10), max_size=6),
    st.lists(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=10), max_size=6),
)
def test_flat_fields_columns_encode_like_one_record_at_a_time(
    first: list[str], second: list[str]
) -> None:
    """`encode_columns` writes each record as `encode` does, "" as null where nullable."""
    n = min(len(first), len(second))
    first, second = first[:n], second[:n]
    flat = crypto.FlatFields(["b", "a"])
    got = flat.encode_columns({"a": first, "b": second}, nullable=["b"])
    assert got == [flat.encode([a, b or None]) for a, b in zip(first, second, strict=True)]
    assert got == [crypto.canonical_json({"a": a, "b": b or None}) for a, b in zip(first, second)]


_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["a", "b%s", "c%", '"d"', "e\n"]), min_size=1, unique=True),
    st.data(),
)
def test_flat_fields_columns_match_canonical_json_plain_or_not(names, data) -> None:
    """Columns with nothing to escape take a path of their own: names and values with
    `%`, quotes, backslashes, controls and empties, mixed, still give canonical JSON."""
    n = data.draw(st.integers(0, 5))
    plain = st.sampled_from(["", "x", "100%", "%s", "é", "a b", "%(x)s"])
    columns = {f: data.draw(st.lists(plain | _TEXT, min_size=n, max_size=n)) for f in names}
    nullable = data.draw(st.lists(st.sampled_from(names), unique=True))
    got = crypto.FlatFields(names).encode_columns(columns, nullable=nullable)
    want = [
        crypto.canonical_json(
            {f: (columns[f][i] or None) if f in nullable else columns[f][i] for f in names}
        )
        for i in range(n)
    ]
    assert got == want


def test_flat_fields_columns_refuse_what_encode_refuses() -> None:
    flat = crypto.FlatFields(["a"])
    with pytest.raises(crypto.SealError):
        flat.encode_columns({"a": ["ok", "\ud800"]})  # a lone surrogate is not UTF-8
    with pytest.raises(crypto.SealError):
        flat.encode_columns({"a": ["ok", None]})  # type: ignore[list-item]
    with pytest.raises(ValueError, match="expected columns"):
        flat.encode_columns({"b": ["x"]})
    with pytest.raises(crypto.SealError):
        crypto.FlatFields(["a", "b"]).encode_columns({"a": ["x", "y"], "b": ["x"]})


def test_seal_columns_equals_seal_encoded_many(monkeypatch: pytest.MonkeyPatch) -> None:
    def fixed(n: int) -> bytes:
        return b"".join(i.to_bytes(12, "big") for i in range(n))

    monkeypatch.setattr(crypto, "_random_nonces", fixed)
    sealer = crypto.Sealer(bytes(range(32)))
    aads = [b"aad-%d" % i for i in range(300)]
    plains = [b'{"a":"%d"}' % i for i in range(300)]
    got = sealer.seal_columns(aads, plains)
    assert got == sealer.seal_encoded_many(list(zip(aads, plains, strict=True)))
    assert [sealer.open(a, b) for a, b in zip(aads, got, strict=True)] == [
        json.loads(p) for p in plains
    ]
    assert got[:3] == sealer.seal_columns(aads[:3], plains[:3])  # cached slices, fewer
    assert sealer.seal_columns([], []) == []
    with pytest.raises(ValueError, match="one AAD per payload"):
        sealer.seal_columns(aads[:2], plains[:1])


def test_ref_maker_ascii_refs_are_the_refs_encoded() -> None:
    maker = crypto.RefMaker(bytes(32), uuid.UUID(int=1))
    ids = ["a", "001x", "é", ""]
    assert maker.refs_ascii(ids) == [r.encode("ascii") for r in maker.refs(ids)]


@pytest.mark.parametrize(
    ("plain", "opens"),
    [
        (b'{"a":"x","b":null}', True),
        (b' {"a": 1}\n', True),  # whitespace around: json.loads takes it, so both do
        (b'{"a":"\\u00e9","b":[1,{"c":true}]}', True),
        (b"[1,2]", False),  # authentic but not an object
        (b'{"a":1} trailing', False),
        (b"not json", False),
        (b"\xff\xfe", False),  # not UTF-8
        (b"", False),
    ],
)
def test_open_or_none_agrees_with_open(plain: bytes, opens: bool) -> None:
    key, aad, nonce = bytes(range(32)), b"aad", bytes(12)
    sealer = crypto.Sealer(key)
    blob = nonce + AESGCM(key).encrypt(nonce, plain, aad)
    try:
        expected: dict[str, Any] | None = sealer.open(aad, blob)
    except crypto.SealError:
        expected = None
    assert (expected is not None) is opens
    assert sealer.open_or_none(aad, blob) == expected
    # tampered, wrong AAD, truncated: None, never an exception
    assert sealer.open_or_none(aad, blob[:-1] + bytes([blob[-1] ^ 1])) is None
    assert sealer.open_or_none(b"other", blob) is None
    assert sealer.open_or_none(aad, blob[:27]) is None


def test_needs_escape_agrees_with_the_regex() -> None:
    """`FlatFields.encode_columns` asks `_needs_escape` whether a joined column may go
    between quotes as it is: it must find exactly what `_NEEDS_ESCAPE` (the characters
    `encode_basestring` escapes) finds, for every character of the Basic Multilingual
    Plane, alone and inside other text."""
    for c in map(chr, range(0x10000)):
        for text in (c, f"acme.co.uk{c}é", f"{c}Acme GmbH"):
            assert crypto._needs_escape(text) == bool(crypto._NEEDS_ESCAPE.search(text)), hex(
                ord(c)
            )
