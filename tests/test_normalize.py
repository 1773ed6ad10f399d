"""blindmap.normalize: DESIGN §3.4, the official PSL vectors and the golden vectors."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import get_args

import idna
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import blindmap.normalize as normalize
from bench.datagen import generate_accounts
from blindmap.normalize import (
    NORMALIZER_VERSION,
    PSL_SNAPSHOT,
    SKIP_REASONS,
    Normalized,
    SkipReason,
    domain,
    domain_with_reason,
    name,
    name_with_reason,
)

pytestmark = pytest.mark.usefixtures("no_network")

HERE = Path(__file__).parent
VECTORS = json.loads((HERE / "vectors" / "normalize.json").read_text("utf-8"))
DATA_FILES = ["public_suffix_list.dat", "freemail-v1.txt", "platforms-v1.txt", "legal-forms-v1.txt"]
NO_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


def data_text(filename: str) -> str:
    return resources.files("blindmap").joinpath("data", filename).read_text("utf-8")


# --- surface and versioning ----------------------------------------------------------------


def test_public_surface() -> None:
    assert sorted(normalize.__all__) == sorted(
        [
            "NORMALIZER_VERSION",
            "PSL_SNAPSHOT",
            "RULES_VERSION",
            "SKIP_REASONS",
            "Normalized",
            "SkipReason",
            "domain",
            "domain_with_reason",
            "domains_with_reason",
            "name",
            "name_with_reason",
        ]
    )
    for symbol in normalize.__all__:
        assert hasattr(normalize, symbol)


def test_skip_reasons_are_the_literal_type() -> None:
    assert SKIP_REASONS == get_args(SkipReason)
    assert set(SKIP_REASONS) >= {
        "empty",
        "unparseable",
        "ip-address",
        "unknown-tld",
        "free-mail",
        "platform",
    }


def test_version_names_rules_and_psl_snapshot() -> None:
    assert NORMALIZER_VERSION == f"n1-psl{PSL_SNAPSHOT}" == VECTORS["normalizer_version"]
    header = re.search(r"^// VERSION: (\d{4})-(\d\d)-(\d\d)_", data_text(DATA_FILES[0]), re.M)
    assert header is not None and "".join(header.groups()) == PSL_SNAPSHOT


@pytest.mark.parametrize("filename", DATA_FILES)
def test_data_files_are_pinned(filename: str) -> None:
    """Editing a data file changes results: bump NORMALIZER_VERSION, then the vectors."""
    data = resources.files("blindmap").joinpath("data", filename).read_bytes()
    assert hashlib.sha256(data).hexdigest() == VECTORS["data_files"][filename]


# --- official Public Suffix List vectors --------------------------------------------------

PSL_CASE = re.compile(r"checkPublicSuffix\((null|'[^']*'), (null|'[^']*')\);")
UNLISTED_TLD_CASES = {"example.example", "b.example.example", "a.b.example.example"}


def psl_cases() -> list[tuple[str | None, str | None]]:
    cases = []
    for line in (HERE / "psl_tests.txt").read_text("utf-8").splitlines():
        match = PSL_CASE.fullmatch(line.strip())
        if match:
            given_, expected = (None if g == "null" else g[1:-1] for g in match.groups())
            a_label = None if expected is None else idna.encode(expected, uts46=True).decode()
            cases.append((given_, a_label))
    return cases


def test_official_psl_vectors_pass_except_unlisted_tlds() -> None:
    cases = psl_cases()
    assert len(cases) == 78
    differing = {given_ for given_, expected in cases if domain(given_) != expected}
    assert differing == UNLISTED_TLD_CASES  # 75 of 78 pass; these three are by design
    for given_ in UNLISTED_TLD_CASES:  # `.example` is unlisted and special-use (RFC 2606)
        assert domain_with_reason(given_) == Normalized(None, "special-use")


def test_psl_walk_agrees_with_the_publicsuffixlist_library() -> None:
    """Our three-set PSL lookup gives the reference library's answer for every rule."""
    from publicsuffixlist import PublicSuffixList

    text = data_text("public_suffix_list.dat")
    reference = PublicSuffixList(source=text.splitlines(), accept_unknown=False)
    rules = {line.split()[0] for line in text.splitlines() if line and not line.startswith("//")}
    for rule in sorted(rules):
        host = "a.b." + idna.encode(rule.lstrip("!").replace("*", "w"), uts46=True).decode()
        start = normalize._PSL.suffix_start(host)
        assert host[start:] == reference.publicsuffix(host), host


def _reference_classify_host(host: str) -> Normalized:
    """Step 5 as first written: the three-set PSL walk, then each list's own walk."""
    if not host or host[0] == "." or host[-1] == "." or ".." in host:
        return Normalized(None, "unparseable")
    top = host[host.rfind(".") + 1 :]
    if re.fullmatch(r"0x[0-9a-f]*|[0-9]+", top):
        return Normalized(None, "ip-address" if normalize._is_ipv4(host) else "unparseable")
    if top in normalize._SPECIAL_USE_TLDS:
        return Normalized(None, "special-use")
    if "." not in host:
        return Normalized(None, "single-label")
    start = normalize._PSL.suffix_start(host)
    if start < 0:
        return Normalized(None, "unknown-tld")
    if start == 0:
        return Normalized(None, "public-suffix")
    registrable = host[host.rfind(".", 0, start - 1) + 1 :]
    if normalize._PLATFORMS.matches(host, registrable):
        return Normalized(None, "platform")
    if normalize._FREEMAIL.matches(host, registrable):
        return Normalized(None, "free-mail")
    return Normalized(registrable, None)


def _walk_hosts() -> list[str]:
    """Hosts around every PSL rule, exception, wildcard and list entry, and generated ones."""
    text = data_text("public_suffix_list.dat")
    bases = set()
    for line in text.splitlines():
        if line.strip() and not line.startswith("//"):
            rule = line.split()[0].lstrip("!")
            bases.add(idna.encode(rule.replace("*", "w"), uts46=True).decode())
            if rule.startswith("*."):
                bases.add(idna.encode(rule[2:], uts46=True).decode())
    for filename in ("freemail-v1.txt", "platforms-v1.txt"):
        for entry in list_entries(filename):
            host = entry.split("/", 1)[0].lower()
            bases.add(host.replace("*", "com"))
            bases.add(host.replace("*", "co.uk"))
            bases.add(host.replace("*", "nosuchtld"))
    hosts = set()
    for base in bases:
        for prefix in ("", "a.", "www.", "a.b.", "www.a.b.", "1.", "gmail.", "yahoo."):
            hosts.add(prefix + base)
    for a in generate_accounts(5_000, seed=13):
        for cell in (a.website or "").split():
            hosts.add(cell.lower().split("//")[-1].split("/")[0].split("@")[-1].split(":")[0])
    hosts.update(["", ".", "a..b", "com", "1.2.3.4", "0x7f.1", "a.0x", "x.local", "a.b."])
    return sorted(hosts)


def test_single_dict_host_walk_agrees_with_the_reference_walk() -> None:
    hosts = _walk_hosts()
    assert len(hosts) > 50_000
    wrong = [
        h for h in hosts if normalize._classify_host_uncached(h) != _reference_classify_host(h)
    ]
    assert wrong == []
    reasons = {_reference_classify_host(h).reason for h in hosts}
    assert reasons == set(SKIP_REASONS) - {"empty"} | {None}  # every branch was exercised


def test_host_walk_agrees_when_lists_name_psl_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lists naming exception, wildcard and rule entries, and brands, as platforms and
    free-mail (none does today): the single-dict walk still equals the reference."""
    psl = normalize._PSL
    odd = sorted(psl.exceptions)[:20] + sorted(psl.wildcards)[:20] + sorted(psl.rules)[:40]
    sub = ["a." + h for h in odd]
    extra = odd + sub
    # a host and its parent on different lists: the platform one must win
    plat = odd[::2] + sub[1::2] + ["acme.*"]
    free = odd[1::2] + sub[::2] + ["acme.*"]
    platforms = normalize._HostList(list_entries("platforms-v1.txt") + plat)
    freemail = normalize._HostList(list_entries("freemail-v1.txt") + free)
    monkeypatch.setattr(normalize, "_PLATFORMS", platforms)
    monkeypatch.setattr(normalize, "_FREEMAIL", freemail)
    monkeypatch.setattr(normalize, "_SUFFIX_FLAGS", normalize._suffix_flags())
    monkeypatch.setattr(normalize, "_BRAND_FLAGS", normalize._brand_flags())
    hosts = [p + h for h in extra for p in ("", "a.", "b.a.", "www.")] + ["acme.com", "w.acme.de"]
    wrong = [
        h for h in hosts if normalize._classify_host_uncached(h) != _reference_classify_host(h)
    ]
    assert wrong == []
    reasons = {_reference_classify_host(h).reason for h in hosts}
    assert {"platform", "free-mail", "public-suffix"} <= reasons


def test_batch_domains_equal_one_by_one() -> None:
    cells: list[str | None] = [a.website for a in generate_accounts(5_000, seed=14)]
    cells += [c for cases in DOMAIN_CASES.values() for c, _, _ in cases] + [None, ""]
    assert normalize.domains_with_reason(cells) == [domain_with_reason(c) for c in cells]
    assert normalize.domains_with_reason(iter(cells)) == normalize.domains_with_reason(cells)


# --- table-driven rules -------------------------------------------------------------------

DOMAIN_CASES: dict[str, list[tuple[str | None, str | None, SkipReason | None]]] = {
    "bare and www": [
        ("acme.com", "acme.com", None),
        ("www.acme.com", "acme.com", None),
        ("WWW.Acme.CO.UK", "acme.co.uk", None),
        ("shop.eu.acme.com.au", "acme.com.au", None),
        ("  acme.de\t", "acme.de", None),
        ("acme.com.", "acme.com", None),
    ],
    "schemes": [
        ("https://acme.com", "acme.com", None),
        ("HTTP://ACME.COM/", "acme.com", None),
        ("ftp://files.acme.com", "acme.com", None),
        ("sftp://files.acme.com", "acme.com", None),
        ("//acme.com/x", "acme.com", None),
        ("http://http://acme.com", "acme.com", None),
        ("https://https//acme.com", "acme.com", None),
        ("https//acme.com", "acme.com", None),
        ("http:/acme.com", "acme.com", None),
        ("http:acme.com", "acme.com", None),
        ("http:\\\\acme.com\\about", "acme.com", None),
        ("http:///acme.com", "acme.com", None),
    ],
    "authority": [
        ("https://user:pw@acme.com", "acme.com", None),
        ("https://a@b@acme.com/", "acme.com", None),
        ("https://acme.com:8443/x", "acme.com", None),
        ("acme.com:8080", "acme.com", None),
        ("https://acme.com./", "acme.com", None),
        ("https://acme.com/a/b?c=d#e", "acme.com", None),
        ("acme.com?utm_source=x", "acme.com", None),
        ("acme.com#about", "acme.com", None),
        ("https://acme.com/@someone", "acme.com", None),
        ("https://ex%61mple-co.com/", "example-co.com", None),
    ],
    "emails": [
        ("jane.doe@acme.com", "acme.com", None),
        ("@acme.com", "acme.com", None),
        ("mailto:jane@Acme.com", "acme.com", None),
        ("Jane Doe <jane@acme.io>", "acme.io", None),
        ("jane@mail.acme.co.jp", "acme.co.jp", None),
    ],
    "multi-value cells": [
        ("acme.com, acme.de", "acme.com", None),
        ("jane@gmail.com; acme.de", "acme.de", None),
        ("linkedin.com/company/acme | acme.fr", "acme.fr", None),
        ("acme.com (headquarters)", "acme.com", None),
        ("Website: acme.com", "acme.com", None),
        ("(acme.com)", "acme.com", None),
        ("see linkedin.com/company/acme", None, "platform"),
        ("n/a, -", None, "single-label"),
    ],
    "idna": [
        ("münchen.de", "xn--mnchen-3ya.de", None),
        ("https://www.Bücher.de/", "xn--bcher-kva.de", None),
        ("xn--bcher-kva.de", "xn--bcher-kva.de", None),
        ("\uff22Ü\uff23\uff28\uff25\uff32\uff0e\uff44\uff45", "xn--bcher-kva.de", None),
        ("faß.de", "xn--fa-hia.de", None),
        ("食狮.公司.cn", "xn--85x722f.xn--55qx5d.cn", None),
        ("www.食狮.中国", "xn--85x722f.xn--fiqs8s", None),
        ("ex_ample.com", "ex_ample.com", None),
        ("under_score.acme.com", "acme.com", None),
        ("☃.net", None, "unparseable"),
        ("bad_ü.de", None, "unparseable"),
    ],
    "psl private section": [
        ("acme.github.io", "acme.github.io", None),
        ("docs.acme.github.io", "acme.github.io", None),
        ("acme.myshopify.com", "acme.myshopify.com", None),
        ("acme.blogspot.com", "acme.blogspot.com", None),
        ("github.io", None, "public-suffix"),
        ("co.uk", None, "public-suffix"),
        ("www.ck", "www.ck", None),
    ],
    "ip addresses": [
        ("192.168.1.10", None, "ip-address"),
        ("http://10.0.0.1:8080/x", None, "ip-address"),
        ("0x7f.1", None, "ip-address"),
        ("2130706433", None, "ip-address"),
        ("0177.0.0.1", None, "ip-address"),
        ("[::1]", None, "ip-address"),
        ("http://[2001:db8::1]:80/", None, "ip-address"),
        ("\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11", None, "ip-address"),
        ("256.256.256.256", None, "unparseable"),
        ("[not-ipv6]", None, "unparseable"),
    ],
    "special use and single labels": [
        ("localhost", None, "special-use"),
        ("http://localhost:3000/", None, "special-use"),
        ("printer.local", None, "special-use"),
        ("app.localhost", None, "special-use"),
        ("acme.test", None, "special-use"),
        ("acme.example", None, "special-use"),
        ("acme.invalid", None, "special-use"),
        ("abcdefghijklmnop.onion", None, "special-use"),
        ("wiki.corp.internal", None, "special-use"),
        ("router.home.arpa", None, "special-use"),
        ("intranet", None, "single-label"),
        ("com", None, "single-label"),
    ],
    "unknown tlds": [
        ("acme.notatld", None, "unknown-tld"),
        ("server.lan", None, "unknown-tld"),
        ("acme.corp", None, "unknown-tld"),
    ],
    "free-mail": [
        ("gmail.com", None, "free-mail"),
        ("jane@googlemail.com", None, "free-mail"),
        ("jane@hotmail.co.uk", None, "free-mail"),
        ("jane@yahoo.com.br", None, "free-mail"),
        ("mail.yahoo.co.jp", None, "free-mail"),
        ("jane@gmx.net", None, "free-mail"),
        ("jane@web.de", None, "free-mail"),
        ("jane@proton.me", None, "free-mail"),
        ("jane@qq.com", None, "free-mail"),
        ("jane@163.com", None, "free-mail"),
        ("jane@mail.ru", None, "free-mail"),
        ("jane@yandex.ru", None, "free-mail"),
        ("zoho.com", "zoho.com", None),
        ("jane@zohomail.com", None, "free-mail"),
        ("google.com", "google.com", None),
        ("apple.com", "apple.com", None),
    ],
    "platforms": [
        ("https://www.linkedin.com/company/acme/", None, "platform"),
        ("de.linkedin.com/company/acme", None, "platform"),
        ("facebook.com/acme", None, "platform"),
        ("https://github.com/acme", None, "platform"),
        ("https://sites.google.com/view/acme", None, "platform"),
        ("https://www.google.com/maps/place/Acme", None, "platform"),
        ("https://www.google.com/mapsacme", "google.com", None),
        ("https://www.google.com/", "google.com", None),
        ("https://bit.ly/3xYz", None, "platform"),
        ("https://t.co/abc", None, "platform"),
        ("acme.wordpress.com", None, "platform"),
        ("https://twitter.com/acme", None, "platform"),
        ("https://x.com/acme", None, "platform"),
        ("https://apps.apple.com/app/id1", None, "platform"),
        ("https://www.crunchbase.com/organization/acme", None, "platform"),
    ],
    "empty and unparseable": [
        (None, None, "empty"),
        ("", None, "empty"),
        ("   ", None, "empty"),
        ("-", None, "empty"),
        ("—", None, "empty"),
        ("http://", None, "unparseable"),
        (".acme.com", None, "unparseable"),
        ("acme..com", None, "unparseable"),
        ("acme.com..", "acme.com", None),
        ("acme^.com", None, "unparseable"),
    ],
}


@pytest.mark.parametrize(
    ("given_", "value", "reason"),
    [
        pytest.param(*case, id=f"{rule}: {case[0]!r}")
        for rule, cases in DOMAIN_CASES.items()
        for case in cases
    ],
)
def test_domain_rules(given_: str | None, value: str | None, reason: SkipReason | None) -> None:
    assert domain_with_reason(given_) == Normalized(value, reason)
    assert domain(given_) == value


NAME_CASES: list[tuple[str | None, str | None]] = [
    (None, None),
    ("", None),
    ("  ", None),
    ("---", None),
    ("Acme", "acme"),
    ("ACME, Inc.", "acme"),
    ("Acme Inc", "acme"),
    ("Acme Corporation", "acme"),
    ("Acme Pty Ltd", "acme"),
    ("Acme Pty. Ltd.", "acme"),
    ("Acme Co., Ltd.", "acme"),
    ("Acme GmbH & Co. KG", "acme"),
    ("Acme S.A.", "acme"),
    ("Acme SA", "acme"),
    ("Acme S A", "acme"),
    ("Acme S.A. de C.V.", "acme"),
    ("Acme S.r.l.", "acme"),
    ("Acme SpA", "acme"),
    ("Acme B.V.", "acme"),
    ("Acme Oy", "acme"),
    ("Acme AB (publ)", "acme"),
    ("Acme A/S", "acme"),
    ("Acme ApS", "acme"),
    ("Acme K.K.", "acme"),
    ("Acme Sp. z o.o.", "acme"),
    ("Acme Sdn. Bhd.", "acme"),
    ("Acme Private Limited", "acme"),
    ("Acme (Deutschland) GmbH", "acme"),
    ("Acme [old]", "acme"),
    ("(Acme)", "acme"),
    ("Limited", "limited"),
    ("Pty Ltd", "pty"),
    ("The Company Ltd", "the"),
    ("AT&T Inc.", "atandt"),
    ("Johnson & Johnson", "johnsonandjohnson"),
    ("Müller & Söhne GmbH", "mullerandsohne"),
    ("Société Générale S.A.", "societegenerale"),
    ("Ørsted A/S", "orsted"),
    ("Łódź Sp. z o.o.", "lodz"),
    ("Straße AG", "strasse"),
    ("Nestlé", "nestle"),
    ("\uff21\uff23\uff2d\uff25\u3000\uff29\uff4e\uff43\uff0e", "acme"),
    ("3M Company", "3m"),
    ("McDonald's Corp", "mcdonalds"),
    ("Acme-Widgets, LLC", "acmewidgets"),
    ("ソニー 株式会社", "ソニー"),
]


@pytest.mark.parametrize(("given_", "expected"), NAME_CASES)
def test_name_rules(given_: str | None, expected: str | None) -> None:
    assert name(given_) == expected
    assert name_with_reason(given_) == Normalized(expected, None if expected else "empty")


# --- data list hygiene --------------------------------------------------------------------


def list_entries(filename: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in data_text(filename).splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("filename", ["freemail-v1.txt", "platforms-v1.txt"])
def test_host_lists_are_clean(filename: str) -> None:
    entries = list_entries(filename)
    assert len(entries) == len(set(entries)), "duplicate entries"
    assert all(e == e.lower() and " " not in e for e in entries)
    assert 50 <= len(entries) <= 250, "hand-reviewed lists, not a dump"


@pytest.mark.parametrize(
    ("filename", "reason"), [("freemail-v1.txt", "free-mail"), ("platforms-v1.txt", "platform")]
)
def test_every_list_entry_takes_effect(filename: str, reason: SkipReason) -> None:
    """Each entry is reachable: not itself a public suffix, not shadowed by the PSL."""
    for entry in list_entries(filename):
        cell = entry.replace(".*", ".com") if entry.endswith(".*") else entry
        assert domain_with_reason(f"https://{cell}") in {
            Normalized(None, reason),
            Normalized(None, "platform"),  # platform is tested first
        }, entry


def test_legal_forms_are_distinct_after_normalization() -> None:
    forms = [
        "".join(normalize._words(unicodedata.normalize("NFKC", e).casefold()))
        for e in list_entries("legal-forms-v1.txt")
    ]
    assert len(forms) == len(set(forms)), "two spellings of one form: list it once"


# --- golden vectors -----------------------------------------------------------------------


def test_golden_vectors_document_themselves() -> None:
    assert VECTORS["description"]
    assert len(VECTORS["domain"]) >= 100 and len(VECTORS["name"]) >= 30


@pytest.mark.parametrize("case", VECTORS["domain"], ids=lambda c: repr(c["input"]))
def test_golden_domain_vectors(case: dict[str, str | None]) -> None:
    assert domain_with_reason(case["input"]) == Normalized(case["value"], case["reason"])  # type: ignore[arg-type]


@pytest.mark.parametrize("case", VECTORS["name"], ids=lambda c: repr(c["input"]))
def test_golden_name_vectors(case: dict[str, str | None]) -> None:
    assert name_with_reason(case["input"]) == Normalized(case["value"], case["reason"])  # type: ignore[arg-type]


# --- generated data -----------------------------------------------------------------------


def test_generated_crm_rows_normalize_to_their_ground_truth() -> None:
    accounts = generate_accounts(20_000, seed=11)
    wrong = [
        (a.website, a.expected_domain) for a in accounts if domain(a.website) != a.expected_domain
    ]
    assert wrong == []


def test_fast_path_agrees_with_the_general_parser() -> None:
    cells = [a.website for a in generate_accounts(20_000, seed=12)]
    cells += [c for cases in DOMAIN_CASES.values() for c, _, _ in cases if c]
    for cell in cells:
        if cell.strip() and normalize._FAST_PATH.fullmatch(cell.strip()):
            assert normalize._classify_cell(cell.strip()) == domain_with_reason(cell), cell


# --- properties ---------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
SUFFIXES = [
    "com",
    "co.uk",
    "de",
    "com.au",
    "io",
    "fr",
    "co.jp",
    "github.io",
    "ck",
    "jp",
    "kyoto.jp",
    "公司.cn",
    "中国",
    "nl",
    "com.br",
    "org",
    "ac.uk",
    "blogspot.com",
]
IDN_LABEL = st.sampled_from(["münchen", "bücher", "zürich", "食狮", "españa", "ørsted", "café"])
HOST = st.builds(
    lambda labels, suffix: ".".join([*labels, suffix]),
    st.lists(st.one_of(LABEL, IDN_LABEL), min_size=1, max_size=3),
    st.sampled_from(SUFFIXES),
)
PATH = st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), max_size=3).filter(
    lambda segments: not segments or segments[0] not in {"maps", "search", "url"}
)


@settings(max_examples=300, suppress_health_check=NO_HEALTH)
@given(st.one_of(st.text(max_size=40), HOST, st.builds("{}@{}".format, LABEL, HOST)))
def test_domain_is_idempotent(value: str) -> None:
    first = domain(value)
    if first is not None:
        assert domain(first) == first


@settings(max_examples=300, suppress_health_check=NO_HEALTH)
@given(
    host=HOST,
    scheme=st.sampled_from(["", "http://", "https://", "HTTPS://", "http:/", "https//", "//"]),
    www=st.booleans(),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    path=PATH,
    query=st.sampled_from(["", "?a=1", "#top", "?utm_source=crm&b=2#x"]),
    upper=st.lists(st.booleans(), min_size=40, max_size=40),
    space=st.sampled_from(["", " ", "\t", "\u00a0"]),
)
def test_domain_is_invariant_under_url_decoration(
    host: str,
    scheme: str,
    www: bool,
    port: int | None,
    path: list[str],
    query: str,
    upper: list[bool],
    space: str,
) -> None:
    expected = domain(host)
    assume(expected is not None)
    cased = "".join(
        c.upper() if flip and len(c.upper()) == 1 else c for c, flip in zip(host, upper * 9)
    )
    cell = f"{scheme}{'www.' if www else ''}{cased}"
    cell += f":{port}" if port is not None else ""
    cell += "".join(f"/{segment}" for segment in path) + (query if path else "")
    assert domain(f"{space}{cell}{space}") == expected


@settings(max_examples=200, suppress_health_check=NO_HEALTH)
@given(HOST, st.sampled_from(["info", "jane.doe", "a+b"]))
def test_email_gives_the_domain_of_its_host(host: str, local: str) -> None:
    assert domain(f"{local}@{host}") == domain(host)


WORD = st.from_regex(r"[A-Za-zÀ-ÖØ-öø-ÿ]{3,9}", fullmatch=True).filter(
    lambda w: "".join(normalize._words(w.casefold())) not in normalize._LEGAL_FORMS
)
COMPANY = st.lists(WORD, min_size=1, max_size=4).map(" ".join)


@settings(max_examples=300, suppress_health_check=NO_HEALTH)
@given(st.text(max_size=40))
def test_name_is_idempotent(value: str) -> None:
    first = name(value)
    if first is not None:
        assert name(first) == first


@settings(max_examples=300, suppress_health_check=NO_HEALTH)
@given(
    COMPANY,
    st.sampled_from(["", " Inc.", ", LLC", " GmbH & Co. KG", " S.A.", " Pty Ltd", " AB"]),
    st.sampled_from(["", " (Germany)", " [old]"]),
    st.sampled_from([str.lower, str.upper, str.title, str]),
)
def test_name_ignores_case_punctuation_qualifiers_and_legal_forms(
    company: str, form: str, qualifier: str, case: object
) -> None:
    assert callable(case)
    expected = name(company)
    assert expected is not None
    assert name(case(f"  {company}{qualifier}{form} ")) == expected
    assert name(company.replace(" ", " - ")) == expected


@settings(max_examples=200, suppress_health_check=NO_HEALTH)
@given(COMPANY)
def test_name_folds_latin_diacritics_to_ascii(company: str) -> None:
    key = name(company)
    assert key is not None and key.isascii() and key.isalnum()
