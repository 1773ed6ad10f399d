"""The binary chunk format (docs/protocol.md §8.3): accepted like NDJSON, matched alike,
and every guard of the NDJSON path applies, naming the record and the field."""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import uuid

import pytest

from blindmap import protocol
from blindmap.sync import binary_chunk_body, encode_binary_record
from service import errors
from service.upload import ingest
from tests.test_uploads import pair  # noqa: F401  (fixture)
from tests.uploads import manifest, match_pairs, ndjson, record, token, wait_jobs

BIN = {"content-type": protocol.BINARY_CHUNK}
ND = {"content-type": protocol.NDJSON}


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def to_binary(recs: list[dict]) -> bytes:
    """The binary form of NDJSON-shaped records (tests.uploads.record)."""
    return binary_chunk_body(
        [
            encode_binary_record(
                r["ref"],
                [(t["kind"], _b64d(t["value"])) for t in r["tokens"]],
                _b64d(r["self"]),
                _b64d(r["partner"]) if r.get("partner") else None,
            )
            for r in recs
        ]
    )


def _stage(client, tenant, pid, chunks, records, **over):
    h = tenant.headers("uploader")
    r = client.post(
        f"/v1/partnerships/{pid}/uploads",
        headers=h,
        json=manifest(client, tenant, pid, "customers", chunks, records, **over),
    )
    assert r.status_code == 201, r.text
    return r.json(), h


def test_layout_is_byte_exact() -> None:
    """The framing of §8.3, spelled out byte by byte."""
    tok = bytes(range(16))
    body = binary_chunk_body([encode_binary_record("ab", [("domain", tok)], b"S" * 3, None)])
    assert body == (
        b"BMC1"
        + b"\x00\x00\x00\x01"  # one record
        + b"\x00\x02ab"  # ref length (u16) + UTF-8
        + b"\x01"  # one token
        + b"\x00"
        + tok  # kind domain + 16 bytes
        + b"\x00\x00\x00\x03SSS"  # self (u32 length)
        + b"\x00\x00\x00\x00"  # partner: none
    )


def test_binary_upload_matches_like_ndjson(client, tenants, app, pair):  # noqa: F811
    a = [record(f"r{i}", [i], partner=True) for i in range(10)]
    b = [record(f"r{i}", [i + 5], partner=True) for i in range(10)]
    for tenant, recs, fmt in ((tenants.a, a, "binary"), (tenants.b, b, "ndjson")):
        chunks = (
            [to_binary(recs[:4]), to_binary(recs[4:])]
            if fmt == "binary"
            else [ndjson(recs[:4]), ndjson(recs[4:])]
        )
        up, h = _stage(client, tenant, pair, chunks, 10, sealed_fields=["name"])
        for n, c in enumerate(chunks):
            r = client.put(
                f"/v1/uploads/{up['id']}/chunks/{n}",
                content=c,
                headers={**h, **(BIN if fmt == "binary" else ND)},
            )
            assert r.status_code == 200, r.text
            # the digest rule is the same: SHA-256 of the body bytes
            assert r.json()["sha256"] == hashlib.sha256(c).hexdigest()
            assert r.json()["records"] == (4 if n == 0 else 6)
        again = client.put(
            f"/v1/uploads/{up['id']}/chunks/0",
            content=chunks[0],
            headers={**h, **(BIN if fmt == "binary" else ND)},
        )
        assert again.json()["duplicate"]
        assert client.post(f"/v1/uploads/{up['id']}/commit", headers=h).status_code == 200
    wait_jobs(app)
    # tenants.b's record r{i} holds token i+5 = tenants.a's r{i+5}
    assert match_pairs(app, pair) == {(f"r{i + 5}", f"r{i}") for i in range(5)}


def test_ndjson_sent_as_binary_is_a_clear_422(client, tenants, pair):  # noqa: F811
    chunk = ndjson([record("a", [1])])
    up, h = _stage(client, tenants.a, pair, [chunk], 1)
    r = client.put(f"/v1/uploads/{up['id']}/chunks/0", content=chunk, headers={**h, **BIN})
    assert r.status_code == 422 and "BMC1" in r.json()["detail"], r.text
    r = client.put(
        f"/v1/uploads/{up['id']}/chunks/0", content=chunk, headers={**h, "content-type": "x/y"}
    )
    assert r.status_code == 415 and protocol.BINARY_CHUNK in r.json()["detail"]


def _rand(n: int, seed: str = "s") -> bytes:
    """Deterministic ciphertext-like bytes (parameter ids must agree across xdist workers)."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return out[:n]


def _rec(ref: bytes = b"r2", toks=None, self_=None, partner=b"") -> bytes:
    toks = [(0, token(2))] if toks is None else toks
    self_ = _rand(40) if self_ is None else self_
    return (
        struct.pack(">H", len(ref))
        + ref
        + bytes([len(toks)])
        + b"".join(bytes([k]) + v for k, v in toks)
        + struct.pack(">I", len(self_))
        + self_
        + struct.pack(">I", len(partner))
        + partner
    )


def _body(*recs: bytes, count: int | None = None) -> bytes:
    return b"BMC1" + struct.pack(">I", len(recs) if count is None else count) + b"".join(recs)


GOOD = _rec(b"r1", [(0, token(1))])


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        (_body(GOOD, _rec(toks=[(0, b"acme-analytics.c")])), "tokens[0].value", "plaintext"),
        (_body(GOOD, _rec(toks=[(0, b"bob@acme.example")])), "tokens[0].value", "plaintext"),
        (_body(GOOD, _rec(ref=b"acme.com")), "ref", "looks like plaintext"),
        (_body(GOOD, _rec(ref=b"x" * 65)), "ref", "longer than 64"),
        (_body(GOOD, _rec(ref=b"")), "ref", "non-empty"),
        (_body(GOOD, _rec(ref=b"r1")), "ref", "appears twice"),
        (_body(GOOD, _rec(ref=b"\xff\xfe")), "ref", "not UTF-8"),
        (
            _body(GOOD, _rec(toks=[(0, bytes([i]) * 16) for i in range(9)])),
            "tokens",
            "more than 8",
        ),
        (_body(GOOD, _rec(toks=[])), "tokens", "non-empty"),
        (_body(GOOD, _rec(toks=[(1, token(2))])), "tokens[0].kind", "token kinds"),
        (_body(GOOD, _rec(toks=[(7, token(2))])), "tokens[0].kind", "token kinds"),
        (_body(GOOD, _rec(self_=_rand(5000))), "self", "over the limit of 4096"),
        (_body(GOOD, _rec(self_=_rand(10))), "self", "too short"),
        (_body(GOOD, _rec(self_=b"")), "self", "required"),
        (_body(GOOD, _rec(self_=b'{"name": "Acme Analytics", "x": 1}')), "self", "plaintext"),
        (_body(GOOD, _rec(partner=_rand(40, "p"))), "partner", "no sealed fields"),
        (_body(GOOD, _rec()[:-10]), "self", "truncated"),
        (_body(GOOD, _rec()[:-2]), "partner_len", "truncated"),
        (_body(GOOD, b"\x00"), "ref_len", "truncated"),
        (_body(GOOD, _rec(), count=3), "ref_len", "truncated"),
    ],
    ids=lambda v: v if isinstance(v, str) else "body",
)
def test_bad_binary_records_name_record_and_field(client, tenants, pair, body, field, needle):  # noqa: F811
    up, h = _stage(client, tenants.a, pair, [body], 2)
    r = client.put(f"/v1/uploads/{up['id']}/chunks/0", content=body, headers={**h, **BIN})
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["field"] == field and needle in err["message"], err
    assert err["record"] in (2, 3) and f"record {err['record']}" in r.json()["detail"]
    assert client.get(f"/v1/uploads/{up['id']}", headers=h).json()["received_chunks"] == []


def _parse(body: bytes, **over):
    kw = dict(
        n=0,
        upload_num=1,
        partnership_id=uuid.uuid4(),
        token_kinds=["domain"],
        sealed_fields=[],
        max_records=50_000,
        max_sealed_bytes=4096,
    )
    kw.update(over)
    return ingest.parse_binary_chunk(body, **kw)


def test_parser_edges() -> None:
    # trailing bytes after the announced records
    with pytest.raises(errors.Unprocessable, match=r"record 2: record: 3 bytes after"):
        _parse(_body(GOOD) + b"abc")
    # a count over the chunk limit is a 413 before any parsing
    with pytest.raises(errors.PayloadTooLarge, match="limit is 5"):
        _parse(_body(GOOD, count=6), max_records=5)
    # no magic
    with pytest.raises(errors.Unprocessable, match="BMC1"):
        _parse(b"XXXX\x00\x00\x00\x01" + GOOD)
    # partner required when the manifest seals fields
    with pytest.raises(errors.Unprocessable, match="record 1: partner: required"):
        _parse(_body(GOOD), sealed_fields=["name"])
    # name tokens when the manifest lists them; a repeated token is stored once
    name = _rec(b"n1", [(0, token(1)), (1, token("n")), (1, token("n"))])
    out = _parse(_body(name), token_kinds=["domain", "name"])
    assert [(t[1], t[2]) for t in out.token_rows] == [(0, token(1)), (1, token("n"))]
    assert out.record_rows[0][3] == "n1"


def test_binary_and_ndjson_parse_to_the_same_rows() -> None:
    recs = [record(f"r{i}", [i, f"x{i}"], partner=True) for i in range(50)]
    kw = dict(
        n=3,
        upload_num=9,
        partnership_id=uuid.uuid4(),
        token_kinds=["domain"],
        sealed_fields=["name"],
        max_records=50_000,
        max_sealed_bytes=4096,
    )
    a = ingest.parse_chunk(ndjson(recs), **kw)
    b = ingest.parse_binary_chunk(to_binary(recs), **kw)
    assert a.record_rows == b.record_rows and a.token_rows == b.token_rows


def test_copy_buffer_layout() -> None:
    """The PostgreSQL COPY stream built per chunk: signature, 6/5-field tuples, trailer."""
    out = _parse(_body(GOOD))
    rec, tok = ingest.copy_buffers(out)
    assert rec.startswith(b"PGCOPY\n\xff\r\n\x00") and rec.endswith(b"\xff\xff")
    assert tok.startswith(b"PGCOPY\n\xff\r\n\x00") and tok.endswith(b"\xff\xff")
    assert len(tok) == 19 + (2 + 4 + 4 + 4 + 2 + 4 + 16 + 4 + 8 + 4 + 16) + 2
    assert rec[19:21] == b"\x00\x06" and rec.endswith(b"\xff\xff\xff\xff\xff\xff")


def _outcome(body: bytes, *, wants_partner: bool, copy_rows: bool = False) -> tuple[object, ...]:
    """What parse_binary_chunk makes of a body: its rows and COPY streams, or the error
    it answers."""
    try:
        out = ingest.parse_binary_chunk(
            body,
            n=2,
            upload_num=5,
            partnership_id=uuid.UUID(int=7),
            token_kinds=["domain", "name"],
            sealed_fields=["name"] if wants_partner else [],
            max_records=100,
            max_sealed_bytes=200,
            copy_rows=copy_rows,
        )
    except errors.ServiceError as exc:
        return ("error", exc.status, exc.detail, exc.errors, repr(vars(exc)))
    return ("ok", out.record_rows, out.token_rows, ingest.copy_buffers(out))


def test_fast_path_agrees_with_the_checked_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The unchecked fast loop (ingest._binary_fast) accepts exactly the chunks the
    checked loop accepts, with the same rows, and leaves every rejection to it: compared
    on valid chunks and on thousands of truncated, extended and byte-flipped ones."""
    import random

    rng = random.Random(20261123)

    def sealed() -> bytes:
        return rng.randbytes(rng.randint(28, 60))

    def tok() -> bytes:
        return rng.randbytes(16)

    shared = tok()
    bodies = []
    # Short refs, and the SDK's 32 hex digits (its records of one token take the fast
    # loop's one-unpack branch; those of two tokens, the general steps, in the same chunk).
    for wants_partner, sdk_refs in itertools.product((True, False), (False, True)):
        recs = []
        for i in range(12):
            toks = [("domain", shared if i % 5 == 0 else tok())]
            if i % 3 == 0:
                toks.append(("name", tok()))
            if i % 4 == 0:
                toks.append(toks[0])  # a repeated token adds nothing
            partner = sealed() if wants_partner else None
            ref = f"r{i}-é" if i == 7 else f"r{i}"
            if sdk_refs:
                ref = f"{rng.getrandbits(128):032x}"
            recs.append(encode_binary_record(ref, toks, sealed(), partner))
        bodies.append((binary_chunk_body(recs), wants_partner))
    # the valid chunks take the fast path (else this test would compare the loop with itself)
    for body, wants in bodies:
        out = ingest.ParsedChunk(upload_num=5, partnership_id=uuid.UUID(int=7), base=2_000_000)
        assert ingest._binary_fast(body, 12, out, {0, 1}, wants, 200)
    mutated = []
    for body, wants in bodies:
        mutated.append((body, wants))
        mutated.append((body, not wants))  # partner sent where none is declared, or missing
        for _ in range(600):
            b = bytearray(body)
            how = rng.randrange(5)
            if how == 0:
                del b[rng.randrange(8, len(b)) :]  # truncated
            elif how == 1:
                b += rng.randbytes(rng.randint(1, 4))  # trailing bytes
            elif how == 2:  # flipped bytes anywhere after the magic
                for _ in range(rng.randint(1, 3)):
                    b[rng.randrange(4, len(b))] = rng.randrange(256)
            elif how == 3:  # a ref or payload turned into text (@, ., space, printable)
                i = rng.randrange(8, len(b) - 8)
                b[i : i + 8] = rng.choice([b"a@b.com ", b"        ", b"ABCDEFGH"])
            else:  # the record count off by one
                struct.pack_into(">I", b, 4, 12 + rng.choice((-1, 1)))
            mutated.append((bytes(b), wants))
    # one record changed on purpose: every rule the fast loop checks, once each
    toks, s, p = [("domain", tok())], sealed(), sealed()
    odd: list[tuple[str, list[tuple[str, bytes]], bytes, bytes | None]] = [
        ("a@b.com", toks, s, p),
        ("x y", toks, s, p),
        ("", toks, s, p),
        ("r" * 65, toks, s, p),
        ("r" * 64, toks, s, p),  # the limit itself is fine
        ("r3", toks, s, p),  # the ref of another record
        ("ok", [], s, p),
        ("ok", [("domain", tok())] * 9, s, p),
        ("ok", [("domain", b"example.com-abcd")], s, p),
        ("ok", [("domain", b"EXAMPLE.COM-ABCD")], s, p),  # ASCII, not text
        ("ok", toks, b"name=Jane Doe; stage=won, 2026", p),
        ("ok", toks, b"\x01" * 30, p),  # ASCII but not printable: accepted
        ("ok", toks, s, b"\x01" * 30),
        ("ok", toks, s, b"short"),
        ("ok", toks, b"x" * 27, p),
        ("ok", toks, rng.randbytes(201), p),
        ("ok", toks, s, rng.randbytes(200)),
        ("ok", toks, b"", p),
        # the SDK's shape (32-character ref, one token) with one thing wrong
        ("a@b.com" + "0" * 25, toks, s, p),
        ("0" * 31 + " ", toks, s, p),
        ("0" * 32, [("domain", b"example.com-abcd")], s, p),
        ("0" * 32, [("name", tok())], s, p),  # a name token alone
        ("0" * 32, toks, b"name=Jane Doe; stage=won, 2026", p),
        ("0" * 32, toks, s, b"short"),
        ("0" * 32, toks, b"x" * 27, p),
        ("0" * 32, toks, s, rng.randbytes(200)),
    ]
    base = [
        encode_binary_record(f"r{i}", [("domain", tok())], sealed(), sealed()) for i in range(5)
    ]
    for rec in odd:
        body = binary_chunk_body([*base, encode_binary_record(*rec)])
        mutated += [(body, True), (body, False)]
    kind = bytearray(binary_chunk_body(base))
    kind[8 + 2 + 2 + 1] = 9  # first record's token kind: an unknown code
    mutated.append((bytes(kind), True))
    fast = sum(1 for body, wants in mutated if _outcome(body, wants_partner=wants)[0] == "ok")
    monkeypatch.setattr(ingest, "_binary_fast", lambda *a, **k: False)
    for body, wants in mutated:
        checked = _outcome(body, wants_partner=wants)
        monkeypatch.undo()
        assert _outcome(body, wants_partner=wants) == checked, body
        # the COPY rows laid out while parsing are those built from the columns
        assert _outcome(body, wants_partner=wants, copy_rows=True) == checked, body
        monkeypatch.setattr(ingest, "_binary_fast", lambda *a, **k: False)
    assert 2 < fast < len(mutated)  # both outcomes occur


def test_plaintext_ref_check_agrees_with_the_regex() -> None:
    """The fast path's check of a chunk's joined refs (no regex for ASCII) finds exactly
    what `_PLAINTEXT` finds, for every character of the Basic Multilingual Plane alone and
    inside hex refs, ASCII or not."""
    for c in map(chr, range(0x10000)):
        for text in (c, f"0a1b\x00{c}\x00ff", f"{c}é"):
            assert ingest._has_plaintext_chars(text) == bool(ingest._PLAINTEXT.search(text)), hex(
                ord(c)
            )


def test_ref_prints_are_a_function_of_each_ref() -> None:
    """A chunk's ref prints (what the commit checks for repeats) are each ref's own print,
    whatever else the chunk holds: one fast call for the SDK's hex refs, the same bytes
    as ref by ref for every other shape (upper-case hex, short, not hex, whitespace,
    non-ASCII)."""
    sdk = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(200)]
    odd = [
        "0123456789ABCDEF" + "x",
        "0123456789abcdef",  # exactly 16 hex digits
        "0123456789abcde",  # 15
        "crm-000123",
        "0123456789abcde f0123",  # fromhex would skip the space
        "é" * 20,
        "0123456789abcdeg" + "0" * 16,
    ]
    for refs in (sdk, odd, sdk[:50] + odd + sdk[50:]):
        got = ingest.ref_prints(refs)
        assert got == b"".join(ingest.ref_prints([r]) for r in refs)
        assert got == b"".join(map(ingest._ref_print, refs))
    assert ingest.ref_prints(sdk) == b"".join(bytes.fromhex(r[:16]) for r in sdk)
    assert ingest.ref_prints([]) == b""
    # upper and lower case hex share a print (the exact query then tells them apart);
    # everything not hex is hashed whole
    assert ingest._ref_print("ABCDEF0123456789") == ingest._ref_print("abcdef0123456789")
    assert ingest._ref_print("crm-1") != ingest._ref_print("crm-2")
    assert len({len(ingest._ref_print(r)) for r in odd}) == 1


def test_all_different_finds_every_repeated_print() -> None:
    """The commit's check of the ref prints (a bitmap of their top bits, then the prints
    that share top bits compared whole) says what a set of them says."""
    import random

    rnd = random.Random(7)
    base = [rnd.getrandbits(64) for _ in range(50_000)]

    def check(values: list[int]) -> None:
        data = struct.pack(f"={len(values)}Q", *values)
        assert ingest._all_different(data) == (len(set(values)) == len(values))

    check(base)
    check([])
    check([*base, base[123]])  # a repeat
    check([*base, base[-1] ^ 1])  # same top bits, different print
    high = [v >> 38 << 38 for v in base[:2000]]  # few distinct top bits
    check(high)
    check(high + [v | 5 for v in high])
    check([v | 1 << 37 for v in base] + base)
