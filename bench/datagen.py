"""Seeded generator of realistic, messy CRM account exports (benchmarks and tests).

Companies from several countries get names with their local legal forms and a website on a
matching public suffix (some internationalized: münchen.de, bücher.de); each account row
then renders that website the way CRM users type it: schemes, `www.`, paths, ports, upper
case, emails in the website field, typos in the scheme, several values in one cell, blank
cells, free-mail addresses and platform URLs (LinkedIn, Facebook, ...), duplicates.

Every `Account` keeps its `company` (ground truth, never written to CSV) and the domain a
correct normalizer must derive from the website cell (`expected_domain`), so callers can
measure accuracy as well as speed. Only the standard library is used.

    accounts = generate_accounts(10_000, seed=1)
    partner = generate_accounts(8_000, seed=2, overlap_with=accounts, overlap=0.25)
    write_csv("accounts.csv", accounts, dialect="salesforce")
"""

from __future__ import annotations

import csv
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Account", "Company", "Dialect", "generate_accounts", "write_csv"]

Dialect = Literal["salesforce", "hubspot"]


@dataclass(frozen=True, slots=True)
class Company:
    """The real-world company behind one or more account rows."""

    base_name: str  # "Müller Logistik"
    legal_form: str  # "GmbH" ("" when none)
    country: str  # ISO 3166-1 alpha-2
    site: str  # registrable domain as people write it: "müller-logistik.de"
    domain: str  # the same in A-label form, the expected `normalize.domain`: "xn--..."

    @property
    def legal_name(self) -> str:
        return f"{self.base_name} {self.legal_form}".strip()


@dataclass(frozen=True, slots=True)
class Account:
    """One CRM row. `website` is the messy cell; `expected_domain` its correct domain key."""

    local_id: str
    name: str
    website: str
    country: str
    owner_email: str
    stage: str
    industry: str
    company: Company
    expected_domain: str | None


# --- vocabulary ----------------------------------------------------------------------------

# country: (public suffixes with weights, legal forms as people type them, local words)
_COUNTRIES: dict[str, tuple[list[tuple[str, int]], list[str], list[str]]] = {
    "US": (
        [("com", 80), ("io", 8), ("ai", 4), ("co", 3), ("net", 3), ("us", 2)],
        ["Inc.", "Inc", "LLC", "Corp.", "Corporation", "Co.", "L.L.C.", "", "Incorporated"],
        ["Systems", "Analytics", "Labs", "Software", "Logistics", "Health", "Capital"],
    ),
    "GB": (
        [("co.uk", 75), ("com", 15), ("uk", 5), ("io", 5)],
        ["Ltd", "Ltd.", "Limited", "PLC", "plc", "LLP", ""],
        ["Holdings", "Partners", "Engineering", "Consulting", "Foods", "Trust"],
    ),
    "DE": (
        [("de", 85), ("com", 10), ("eu", 5)],
        ["GmbH", "AG", "GmbH & Co. KG", "SE", "KG", "e.K.", "UG (haftungsbeschränkt)"],
        ["Müller", "Bäckerei", "Straßenbau", "Technik", "Logistik", "Maschinenbau", "Bücher"],
    ),
    "AT": (
        [("at", 80), ("co.at", 10), ("com", 10)],
        ["GmbH", "AG", "KG"],
        ["Gärtnerei", "Holzbau", "Alpen", "Wien", "Werke"],
    ),
    "CH": (
        [("ch", 85), ("com", 15)],
        ["AG", "SA", "GmbH", "Sàrl"],
        ["Uhren", "Präzision", "Genève", "Zürich", "Pharma"],
    ),
    "FR": (
        [("fr", 80), ("com", 15), ("eu", 5)],
        ["SA", "S.A.", "SAS", "SARL", "S.A.S.", "EURL"],
        ["Société", "Générale", "Énergie", "Conseil", "Boulangerie", "Frères"],
    ),
    "NL": (
        [("nl", 85), ("com", 10), ("eu", 5)],
        ["B.V.", "BV", "N.V.", "NV"],
        ["Groep", "Bouw", "Handel", "Techniek", "Zuid"],
    ),
    "SE": ([("se", 85), ("com", 15)], ["AB", "AB (publ)"], ["Bygg", "Källa", "Norr", "Skog"]),
    "NO": ([("no", 90), ("com", 10)], ["AS", "ASA"], ["Fjord", "Havbruk", "Kraft", "Sjø"]),
    "DK": ([("dk", 90), ("com", 10)], ["ApS", "A/S"], ["Mejeri", "Vind", "Ø-Handel", "Byg"]),
    "FI": ([("fi", 90), ("com", 10)], ["Oy", "Oyj", "Ab"], ["Metsä", "Järvi", "Teknologia"]),
    "IT": (
        [("it", 85), ("com", 15)],
        ["S.r.l.", "Srl", "S.p.A.", "SpA"],
        ["Costruzioni", "Moda", "Caffè", "Meccanica"],
    ),
    "ES": ([("es", 80), ("com", 20)], ["S.L.", "S.A.", "SL"], ["Construcciones", "Energía"]),
    "BR": ([("com.br", 90), ("com", 10)], ["Ltda", "Ltda.", "S.A."], ["Comércio", "Serviços"]),
    "AU": (
        [("com.au", 85), ("com", 10), ("net.au", 5)],
        ["Pty Ltd", "Pty. Ltd.", "Limited", "Ltd"],
        ["Mining", "Outback", "Coastal", "Pastoral"],
    ),
    "NZ": ([("co.nz", 90), ("nz", 10)], ["Limited", "Ltd"], ["Kiwi", "Harbour", "Dairy"]),
    "JP": (
        [("co.jp", 75), ("jp", 15), ("com", 10)],
        ["K.K.", "Co., Ltd.", "Corporation", "Kabushiki Kaisha", "Inc."],
        ["Denki", "Shoji", "Kogyo", "Seiki", "Trading"],
    ),
    "IN": (
        [("in", 45), ("co.in", 35), ("com", 20)],
        ["Pvt Ltd", "Private Limited", "Pvt. Ltd.", "Limited"],
        ["Infotech", "Exports", "Textiles", "Pharma"],
    ),
    "SG": ([("com.sg", 80), ("sg", 20)], ["Pte Ltd", "Pte. Ltd."], ["Marine", "Asia", "Trading"]),
    "PL": ([("pl", 80), ("com.pl", 20)], ["Sp. z o.o.", "S.A."], ["Łódź", "Budownictwo"]),
}
_COUNTRY_WEIGHTS = {"US": 35, "GB": 10, "DE": 10, "FR": 6, "AU": 4, "JP": 4, "IN": 4}

_SYLLABLES = [
    "ac",
    "me",
    "glo",
    "bex",
    "ini",
    "tech",
    "umb",
    "rel",
    "la",
    "cy",
    "ber",
    "dyne",
    "stark",
    "wa",
    "yne",
    "hoo",
    "li",
    "pied",
    "pi",
    "per",
    "vand",
    "lay",
    "sol",
    "ar",
    "nov",
    "a",
    "zen",
    "ith",
    "kor",
    "tex",
    "vel",
    "ox",
    "lum",
    "en",
    "ter",
    "ra",
    "qua",
    "ntum",
    "nim",
    "bus",
    "ori",
    "on",
    "pol",
    "aris",
    "kin",
    "etic",
    "bright",
    "wave",
    "data",
    "core",
    "flux",
    "mint",
    "sage",
    "opti",
    "ma",
    "vert",
    "ex",
    "cas",
    "cade",
]
_WORDS = ["Global", "United", "Blue", "North", "First", "Green", "Smart", "Prime", "Red"]
_INDUSTRIES = ["Software", "Manufacturing", "Retail", "Finance", "Healthcare", "Logistics"]
_STAGES = ["Customer", "Prospect", "Opportunity", "Partner", "Churned"]
_FREEMAIL = [
    "gmail.com",
    "yahoo.com",
    "hotmail.com",
    "outlook.com",
    "gmx.de",
    "web.de",
    "icloud.com",
    "yahoo.co.uk",
    "orange.fr",
    "qq.com",
    "163.com",
    "mail.ru",
]
_FIRST = ["anna", "ben", "chloe", "david", "emma", "felix", "grace", "hugo", "ines", "jonas"]
_LAST = ["smith", "müller", "dupont", "rossi", "tanaka", "kowalski", "larsen", "silva"]
_TRANSLIT = str.maketrans(
    {
        "ä": "ae",
        "ö": "oe",
        "ü": "ue",
        "ß": "ss",
        "ø": "oe",
        "å": "aa",
        "é": "e",
        "è": "e",
        "ê": "e",
        "à": "a",
        "ç": "c",
        "í": "i",
        "ó": "o",
        "ã": "a",
        "ł": "l",
        "ź": "z",
        "ñ": "n",
    }
)


# --- companies -----------------------------------------------------------------------------


def _pick_weighted(rng: random.Random, options: Sequence[tuple[str, int]]) -> str:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _invent_word(rng: random.Random) -> str:
    # At least 6 letters: short labels collide with real public suffixes (aa.no, pila.pl).
    while True:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))
        if len(word) >= 6:
            return word.capitalize()


def _base_name(rng: random.Random, local_words: list[str]) -> str:
    shape = rng.random()
    if shape < 0.45:
        return _invent_word(rng)
    if shape < 0.75:
        return f"{_invent_word(rng)} {rng.choice(local_words)}"
    if shape < 0.9:
        return f"{rng.choice(_WORDS)} {_invent_word(rng)}"
    return f"{_invent_word(rng)} & {_invent_word(rng)}"


def _site_label(rng: random.Random, base_name: str) -> str:
    """The label people would register: ASCII transliteration, or the IDN itself (3%)."""
    words = [w for w in base_name.lower().replace("&", " ").split() if w]
    if rng.random() < 0.03 and any(not w.isascii() for w in words):
        return "".join(ch for ch in "-".join(words) if ch.isalnum() or ch == "-")
    ascii_words = [w.translate(_TRANSLIT) for w in words]
    ascii_words = [
        "".join(ch for ch in w if ch in string.ascii_lowercase + string.digits) for w in ascii_words
    ]
    return rng.choice(["", "-"]).join(w for w in ascii_words if w) or "company"


def _to_a_label(site: str) -> str:
    if site.isascii():
        return site
    import idna  # only IDN sites need it; keeps this module importable without extras

    return idna.encode(site, uts46=True).decode("ascii")


def _new_company(rng: random.Random, taken: set[str]) -> Company:
    country = rng.choices(list(_COUNTRIES), [_COUNTRY_WEIGHTS.get(c, 2) for c in _COUNTRIES])[0]
    suffixes, forms, local_words = _COUNTRIES[country]
    while True:
        base = _base_name(rng, local_words)
        site = f"{_site_label(rng, base)}.{_pick_weighted(rng, suffixes)}"
        if site not in taken:
            taken.add(site)
            return Company(base, rng.choice(forms), country, site, _to_a_label(site))


# --- messy rendering -----------------------------------------------------------------------


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}".translate(_TRANSLIT)


def _messy_website(rng: random.Random, company: Company) -> tuple[str, str | None]:
    """(cell, expected domain key). Weights follow what CRM exports tend to contain."""
    site = company.site if rng.random() < 0.8 else company.domain
    host = f"www.{site}" if rng.random() < 0.45 else site
    r = rng.random()
    if r < 0.06:
        return rng.choice(["", "", " ", "-", "n/a", "N/A", "none"]), None
    if r < 0.09:
        return f"{_person(rng)}@{rng.choice(_FREEMAIL)}", None
    if r < 0.12:
        slug = site.split(".")[0]
        return rng.choice(
            [
                f"https://www.linkedin.com/company/{slug}/",
                f"linkedin.com/company/{slug}",
                f"https://facebook.com/{slug}",
                f"https://sites.google.com/view/{slug}",
                f"https://bit.ly/{slug[:5]}",
                f"https://www.instagram.com/{slug}",
            ]
        ), None
    expected = company.domain
    if r < 0.16:
        return f"{rng.choice(['info', 'sales', _person(rng)])}@{site}", expected
    if r < 0.17:
        return f"{_person(rng)}@gmail.com; {host}", expected
    if r < 0.18:
        return f"{host} (HQ)", expected
    if r < 0.19:
        return rng.choice(
            [
                f"http://http://{host}",
                f"http:/{host}",
                f"https//{host}",
                f"http:\\\\{host}\\",
                f"{host}.",
                f"HTTPS://{host}:443",
            ]
        ), expected
    if r < 0.21:
        return f"{rng.choice(['shop', 'en', 'de', 'careers'])}.{site}", expected
    cell = rng.choice(
        [
            "{h}",
            "{h}",
            "{h}",
            "https://{h}/",
            "https://{h}",
            "http://{h}",
            "https://{h}/en/about-us",
            "https://{h}/?utm_source=crm",
            "{h}/contact#team",
            "{h}:8080",
        ]
    ).format(h=host)
    if rng.random() < 0.06 and cell.isascii():  # "ß".upper() is "SS": another domain
        cell = cell.upper()
    if rng.random() < 0.04:
        cell = f"  {cell} "
    return cell, expected


def _messy_name(rng: random.Random, company: Company) -> str:
    name = company.legal_name
    r = rng.random()
    if r < 0.08:
        return name.upper()
    if r < 0.12:
        return company.base_name
    if r < 0.15:
        return f"{name} ({company.country})"
    if r < 0.18:
        return name.replace(" ", ", ", 1) if company.legal_form else name
    return name


def _salesforce_id(rng: random.Random) -> str:
    return "001" + "".join(rng.choices(string.ascii_letters + string.digits, k=15))


def _account(rng: random.Random, company: Company) -> Account:
    website, expected = _messy_website(rng, company)
    return Account(
        local_id=_salesforce_id(rng),
        name=_messy_name(rng, company),
        website=website,
        country=company.country,
        owner_email=f"{_person(rng)}@seller.example",
        stage=rng.choice(_STAGES),
        industry=rng.choice(_INDUSTRIES),
        company=company,
        expected_domain=expected,
    )


def generate_accounts(
    n: int,
    *,
    seed: int,
    overlap_with: Sequence[Account] | None = None,
    overlap: float = 0.2,
    duplicates: float = 0.02,
) -> list[Account]:
    """`n` account rows, deterministic for a given `seed`.

    With `overlap_with`, a fraction `overlap` of the rows are companies of that list,
    rendered anew (different messiness, ids and owners); the rest are new companies.
    A fraction `duplicates` of the rows repeat a company already in this list.
    """
    rng = random.Random(seed)
    shared = list({a.company.domain: a.company for a in overlap_with or ()}.values())
    taken = {c.site for c in shared}
    rng.shuffle(shared)
    n_shared = min(len(shared), round(n * overlap)) if shared else 0
    companies = shared[:n_shared]
    n_unique = n - n_shared - round(n * duplicates)
    companies += [_new_company(rng, taken) for _ in range(max(0, n_unique))]
    while len(companies) < n:
        companies.append(rng.choice(companies) if companies else _new_company(rng, taken))
    rng.shuffle(companies)
    return [_account(rng, c) for c in companies]


_COLUMNS: dict[str, list[str]] = {
    "salesforce": ["Id", "Name", "Website", "BillingCountry", "Owner.Email", "Type", "Industry"],
    "hubspot": [
        "Record ID",
        "Company name",
        "Company Domain Name",
        "Website URL",
        "Country/Region",
        "Company owner",
        "Lifecycle Stage",
        "Industry",
    ],
}


def _row(account: Account, dialect: Dialect) -> list[str]:
    a = account
    if dialect == "salesforce":
        return [a.local_id, a.name, a.website, a.country, a.owner_email, a.stage, a.industry]
    # HubSpot fills "Company Domain Name" itself: the bare domain when it found one.
    domain_name = a.company.site if a.expected_domain else ""
    return [
        a.local_id,
        a.name,
        domain_name,
        a.website,
        a.country,
        a.owner_email,
        a.stage,
        a.industry,
    ]


def write_csv(
    path: str | Path, accounts: Iterable[Account], dialect: Dialect = "salesforce"
) -> None:
    """Write the rows as a CRM export of the given dialect (UTF-8, header row)."""
    if dialect not in _COLUMNS:
        raise ValueError(f"unknown dialect {dialect!r}; known: {', '.join(_COLUMNS)}")
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS[dialect])
        writer.writerows(_row(a, dialect) for a in accounts)


if __name__ == "__main__":  # python -m bench.datagen N OUT.csv [salesforce|hubspot]
    import sys

    count, out = int(sys.argv[1]), sys.argv[2]
    kind: Dialect = "hubspot" if sys.argv[3:] == ["hubspot"] else "salesforce"
    write_csv(out, generate_accounts(count, seed=1), kind)
