"""`blindmap.sync` without the escrow: reading CSV exports, building NDJSON chunks, and the
upload orchestration (resume, retries, policy fields) against an in-memory fake escrow."""

from __future__ import annotations

import base64
import csv
import hashlib
import itertools
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindmap import crypto, normalize, protocol
from blindmap import sync as bsync
from blindmap._errors import APIConnectionError, ValidationError
from blindmap.policy import Policy, load_template

REPO = Path(__file__).resolve().parent.parent
ACME = REPO / "examples" / "acme-salesforce-accounts.csv"
GLOBEX = REPO / "examples" / "globex-hubspot-companies.csv"
ACME_MAP = {"Customer": "customers", "Prospect": "prospects"}
GLOBEX_MAP = {"customer": "customers", "opportunity": "opportunities", "lead": "prospects"}

pytestmark = pytest.mark.usefixtures("no_network")


def write(tmp_path: Path, text: str | bytes, name: str = "in.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return p


def b64d(s: str) -> bytes:
    assert "=" not in s and re.fullmatch(r"[A-Za-z0-9_-]+", s), s
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.fixture
def fixed_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_random_nonces", counting_nonces())


def counting_nonces() -> Any:
    """A deterministic stand-in for `crypto._random_nonces` (nonces 0, 1, 2, ...)."""
    counter = itertools.count()
    return lambda n: b"".join(next(counter).to_bytes(12, "big") for _ in range(n))


@pytest.fixture
def pair() -> tuple[crypto.X25519PrivateKey, crypto.X25519PrivateKey, uuid.UUID]:
    return crypto.generate_private_key(), crypto.generate_private_key(), uuid.uuid4()


def keys_of(
    me: crypto.X25519PrivateKey, other: crypto.X25519PrivateKey, pid: uuid.UUID
) -> crypto.PartnershipKeys:
    return crypto.PartnershipKeys.derive(me, crypto.public_key_bytes(other), pid)


# --------------------------------------------------------------------------- reading CSV


def test_bom_crlf_and_quoted_newlines_keep_line_numbers(tmp_path: Path) -> None:
    text = (
        "\ufeffAccount ID,Account Name,Website\r\n"
        '001A,"Smith, Jones\r\n& Partners",smith-jones.co.uk\r\n'  # lines 2-3
        "001B,Beta,\r\n"  # line 4: no website
        '001C,"Gamma ""The"" Co",https://www.Gamma.com/about\r\n'  # line 5
    )
    r = bsync.read_accounts(write(tmp_path, text), population="customers")
    accts = r.accounts["customers"]
    assert [(a.line, a.local_id, a.domain) for a in accts] == [
        (2, "001A", "smith-jones.co.uk"),
        (5, "001C", "gamma.com"),
    ]
    assert accts[0].name == "Smith, Jones\r\n& Partners"
    assert accts[1].name == 'Gamma "The" Co'
    assert [(s.line, s.reason) for s in r.skipped] == [(4, "no-website")]
    assert r.rows_read == 3 and r.header[0] == "Account ID"  # BOM gone


def test_ragged_row_is_a_file_line_error(tmp_path: Path) -> None:
    p = write(tmp_path, "Id,Name,Website\n1,A,a.com\n\n2,B,b.com,extra\n")
    with pytest.raises(bsync.SyncInputError) as exc:
        bsync.read_accounts(p, population="customers")
    assert exc.value.line == 4 and exc.value.path == str(p)
    assert str(exc.value).startswith(f"{p}:4: expected 3 cells")


def test_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, b"Id,Name,Website\n1,A,a.com\n2,Caf\xe9 Latin-1,cafe.fr\n")
    with pytest.raises(bsync.SyncInputError) as exc:
        bsync.read_accounts(p, population="customers")
    assert exc.value.line == 3
    assert "not UTF-8" in str(exc.value) and "CSV UTF-8" in str(exc.value)


def test_utf16_is_refused_clearly(tmp_path: Path) -> None:
    p = write(tmp_path, "Id,Name,Website\n1,A,a.com\n".encode("utf-16"))
    with pytest.raises(bsync.SyncInputError, match=r":1: the file is UTF-16"):
        bsync.read_accounts(p, population="customers")


def test_unclosed_quote_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(bsync.SyncInputError, match="empty"):
        bsync.read_accounts(write(tmp_path, ""), population="customers")
    p = write(tmp_path, 'Id,Name,Website\n1,"A,a.com\n2,B,b.com\n', "q.csv")
    with pytest.raises(bsync.SyncInputError) as exc:
        bsync.read_accounts(p, population="customers")
    assert exc.value.line is not None and exc.value.line >= 2


def test_missing_website_column(tmp_path: Path) -> None:
    p = write(tmp_path, "Id,Name,Phone\n1,A,555\n")
    with pytest.raises(bsync.SyncInputError) as exc:
        bsync.read_accounts(p, population="customers")
    assert exc.value.line == 1 and "--column-map website=" in str(exc.value)
    assert "'Phone'" in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(bsync.SyncInputError, match="No such file"):
        bsync.read_accounts(tmp_path / "nope.csv", population="customers")


def test_salesforce_report_headers() -> None:
    r = bsync.read_accounts(ACME, population_column="Type", population_map=ACME_MAP)
    assert r.columns == {
        "id": ["Account ID"],
        "name": ["Account Name"],
        "website": ["Website"],
        "owner": ["Account Owner"],
        "owner_email": ["Account Owner Email"],
        "stage": ["Stage"],
        "type": ["Type"],
        "industry": ["Industry"],
        "country": ["Billing Country"],
    }


def test_salesforce_api_headers(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "Id,Name,Website,BillingCountry,Owner.Email,Type,Industry\n"
        "001x,Acme,acme.com,US,a@seller.example,Customer,Software\n",
    )
    r = bsync.read_accounts(p, population="customers")
    assert r.columns["id"] == ["Id"] and r.columns["owner_email"] == ["Owner.Email"]
    assert r.columns["country"] == ["BillingCountry"]


def test_hubspot_headers_fall_back_to_website_url() -> None:
    r = bsync.read_accounts(GLOBEX, population_column="Lifecycle Stage", population_map=GLOBEX_MAP)
    assert r.columns["website"] == ["Company Domain Name", "Website URL"]
    assert r.columns["id"] == ["Record ID"] and r.columns["name"] == ["Company name"]
    assert r.columns["stage"] == ["Lifecycle Stage"]


def test_hubspot_domain_name_first_then_url(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "Record ID,Company name,Company Domain Name,Website URL\n"
        "1,A,,https://www.a-corp.com/x\n"  # empty domain: URL used
        "2,B,b-corp.com,https://other.com\n"  # domain wins
        "3,C,,jane@gmail.com\n",  # nothing: the URL's reason
    )
    r = bsync.read_accounts(p, population="customers")
    assert [a.domain for a in r.accounts["customers"]] == ["a-corp.com", "b-corp.com"]
    assert [s.reason for s in r.skipped] == ["free-mail"]


def test_column_map_overrides_detection(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "Key,Firm,Homepage,Website,Rep Mail\n"
        "k1,Alpha,alpha.io,wrong.com,rep@alpha-seller.example\n",
    )
    cmap = bsync.parse_mapping('website=Homepage,name="Firm",id=Key,owner_email="Rep Mail"')
    r = bsync.read_accounts(p, column_map=cmap, population="customers")
    (a,) = r.accounts["customers"]
    assert (a.local_id, a.name, a.domain) == ("k1", "Alpha", "alpha.io")
    assert r.columns["website"] == ["Homepage"]
    assert dict(zip(r.field_names, a.values, strict=True))["owner_email"] == (
        "rep@alpha-seller.example"
    )
    with pytest.raises(bsync.SyncInputError, match=r":1: --column-map website='Nope'"):
        bsync.read_accounts(p, column_map={"website": "Nope"}, population="customers")
    with pytest.raises(bsync.SyncError, match="unknown field"):
        bsync.read_accounts(p, column_map={"color": "Firm"}, population="customers")


def test_parse_mapping() -> None:
    assert bsync.parse_mapping('website=Website,name="Account Name", id = "Account ID"') == {
        "website": "Website",
        "name": "Account Name",
        "id": "Account ID",
    }
    assert bsync.parse_mapping("Customer=customers,'Closed Won'=customers") == {
        "Customer": "customers",
        "Closed Won": "customers",
    }
    assert bsync.parse_mapping(None) == {}
    for bad in ("website", "=x", "a=b,a=c", 'a="open'):
        with pytest.raises(bsync.SyncError):
            bsync.parse_mapping(bad)


def test_semicolon_delimited_export(tmp_path: Path) -> None:
    p = write(tmp_path, "Account ID;Account Name;Website\n1;Müller GmbH;müller.de\n")
    r = bsync.read_accounts(p, population="customers")
    assert r.accounts["customers"][0].domain == "xn--mller-kva.de"


def test_population_column_split(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "Id,Name,Website,Type\n"
        "1,A,a-one.com,Customer\n"
        "2,B,b-two.com, prospect \n"  # case and spaces ignored
        "3,C,c-three.com,Partner\n"  # unmapped
        "4,D,d-four.com,\n"  # unmapped (blank)
        "5,A again,a-one.com,Prospect\n",  # same domain in another population: kept
    )
    r = bsync.read_accounts(
        p, population_column="type", population_map={"Customer": "customers", "Prospect": "pros"}
    )
    assert {k: [a.local_id for a in v] for k, v in r.accounts.items()} == {
        "customers": ["1"],
        "pros": ["2", "5"],
    }
    assert [(s.line, s.reason, s.detail) for s in r.skipped] == [
        (4, "unmapped-population", "Partner"),
        (5, "unmapped-population", ""),
    ]
    with pytest.raises(bsync.SyncError, match="needs --map"):
        bsync.read_accounts(p, population_column="Type")
    with pytest.raises(bsync.SyncError, match="not a population slug"):
        bsync.read_accounts(p, population_column="Type", population_map={"Customer": "Bad Slug"})
    with pytest.raises(bsync.SyncError, match="exactly one"):
        bsync.read_accounts(p)
    with pytest.raises(bsync.SyncInputError, match="--population-column 'Kind'"):
        bsync.read_accounts(p, population_column="Kind", population_map={"x": "y"})


def test_skip_reasons_and_dedupe(tmp_path: Path) -> None:
    rows = [
        ("1", "Alpha", "https://www.Alpha.com/about"),
        ("2", "Alpha dup", "alpha.com"),  # duplicate domain
        ("3", "Free", "jane@gmail.com"),
        ("4", "Linked", "https://www.linkedin.com/company/foo/"),
        ("5", "Blank", "  "),
        ("6", "Na", "n/a"),
        ("7", "Ip", "http://10.0.0.1/"),
        ("8", "Local", "intranet"),
        ("1", "Beta same id", "beta.com"),  # duplicate id
        ("", "No id", "gamma.co.uk"),  # id falls back to the domain
        ("9", "Multi", "jane@gmail.com; www.delta.io"),  # several values: first good one
        ("10", "Email", "info@epsilon.de"),
    ]
    p = tmp_path / "s.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Id", "Name", "Website"])
        w.writerows(rows)
    r = bsync.read_accounts(p, population="customers", keep_skipped_rows=True)
    kept = [(a.local_id, a.domain) for a in r.accounts["customers"]]
    assert kept == [
        ("1", "alpha.com"),
        ("gamma.co.uk", "gamma.co.uk"),
        ("9", "delta.io"),
        ("10", "epsilon.de"),
    ]
    assert [(s.line, s.reason) for s in r.skipped] == [
        (3, "duplicate"),
        (4, "free-mail"),
        (5, "platform"),
        (6, "no-website"),
        (7, "single-label"),  # "n/a": the normalizer's reason
        (8, "ip-address"),
        (9, "single-label"),
        (10, "duplicate-id"),
    ]
    assert r.skipped[0].row == ("2", "Alpha dup", "alpha.com")
    assert set(r.skipped_counts) <= set(bsync.SKIP_REASONS)


def test_input_hash_covers_the_whole_file(tmp_path: Path) -> None:
    text = "Id,Name,Website\n1,A,a-corp.com\n\n\n"
    r = bsync.read_accounts(write(tmp_path, text), population="customers")
    assert r.input_sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_examples_cover_the_messy_cases() -> None:
    a = bsync.read_accounts(ACME, population_column="Type", population_map=ACME_MAP)
    g = bsync.read_accounts(GLOBEX, population_column="Lifecycle Stage", population_map=GLOBEX_MAP)
    for r in (a, g):
        assert 250 <= r.rows_read <= 500
        assert {"no-website", "free-mail", "platform", "duplicate", "unmapped-population"} <= set(
            r.skipped_counts
        )
    da = {x.domain for v in a.accounts.values() for x in v}
    dg = {x.domain for v in g.accounts.values() for x in v}
    shared = da & dg
    assert 0.2 <= len(shared) / min(len(da), len(dg)) <= 0.4
    # the hand-written variants of one company match: URL/path, email, IDN, port, .co.uk
    assert {
        "initech.com",
        "umbrella-corp.co.uk",
        "xn--bcher-haus-9db.de",
        "vandelay.io",
        "stark-logistics.com.au",
        "soylent.fr",
    } <= shared


@pytest.mark.parametrize(
    ("path", "column", "mapping"),
    [(ACME, "Type", ACME_MAP), (GLOBEX, "Lifecycle Stage", GLOBEX_MAP)],
)
def test_parallel_read_equals_serial(path: Path, column: str, mapping: dict[str, str]) -> None:
    """Normalizing on forked workers changes nothing: accounts, skips (in line order), hash."""
    kw: dict[str, Any] = {
        "population_column": column,
        "population_map": mapping,
        "keep_skipped_rows": True,
    }
    one = bsync.read_accounts(path, jobs=1, **kw)
    two = bsync.read_accounts(path, jobs=2, **kw)
    assert two.accounts == one.accounts and two.skipped == one.skipped
    assert two.rows_read == one.rows_read and two.input_sha256 == one.input_sha256
    assert [s.line for s in one.skipped] == sorted(s.line for s in one.skipped)
    assert {s.reason for s in one.skipped} >= {"unmapped-population", "free-mail", "duplicate"}


def test_read_across_blocks_keeps_lines_and_quoted_newlines(tmp_path: Path) -> None:
    """Files larger than a read block: quoted newlines spanning a block edge stay one cell,
    and an undecodable byte far into the file is reported on its own line."""
    n = 50_000  # ~2.6 MB: several 1 MiB blocks
    rows = ["Account ID,Account Name,Website\r\n"]
    for i in range(n):
        rows.append(f'{i},"Firm {i}\r\nBranch {i % 7}",https://firm{i}.com/\r\n')
    data = "".join(rows).encode()
    assert len(data) > 2 * (1 << 20)
    p = write(tmp_path, data)
    for jobs in (1, 2):
        r = bsync.read_accounts(p, population="customers", jobs=jobs)
        accts = r.accounts["customers"]
        assert len(accts) == n and r.rows_read == n
        assert accts[-1].name == f"Firm {n - 1}\r\nBranch {(n - 1) % 7}"
        assert accts[-1].line == 2 + 2 * (n - 1)  # each record spans two physical lines
        assert r.input_sha256 == hashlib.sha256(data).hexdigest()
    bad_row = 30_000  # data row index; its first physical line is 2 + 2 * index
    at = data.index(f'\r\n{bad_row},"Firm'.encode()) + 2 + len(f'{bad_row},"Fi')
    p = write(tmp_path, data[:at] + b"\xff" + data[at + 1 :], "bad.csv")
    col = len(f'{bad_row},"Fi') + 1
    where = rf":{2 + 2 * bad_row}: not UTF-8 .*column {col}\)"
    with pytest.raises(bsync.SyncInputError, match=where):
        bsync.read_accounts(p, population="customers")


# --------------------------------------------------------------------------- building


def _read_simple(tmp_path: Path, n: int = 25) -> bsync.ReadResult:
    p = tmp_path / "simple.csv"
    with p.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Account ID", "Account Name", "Website", "Account Owner Email", "Stage"])
        for i in range(n):
            w.writerow(
                [
                    f"id{i}",
                    f"Company {i} GmbH",
                    f"https://www.co{i}-x.de/",
                    f"rep{i}@s.example",
                    "Won",
                ]
            )
    return bsync.read_accounts(p, population="customers")


def _records(chunks: list[bsync.Chunk]) -> list[dict[str, Any]]:
    out = []
    for c in chunks:
        assert c.body.endswith(b"\n") and c.sha256 == hashlib.sha256(c.body).digest()
        lines = c.body.split(b"\n")[:-1]
        assert len(lines) == c.records
        for line in lines:
            assert json.dumps(json.loads(line), separators=(",", ":")).encode() == line  # compact
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("kinds", [["domain"], ["domain", "name"]])
@pytest.mark.parametrize(
    "sealed", [[], ["name", "stage"], ["domain", "id", "name", "owner_email", "stage"]]
)
def test_binary_records_equal_one_record_at_a_time(
    tmp_path: Path, pair: Any, monkeypatch: pytest.MonkeyPatch, kinds: list[str], sealed: list[str]
) -> None:
    """The column-wise builder writes, byte for byte, what the protocol's per-record
    definition gives: ref, tokens, and both seals of the fields as a dict (empty -> null)."""
    me, other, pid = pair
    p = tmp_path / "mixed.csv"
    p.write_text(
        "Account ID,Account Name,Website,Account Owner Email,Stage\n"
        "a1,Acme GmbH,acme.de,jo@s.example,Won\n"
        'a2,,https://www.beta.co.uk/x,,"Lost, ""really"""\n'
        "a3,Ünïcödé & Co,gamma.fr,ü@s.example,\n"
        'a4,"Delta\nInc",delta.io,,Won\n'
        ",Eps,eps.com,e@s.example,Open\n",
        encoding="utf-8",
    )
    read = bsync.read_accounts(p, population="customers")
    keys, sk = keys_of(me, other, pid), crypto.self_key(me)
    # an upload's records go out in the order of their domain tokens
    dom_token = keys.tokenizer("domain").token
    accounts = sorted(read.accounts["customers"], key=lambda a: dom_token(a.domain))
    assert len(accounts) == 5
    monkeypatch.setattr(crypto, "_random_nonces", counting_nonces())
    chunks = list(
        bsync.build_upload(
            read, "customers", keys=keys, self_key=sk, sealed_fields=sealed,
            token_kinds=kinds, chunk_format="binary",
        )
    )  # fmt: skip
    n = len(accounts)
    nonce = [i.to_bytes(12, "big") for i in range(2 * n)]  # self seals, then partner seals
    mine, theirs = AESGCM(sk), AESGCM(keys.key("seal"))
    expected = []
    for i, a in enumerate(accounts):
        ref = crypto.pseudonymous_ref(sk, pid, a.local_id)
        row = dict(zip(read.field_names, a.values, strict=True))
        row.update(domain=a.domain, id=a.local_id, name=a.name)
        toks = [("domain", keys.tokenizer("domain").token(a.domain))]
        name_key = normalize.name(a.name)
        if "name" in kinds and name_key:
            toks.append(("name", keys.tokenizer("name").token(name_key)))
        own = {
            "domain": a.domain,
            "id": a.local_id,
            "name": a.name or None,
            "population": "customers",
        }
        self_blob = nonce[i] + mine.encrypt(
            nonce[i], crypto.canonical_json(own), crypto.self_aad(pid, ref)
        )
        partner_blob = None
        if sealed:
            shared = {f: row[f] or None for f in sealed}
            partner_blob = nonce[n + i] + theirs.encrypt(
                nonce[n + i], crypto.canonical_json(shared), crypto.partner_aad(pid, ref)
            )
        expected.append(bsync.encode_binary_record(ref, toks, self_blob, partner_blob))
    assert b"".join(c.body for c in chunks) == bsync.binary_chunk_body(expected)


def test_ndjson_record_format(tmp_path: Path, pair: Any) -> None:
    me, other, pid = pair
    read = _read_simple(tmp_path)
    keys = keys_of(me, other, pid)
    chunks = list(
        bsync.build_upload(
            read,
            "customers",
            keys=keys,
            self_key=crypto.self_key(me),
            sealed_fields=["name", "owner_email", "stage"],
            token_kinds=["domain", "name"],
            chunk_size=10,
        )
    )
    assert [c.n for c in chunks] == [0, 1, 2] and [c.records for c in chunks] == [10, 10, 5]
    recs = _records(chunks)
    theirs = keys_of(other, me, pid)  # the partner derives the same keys
    self_sealer = crypto.Sealer(crypto.self_key(me))
    line_of = {crypto.pseudonymous_ref(crypto.self_key(me), pid, f"id{i}"): i for i in range(25)}
    assert sorted(line_of[r["ref"]] for r in recs) == list(range(25))
    # in the order of their domain tokens, not the file's
    dom_values = [b64d(r["tokens"][0]["value"]) for r in recs]
    assert dom_values == sorted(dom_values)
    for rec in recs:
        assert list(rec) == ["ref", "tokens", "self", "partner"]
        ref = rec["ref"]
        i = line_of[ref]
        assert len(ref) == 32 <= protocol.MAX_REF_CHARS
        assert [t["kind"] for t in rec["tokens"]] == ["domain", "name"]
        assert 1 <= len(rec["tokens"]) <= protocol.MAX_TOKENS_PER_RECORD
        values = [b64d(t["value"]) for t in rec["tokens"]]
        assert all(len(v) == protocol.TOKEN_BYTES for v in values)
        assert values[0] == theirs.tokenizer("domain").token(f"co{i}-x.de")
        assert values[1] == theirs.tokenizer("name").token(normalize.name(f"Company {i} GmbH"))
        mine = self_sealer.open(crypto.self_aad(pid, ref), b64d(rec["self"]))
        assert mine == {
            "id": f"id{i}",
            "name": f"Company {i} GmbH",
            "domain": f"co{i}-x.de",
            "population": "customers",
        }
        shared = theirs.sealer().open(crypto.partner_aad(pid, ref), b64d(rec["partner"]))
        assert shared == {
            "name": f"Company {i} GmbH",
            "owner_email": f"rep{i}@s.example",
            "stage": "Won",
        }
    assert len({r["ref"] for r in recs}) == len(recs)


def test_no_sealed_fields_means_null_partner(tmp_path: Path, pair: Any) -> None:
    me, other, pid = pair
    chunks = list(
        bsync.build_upload(
            _read_simple(tmp_path, 3),
            "customers",
            keys=keys_of(me, other, pid),
            self_key=crypto.self_key(me),
            sealed_fields=[],
        )
    )
    recs = _records(chunks)
    assert all(r["partner"] is None and len(r["tokens"]) == 1 for r in recs)
    assert b'"partner":null}\n' in chunks[0].body


def test_unavailable_field_and_bad_kinds_refused(tmp_path: Path, pair: Any) -> None:
    me, other, pid = pair
    read = _read_simple(tmp_path, 2)
    kw: dict[str, Any] = {"keys": keys_of(me, other, pid), "self_key": crypto.self_key(me)}
    with pytest.raises(ValueError, match="industry"):
        list(bsync.build_upload(read, "customers", sealed_fields=["industry"], **kw))
    with pytest.raises(ValueError, match="domain"):
        list(bsync.build_upload(read, "customers", sealed_fields=[], token_kinds=["name"], **kw))


@pytest.mark.parametrize("fmt", ["ndjson", "binary"])
def test_chunks_and_digest_are_deterministic_given_nonces(
    tmp_path: Path, pair: Any, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    me, other, pid = pair
    read = _read_simple(tmp_path, 40)
    head = 8 if fmt == "binary" else 0  # a binary chunk's magic and record count

    def build(**over: Any) -> list[bsync.Chunk]:
        monkeypatch.setattr(crypto, "_random_nonces", counting_nonces())
        kw: dict[str, Any] = {
            "keys": keys_of(me, other, pid),
            "self_key": crypto.self_key(me),
            "sealed_fields": ["name"],
            "chunk_size": 16,
            "chunk_format": fmt,
        }
        kw.update(over)
        return list(bsync.build_upload(read, "customers", **kw))

    one, two = build(), build()
    assert [c.body for c in one] == [c.body for c in two]
    digest = bsync.upload_digest(c.sha256 for c in one)
    assert (
        digest == hashlib.sha256(b"".join(hashlib.sha256(c.body).digest() for c in one)).hexdigest()
    )
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # the byte cap closes chunks early, deterministically; numbering stays contiguous
    small = build(max_chunk_bytes=2_000)
    assert len(small) > len(one) and [c.n for c in small] == list(range(len(small)))
    assert all(len(c.body) <= 2_000 for c in small)
    assert b"".join(c.body[head:] for c in small) == b"".join(c.body[head:] for c in one)
    assert sum(c.records for c in small) == sum(c.records for c in one) == 40
    if fmt == "binary":
        assert all(bsync.binary_chunk_records(c.body) == c.records for c in small)


def test_parallel_build_same_records_fresh_nonces(tmp_path: Path, pair: Any) -> None:
    """Forked builders give the same refs, tokens, sealed contents and chunking; every
    seal still has its own nonce (os.urandom per process, never a copied generator)."""
    me, other, pid = pair
    read = _read_simple(tmp_path, 90)
    kw: dict[str, Any] = {
        "keys": keys_of(me, other, pid),
        "self_key": crypto.self_key(me),
        "sealed_fields": ["name", "stage"],
        "chunk_size": 16,
    }
    one = list(bsync.build_upload(read, "customers", jobs=1, **kw))
    two = list(bsync.build_upload(read, "customers", jobs=2, **kw))
    assert [(c.n, c.records) for c in two] == [(c.n, c.records) for c in one]
    r1, r2 = _records(one), _records(two)
    assert [(r["ref"], r["tokens"]) for r in r2] == [(r["ref"], r["tokens"]) for r in r1]
    mine, theirs = crypto.Sealer(crypto.self_key(me)), keys_of(other, me, pid).sealer()
    nonces = set()
    for a, b in zip(r1, r2, strict=True):
        aad_s, aad_p = crypto.self_aad(pid, a["ref"]), crypto.partner_aad(pid, a["ref"])
        assert mine.open(aad_s, b64d(b["self"])) == mine.open(aad_s, b64d(a["self"]))
        assert theirs.open(aad_p, b64d(b["partner"])) == theirs.open(aad_p, b64d(a["partner"]))
        nonces |= {b64d(x[k])[:12] for x in (a, b) for k in ("self", "partner")}
    assert len(nonces) == 4 * len(r1)


def test_ndjson_never_holds_plaintext(pair: Any) -> None:
    """No domain, name, email or id from the example files appears in what is sent."""
    me, other, pid = pair
    for path, cmap in ((ACME, ("Type", ACME_MAP)), (GLOBEX, ("Lifecycle Stage", GLOBEX_MAP))):
        read = bsync.read_accounts(path, population_column=cmap[0], population_map=cmap[1])
        body = b"".join(
            c.body
            for pop in read.accounts
            for c in bsync.build_upload(
                read,
                pop,
                keys=keys_of(me, other, pid),
                self_key=crypto.self_key(me),
                sealed_fields=read.available_fields(),
                token_kinds=["domain", "name"],
            )
        )
        # the record syntax itself ("partner", "domain", ...) is not data
        lowered = re.sub(rb'"(ref|tokens|kind|value|self|partner|domain|name)"', b"", body.lower())
        needles: set[str] = set()
        with path.open(newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                for value in row.values():
                    for part in re.split(r"[\s,;/:@()]+", value or ""):
                        if len(part) >= 5:
                            needles.add(part)
        needles |= {a.domain for v in read.accounts.values() for a in v}
        assert len(needles) > 500
        leaked = sorted(n for n in needles if n.lower().encode() in lowered)
        # base64 of random bytes spells short words by chance, and the refs' hex digits
        # short numbers (a given 7-digit one turns up in ~3% of runs): nothing longer than
        # 6 characters, or 9 when they are all hex digits (16^-10 per position)
        hexlike = re.compile(r"[0-9a-f]+")
        long = [n for n in leaked if len(n) > (9 if hexlike.fullmatch(n.lower()) else 6)]
        assert long == [], leaked[:20]
        # and every record's line is exactly ref, tokens, self, partner: nothing else sent
        for line in body.splitlines():
            assert re.fullmatch(
                rb'\{"ref":"[0-9a-f]{32}","tokens":\[(\{"kind":"(domain|name)","value":"[A-Za-z0-9_-]{22}"\},?)+\],'
                rb'"self":"[A-Za-z0-9_-]+","partner":"[A-Za-z0-9_-]+"\}',
                line,
            ), line[:200]


# --------------------------------------------------------------------------- orchestration


class FakeEscrow:
    """The SDK methods `sync` calls, held in memory; can drop chunks to simulate failures."""

    def __init__(self, me: Any, other: Any, pid: uuid.UUID, policy: Policy) -> None:
        def party(slug: str, key: Any, epoch: int) -> dict[str, Any]:
            pub = crypto.encode_public_key(crypto.public_key_bytes(key))
            return {"slug": slug, "display_name": slug, "public_key": pub, "key_epoch": epoch}

        self.partnership = protocol.Partnership.model_validate(
            {
                "id": str(pid),
                "status": "active",
                "my_role": "inviter",
                "me": party("acme", me, 1),
                "partner": party("globex", other, 3),
                "created_at": "2026-01-01T00:00:00Z",
            }
        )
        self.policy = policy
        self.partner_match_on = ["domain"]
        self.populations: dict[str, str] = {"customers": "customers"}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.fail_chunks: set[int] = set()
        self.fail_times = 0
        self.refuse_commit = False
        self.puts: list[tuple[str, int]] = []
        self.ends: list[protocol.UploadCommit | None] = []

    def list_partnerships(self, *, status: Any = None) -> list[protocol.Partnership]:
        return [self.partnership]

    def list_populations(self) -> list[Any]:
        return [type("P", (), {"slug": s}) for s in self.populations]

    def create_population(self, slug: str, *, kind: Any, display_name: str | None = None) -> None:
        self.populations[slug] = str(kind)

    def get_policy(self, pid: Any) -> Any:
        return type("PV", (), {"document": self.policy.model_dump(mode="json")})

    def get_partner_policy(self, pid: Any) -> Any:
        return type("PP", (), {"match_on": self.partner_match_on})

    def create_upload(self, pid: Any, manifest: protocol.UploadCreate) -> protocol.Upload:
        assert set(manifest.sealed_fields) <= set(self.policy.fields_for(manifest.population))
        uid = str(uuid.uuid4())
        self.uploads[uid] = {"manifest": manifest, "chunks": {}, "status": "staged"}
        return self.get_upload(uid)

    def get_upload(self, uid: Any) -> protocol.Upload:
        u = self.uploads[str(uid)]
        m = u["manifest"]
        return protocol.Upload.model_validate(
            {
                "id": str(uid),
                "partnership_id": str(self.partnership.id),
                "population": m.population,
                "status": u["status"],
                "normalizer_version": m.normalizer_version,
                "token_kinds": m.token_kinds,
                "sealed_fields": m.sealed_fields,
                "key_epochs": m.key_epochs.model_dump(),
                "record_count": m.record_count,
                "chunk_count": m.chunk_count,
                "received_chunks": sorted(u["chunks"]),
                "created_at": "2026-01-01T00:00:00Z",
            }
        )

    def put_chunk(self, uid: Any, n: int, body: bytes, **kw: Any) -> None:
        self.puts.append((str(uid), n))
        if n in self.fail_chunks and self.fail_times:
            self.fail_times -= 1
            raise APIConnectionError("connection reset")
        u = self.uploads[str(uid)]
        assert u["chunks"].get(n, body) == body  # a re-sent chunk is identical
        u["chunks"][n] = body

    def commit_upload(self, uid: Any, end: protocol.UploadCommit | None = None) -> protocol.Upload:
        if self.refuse_commit:
            request = httpx.Request("POST", f"http://escrow/v1/uploads/{uid}/commit")
            problem = {"title": "Unprocessable Content", "detail": "ref 'x' is in two chunks"}
            raise ValidationError(httpx.Response(422, json=problem, request=request), problem)
        self.ends.append(end)
        u = self.uploads[str(uid)]
        m = u["manifest"]
        # the escrow's rule: the commit completes a manifest that left these out
        assert (m.chunk_count is None) == (m.digest is None) and (end is not None or m.digest)
        count = end.chunk_count if end is not None else m.chunk_count
        digest = end.digest if end is not None else m.digest
        assert set(u["chunks"]) == set(range(count))
        chunks = [u["chunks"][n] for n in range(count)]
        assert bsync.upload_digest(hashlib.sha256(c).digest() for c in chunks) == digest
        assert sum(bsync.binary_chunk_records(c) for c in chunks) == m.record_count
        u["status"] = "committed"
        return self.get_upload(uid)

    def abort_upload(self, uid: Any) -> None:
        self.uploads[str(uid)]["status"] = "aborted"


@pytest.fixture
def escrow(pair: Any) -> Iterator[tuple[FakeEscrow, Any]]:
    me, other, pid = pair
    yield FakeEscrow(me, other, pid, load_template("co-sell")), me


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bsync, "_sleep", lambda s: None)


# one population, "customers", for the whole file
ONE_POPULATION: dict[str, Any] = {
    "population": "customers",
    "population_column": None,
    "population_map": None,
}


def run(fake: FakeEscrow, me: Any, tmp_path: Path, **kw: Any) -> bsync.SyncReport:
    args: dict[str, Any] = {
        "private_key": me,
        "population_column": "Type",
        "population_map": ACME_MAP,
        "state_dir": tmp_path / "state",
        "chunk_size": 50,
    }
    args.update(kw)
    return bsync.sync(fake, ACME, **args)  # type: ignore[arg-type]


def test_sync_seals_only_policy_fields_and_creates_populations(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    report = run(fake, me, tmp_path)
    assert fake.populations["prospects"] == "prospects"  # created, kind guessed
    assert report.created_populations == ["prospects"]
    by_pop = {u.population: u for u in report.uploads}
    assert by_pop["customers"].sealed_fields == ["name", "owner_email"]  # co-sell
    assert by_pop["prospects"].sealed_fields == []  # count only
    assert all(u.status == "committed" and u.token_kinds == ["domain"] for u in report.uploads)
    read = bsync.read_accounts(ACME, population_column="Type", population_map=ACME_MAP)
    assert {u.population: u.records for u in report.uploads} == {
        k: len(v) for k, v in read.accounts.items()
    }
    manifests = [u["manifest"] for u in fake.uploads.values()]
    assert {m.key_epochs.model_dump()["partner"] for m in manifests} == {3}
    assert {m.normalizer_version for m in manifests} == {normalize.NORMALIZER_VERSION}
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_name_tokens_only_when_both_sides_match_on_name(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    fake.policy = Policy.model_validate(
        {**load_template("co-sell").model_dump(mode="json"), "match_on": ["domain", "name"]}
    )
    assert {tuple(u.token_kinds) for u in run(fake, me, tmp_path).uploads} == {("domain",)}
    fake.partner_match_on = ["domain", "name"]
    report = run(fake, me, tmp_path)
    assert {tuple(u.token_kinds) for u in report.uploads} == {("domain", "name")}


def test_dry_run_sends_nothing(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    report = run(fake, me, tmp_path, dry_run=True)
    assert fake.uploads == {} and "prospects" not in fake.populations
    assert report.dry_run and all(u.status == "dry-run" and u.records for u in report.uploads)
    assert any("would create" in n for n in report.notes)


def test_transient_failure_resumes_same_upload_in_process(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    fake.fail_chunks, fake.fail_times = {1}, 2
    report = run(fake, me, tmp_path, **ONE_POPULATION)
    (u,) = report.uploads
    assert u.status == "committed" and len(fake.uploads) == 1
    sent = [n for _, n in fake.puts]
    assert sent.count(0) == 1 and sent.count(1) == 3  # chunk 0 never re-sent


def test_interrupted_sync_resumes_next_run_with_same_bytes(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    fake.fail_chunks, fake.fail_times = {2}, 10**6
    kw: dict[str, Any] = {**ONE_POPULATION, "send_ahead": 2}
    with pytest.raises(bsync.SyncError, match="run the same command again"):
        run(fake, me, tmp_path, **kw)
    (uid,) = fake.uploads
    staged = dict(fake.uploads[uid]["chunks"])
    # chunks go two at a time: the ones after the failing chunk 2 may have landed too
    assert {0, 1} <= set(staged) and 2 not in staged
    state_dir = tmp_path / "state" / f"{fake.partnership.id}-customers"
    assert (state_dir / "state.json").exists()
    # what had landed when the build ended is kept as a SHA-256 only; the rest as files
    state = json.loads((state_dir / "state.json").read_text())
    assert set(state["landed"]) <= set(staged) and 0 in state["landed"]
    assert not (state_dir / "chunk-000000.bin").exists()
    kept = [n for n in range(state["chunk_count"]) if n not in state["landed"]]
    assert 2 in kept and all((state_dir / f"chunk-{n:06d}.bin").exists() for n in kept)
    if hasattr(__import__("os"), "geteuid"):
        assert state_dir.stat().st_mode & 0o077 == 0
        assert (state_dir / "chunk-000002.bin").stat().st_mode & 0o077 == 0
    fake.fail_times, fake.puts = 0, []
    report = run(fake, me, tmp_path, **kw)
    (u,) = report.uploads
    assert u.resumed and u.upload_id == uid and u.status == "committed"
    assert not set(staged) & {n for _, n in fake.puts}  # what landed is never re-sent
    assert 2 in {n for _, n in fake.puts}
    assert all(fake.uploads[uid]["chunks"][n] == body for n, body in staged.items())
    assert not state_dir.exists()


def test_chunks_are_sent_while_later_ones_are_built(escrow: Any, tmp_path: Path) -> None:
    """The manifest leaves chunk_count and digest for the commit (docs/protocol.md §8.1),
    so the first chunk goes out before the last one is built."""
    fake, me = escrow
    events: list[bsync.ProgressEvent] = []
    report = run(fake, me, tmp_path, progress=events.append, **ONE_POPULATION)
    (u,) = report.uploads
    assert u.status == "committed" and u.chunks >= 3
    (m,) = [x["manifest"] for x in fake.uploads.values()]
    assert m.chunk_count is None and m.digest is None and m.record_count == u.records
    (end,) = fake.ends
    assert end is not None and end.chunk_count == u.chunks
    stages = [(e.stage, e.done) for e in events if e.stage in ("build", "send")]
    last_build = max(i for i, (stage, _) in enumerate(stages) if stage == "build")
    first_send = min(i for i, (stage, _) in enumerate(stages) if stage == "send")
    assert first_send < last_build, stages
    # the send bar learns its total when the build has ended
    sends = [e for e in events if e.stage == "send"]
    assert sends[0].total is None and sends[-1].total == u.chunks


def test_streamed_chunks_are_not_written_to_files(
    escrow: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the build streams, chunk bodies stay in memory until the escrow has them;
    only those still in flight when the build ends are written (for a resume)."""
    fake, me = escrow
    written: list[str] = []
    real = bsync._write_private

    def spy(path: Path, data: bytes) -> None:
        written.append(path.name)
        real(path, data)

    monkeypatch.setattr(bsync, "_write_private", spy)
    kw: dict[str, Any] = dict(ONE_POPULATION)
    (u,) = run(fake, me, tmp_path, send_ahead=2, **kw).uploads
    assert u.status == "committed" and u.chunks >= 4
    chunk_files = [w for w in written if w.startswith("chunk-")]
    assert len(chunk_files) <= 3, chunk_files  # two in flight and the last one built


def test_a_resume_starts_afresh_when_the_escrow_lost_chunks_it_had(
    escrow: Any, tmp_path: Path
) -> None:
    """Chunks acknowledged before the build ended are kept as a SHA-256 only: if their
    upload is gone from the escrow, the next run cannot resend them and starts over."""
    fake, me = escrow
    fake.fail_chunks, fake.fail_times = {2}, 10**6
    kw: dict[str, Any] = dict(ONE_POPULATION)
    with pytest.raises(bsync.SyncError):
        run(fake, me, tmp_path, send_ahead=1, **kw)
    (old,) = fake.uploads
    fake.uploads[old]["status"] = "aborted"  # reaped, say
    fake.fail_times = 0
    (u,) = run(fake, me, tmp_path, **kw).uploads
    assert u.status == "committed" and not u.resumed and u.upload_id != old


def test_a_sync_stopped_mid_build_leaves_nothing_staged(
    escrow: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks already sent cannot be resumed when the build stopped before its end (a
    rebuilt chunk has other nonces): the upload is aborted and its files removed, and the
    next run starts afresh."""
    fake, me = escrow
    real = bsync.build_upload

    def two_then_fail(*a: Any, **kw: Any) -> Iterator[bsync.Chunk]:
        for c in real(*a, **kw):
            if c.n == 2:
                raise KeyboardInterrupt
            yield c

    monkeypatch.setattr(bsync, "build_upload", two_then_fail)
    kw: dict[str, Any] = dict(ONE_POPULATION)
    with pytest.raises(KeyboardInterrupt):
        run(fake, me, tmp_path, **kw)
    (old,) = fake.uploads
    assert fake.uploads[old]["status"] == "aborted" and fake.uploads[old]["chunks"]
    assert not (tmp_path / "state" / f"{fake.partnership.id}-customers").exists()
    # the same when the build fails while it finishes after a transient escrow failure
    fake.fail_chunks, fake.fail_times = {0}, 10**6
    with pytest.raises(KeyboardInterrupt):
        run(fake, me, tmp_path, send_ahead=1, **kw)  # chunk 0 fails before chunk 2 is built
    assert len(fake.uploads) == 2 and {u["status"] for u in fake.uploads.values()} == {"aborted"}
    assert not (tmp_path / "state" / f"{fake.partnership.id}-customers").exists()
    fake.fail_times = 0
    monkeypatch.setattr(bsync, "build_upload", real)
    (u,) = run(fake, me, tmp_path, **kw).uploads
    assert u.status == "committed" and not u.resumed and u.upload_id != old


def test_changed_input_aborts_the_old_staged_upload(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    fake.fail_chunks, fake.fail_times = {1}, 10**6
    kw: dict[str, Any] = dict(ONE_POPULATION)
    with pytest.raises(bsync.SyncError):
        run(fake, me, tmp_path, **kw)
    (old,) = fake.uploads
    fake.fail_times = 0
    report = run(fake, me, tmp_path, chunk_size=60, **kw)  # different options: fresh upload
    assert fake.uploads[old]["status"] == "aborted"
    assert not report.uploads[0].resumed and report.uploads[0].upload_id != old


def test_refused_commit_aborts_instead_of_resuming(escrow: Any, tmp_path: Path) -> None:
    """A 422 at commit is about the bytes sent: the next run must not resume them."""
    fake, me = escrow
    fake.refuse_commit = True
    kw: dict[str, Any] = dict(ONE_POPULATION)
    with pytest.raises(ValidationError, match="two chunks"):
        run(fake, me, tmp_path, **kw)
    (uid,) = fake.uploads
    assert fake.uploads[uid]["status"] == "aborted"
    assert not (tmp_path / "state" / f"{fake.partnership.id}-customers").exists()
    fake.refuse_commit = False
    report = run(fake, me, tmp_path, **kw)
    assert not report.uploads[0].resumed and report.uploads[0].status == "committed"


def test_key_mismatch_and_unknown_partner(escrow: Any, tmp_path: Path) -> None:
    fake, me = escrow
    with pytest.raises(bsync.UnknownPartnerError):
        run(fake, me, tmp_path, partners=["initrode"])
    with pytest.raises(bsync.SyncError, match="key register"):
        run(fake, crypto.generate_private_key(), tmp_path)


def test_guess_population_kind() -> None:
    k = protocol.PopulationKind
    assert bsync.guess_population_kind("customers") is k.customers
    assert bsync.guess_population_kind("open-opportunities") is k.opportunities
    assert bsync.guess_population_kind("prospects-2026") is k.prospects
    assert bsync.guess_population_kind("partners") is k.partners
    assert bsync.guess_population_kind("misc") is k.other
