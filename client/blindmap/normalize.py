"""Normalization v1 (DESIGN §3.4): the domain key and the name key of an account.

Both partners must turn the same account into the same string, byte for byte, on their own
machines, before it is tokenized. The rules are specified for other implementations in
docs/normalization.md and pinned by tests/vectors/normalize.json; changing any output, or
any data file under ``blindmap/data/``, means a new ``NORMALIZER_VERSION``.

Domain key: the registrable domain (eTLD+1, PSL with its private section) of the host a
browser would extract from a website, URL or email cell, as a lowercase A-label string.
Name key: a casefolded, accent-free, punctuation-free company name without legal forms.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from importlib import resources
from typing import Final, Literal, NamedTuple, get_args
from urllib.parse import unquote

import idna

__all__ = [
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

RULES_VERSION: Final = "n1"
"""Rules and data lists (freemail-v1, platforms-v1, legal-forms-v1); bump on any change."""
PSL_SNAPSHOT: Final = "20261022"
"""Date of the frozen Public Suffix List (its `// VERSION:` header) in blindmap/data/."""
NORMALIZER_VERSION: Final = f"{RULES_VERSION}-psl{PSL_SNAPSHOT}"

SkipReason = Literal[
    "empty",  # no value (None, blank, or placeholders without a letter or digit)
    "unparseable",  # no host could be extracted, or the host is invalid (bad IDNA, empty label)
    "ip-address",  # an IPv4 (any form a browser accepts) or bracketed IPv6 address
    "special-use",  # localhost, .local, .test, .example, .invalid, .onion, .internal, .alt, .arpa
    "single-label",  # a host without a dot ("intranet", "com")
    "unknown-tld",  # the top-level label is not in the Public Suffix List
    "public-suffix",  # the host is itself a public suffix ("co.uk", "github.io")
    "platform",  # a path-multiplexed platform (linkedin.com, sites.google.com, bit.ly, ...)
    "free-mail",  # a free-mail provider (gmail.com, yahoo.*, ...)
]
SKIP_REASONS: Final[tuple[SkipReason, ...]] = get_args(SkipReason)
"""Every reason a value can yield no key, in the order the domain rules test them."""


class Normalized(NamedTuple):
    """A key, or the reason there is none: exactly one of the two is set."""

    value: str | None
    reason: SkipReason | None


# --- data files ----------------------------------------------------------------------------

_PSL_FILE: Final = "public_suffix_list.dat"
_FREEMAIL_FILE: Final = "freemail-v1.txt"
_PLATFORMS_FILE: Final = "platforms-v1.txt"
_LEGAL_FORMS_FILE: Final = "legal-forms-v1.txt"


def _read_data(filename: str) -> str:
    return resources.files("blindmap").joinpath("data", filename).read_text("utf-8")


def _list_entries(filename: str) -> list[str]:
    """Non-empty lines of one of our lists, `#` comments removed."""
    lines = (line.split("#", 1)[0].strip() for line in _read_data(filename).splitlines())
    return [line for line in lines if line]


def _to_ascii(host: str) -> str:
    return host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")


class _PublicSuffixList:
    """The PSL as three sets; no default `*` rule, so an unlisted TLD matches nothing."""

    def __init__(self, text: str) -> None:
        rules: set[str] = set()
        wildcards: set[str] = set()  # parents of `*.parent` rules
        exceptions: set[str] = set()  # `!rule` rules, without the `!`
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("//"):
                continue
            rule = line.split()[0]
            if rule.startswith("!"):
                exceptions.add(_to_ascii(rule[1:]))
            elif rule.startswith("*."):
                wildcards.add(_to_ascii(rule[2:]))
            else:
                rules.add(_to_ascii(rule))
        self.rules = frozenset(rules)
        self.wildcards = frozenset(wildcards)
        self.exceptions = frozenset(exceptions)

    def suffix_start(self, host: str) -> int:
        """Index in `host` where its public suffix starts, or -1 when no rule matches.

        Walks from the longest suffix to the shortest, so the first match is the longest;
        an exception rule `!a.b` makes `b` the public suffix.
        """
        rules, wildcards, exceptions = self.rules, self.wildcards, self.exceptions
        start = 0
        while True:
            suffix = host[start:]
            if suffix in exceptions:
                return host.index(".", start) + 1
            if suffix in rules:
                return start
            dot = host.find(".", start)
            if dot < 0:
                return -1
            if host[dot + 1 :] in wildcards:
                return start
            start = dot + 1


class _HostList:
    """A free-mail or platform list: host suffixes, `brand.*` entries, host/path entries."""

    def __init__(self, entries: list[str]) -> None:
        hosts: set[str] = set()
        brands: set[str] = set()
        paths: dict[str, list[str]] = {}
        for entry in entries:
            host, slash, path = entry.partition("/")
            host = _to_ascii(host.lower())
            if host.endswith(".*"):
                if slash:
                    raise ValueError(f"brand entries take no path: {entry!r}")
                brands.add(host[:-2])
            elif slash:
                paths.setdefault(host, []).append("/" + path.lower().rstrip("/"))
            else:
                hosts.add(host)
        self.hosts = frozenset(hosts)
        self.brands = frozenset(brands)
        self.paths = {host: tuple(prefixes) for host, prefixes in paths.items()}

    def matches(self, host: str, registrable: str) -> bool:
        """`host` or one of its parent domains down to `registrable` is listed, or a brand."""
        suffix = host
        while True:
            if suffix in self.hosts:
                return True
            if len(suffix) <= len(registrable):
                break
            suffix = suffix[suffix.index(".") + 1 :]
        return registrable[: registrable.index(".")] in self.brands

    def matches_path(self, host: str, path: str) -> bool:
        """A host/path entry covers this URL (only called when there is a path)."""
        if not self.paths:
            return False
        path = path.lower()
        suffix = host
        while True:
            for prefix in self.paths.get(suffix, ()):
                if path == prefix or path.startswith(prefix + "/"):
                    return True
            dot = suffix.find(".")
            if dot < 0:
                return False
            suffix = suffix[dot + 1 :]


_PSL: Final = _PublicSuffixList(_read_data(_PSL_FILE))
_FREEMAIL: Final = _HostList(_list_entries(_FREEMAIL_FILE))
_PLATFORMS: Final = _HostList(_list_entries(_PLATFORMS_FILE))

# RFC 6761/6762/7686/8375/9476 and the IANA special-use registry; `.arpa` is infrastructure.
_SPECIAL_USE_TLDS: Final = frozenset(
    {"alt", "arpa", "example", "internal", "invalid", "local", "localhost", "onion", "test"}
)

# --- domain key: host extraction ------------------------------------------------------------

# Plain ASCII `[http[s]://][user@]host[.][:port][/path][?query|#fragment]` cells skip the
# general parser; tests check both paths agree. No wrapping punctuation, separators or `\`.
# The user part is possessive (`++`): its class has no `@`, so only its longest run can
# end at one, and giving back characters one by one after a cell without `@` only cost
# time (1.77 -> 1.48 µs per cell on 200k bench websites, the same matches).
_FAST_PATH: Final = re.compile(
    r"(?:[Hh][Tt][Tt][Pp][Ss]?://)?(?:[A-Za-z0-9._%+-]++@)?"
    r"([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)\.?(?::[0-9]*)?"
    r"(/[^?#\s,;|\\<>()\"'`]*)?([?#][^\s,;|\\<>()\"'`]*)?",
    re.ASCII,
)
_VALUE_SEPARATORS: Final = re.compile(r"[,;|\s]+")
_WRAPPING_LEAD: Final = "<(\"'`"
_WRAPPING_TRAIL: Final = ">)\"'`.,:;!?"
_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_SCHEME_MISSING_COLON: Final = re.compile(r"(?:https?|ftp)(?=//)", re.IGNORECASE)
# Schemes whose `:` is followed by a host even without slashes (`http:acme.com`), as in
# WHATWG's special schemes, plus `mailto:`.
_HOST_SCHEMES: Final = frozenset({"http", "https", "ftp", "ws", "wss", "file", "mailto"})
_AUTHORITY_END: Final = re.compile(r"[/?#]")
# WHATWG forbidden domain code points (ASCII): controls, space, # % / : < > ? @ [ \ ] ^ | DEL.
_FORBIDDEN_ASCII: Final = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")
_IPV4_PART: Final = re.compile(r"0x[0-9a-f]*|[0-9]+")

_EMPTY: Final = Normalized(None, "empty")
_UNPARSEABLE: Final = Normalized(None, "unparseable")
# Reasons that usually come from the words around a URL rather than from the URL itself;
# in a multi-value cell, a stronger reason from another value is reported instead.
_WEAK_REASONS: Final = frozenset({"empty", "unparseable", "single-label"})


def _strip_schemes(text: str) -> str:
    """Drop any number of scheme prefixes and the slashes after them (browser-style typos).

    `name:` is a scheme when followed by `/`, when `name` is a known host scheme, or when
    `name` has no dot and no port digits follow; so `acme.com:8080` and `localhost:3000`
    keep their host, while `http:/acme.com`, `https//acme.com` and `http://http://acme.com`
    all lose their prefixes.
    """
    while True:
        match = _SCHEME.match(text)
        if match:
            scheme, rest = match.group(1).lower(), text[match.end() :]
            if (
                rest.startswith("/")
                or scheme in _HOST_SCHEMES
                or ("." not in scheme and not rest[:1].isdigit())
            ):
                text = rest.lstrip("/")
                continue
        else:
            match = _SCHEME_MISSING_COLON.match(text)
            if match:
                text = text[match.end() :].lstrip("/")
                continue
        return text.lstrip("/")


def _split_authority(text: str) -> tuple[str, str]:
    """(host, path) of a scheme-less URL: userinfo before the last `@` and the port dropped."""
    end = _AUTHORITY_END.search(text)
    if end is None:
        authority, path = text, ""
    else:
        authority, rest = text[: end.start()], text[end.start() :]
        path = rest.split("?", 1)[0].split("#", 1)[0] if rest[0] == "/" else ""
    authority = authority[authority.rfind("@") + 1 :]
    if authority.startswith("["):
        close = authority.find("]")
        return (authority if close < 0 else authority[: close + 1]), path
    return authority.split(":", 1)[0], path


def _is_ipv4(host: str) -> bool:
    """WHATWG IPv4 parser: 1-4 decimal, octal (`0` prefix) or hex (`0x`) parts."""
    parts = host.split(".")
    if len(parts) > 4:
        return False
    numbers: list[int] = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            return False
        if part.startswith("0x"):
            numbers.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            if not part.isdigit() or "8" in part or "9" in part:
                return False
            numbers.append(int(part, 8))
        else:
            numbers.append(int(part))
    if any(n > 255 for n in numbers[:-1]):
        return False
    return numbers[-1] < 1 << (8 * (5 - len(numbers)))


def _is_ipv6(bracketed: str) -> bool:
    if not bracketed.endswith("]"):
        return False
    try:
        ipaddress.IPv6Address(bracketed[1:-1])
    except ValueError:
        return False
    return True


# One dict for the whole host walk of step 5: every PSL rule, exception and wildcard
# parent, and every free-mail and platform host, with what it is as bit flags, so each
# suffix of a host costs one lookup instead of five (`_PSL.suffix_start` and
# `_HostList.matches` stay the readable reference; tests check both agree on every entry).
_RULE: Final = 1
_EXCEPTION: Final = 2
_WILDCARD: Final = 4  # the parent of a `*.parent` rule
_PLATFORM_HOST: Final = 8
_FREEMAIL_HOST: Final = 16


def _suffix_flags() -> dict[str, int]:
    flags: dict[str, int] = {}
    for names, bit in (
        (_PSL.rules, _RULE),
        (_PSL.exceptions, _EXCEPTION),
        (_PSL.wildcards, _WILDCARD),
        (_PLATFORMS.hosts, _PLATFORM_HOST),
        (_FREEMAIL.hosts, _FREEMAIL_HOST),
    ):
        for n in names:
            flags[n] = flags.get(n, 0) | bit
    return flags


_SUFFIX_FLAGS: Final = _suffix_flags()


def _brand_flags() -> dict[str, int]:
    flags: dict[str, int] = {}
    for names, bit in ((_PLATFORMS.brands, _PLATFORM_HOST), (_FREEMAIL.brands, _FREEMAIL_HOST)):
        for n in names:
            flags[n] = flags.get(n, 0) | bit
    return flags


_BRAND_FLAGS: Final = _brand_flags()
_LISTED: Final = _PLATFORM_HOST | _FREEMAIL_HOST
_DIGITS: Final = frozenset("0123456789")
_new_normalized: Final = tuple.__new__  # Normalized(v, None) without namedtuple's Python __new__

_SPECIAL_USE: Final = Normalized(None, "special-use")
_SINGLE_LABEL: Final = Normalized(None, "single-label")
_UNKNOWN_TLD: Final = Normalized(None, "unknown-tld")
_PUBLIC_SUFFIX: Final = Normalized(None, "public-suffix")
_PLATFORM: Final = Normalized(None, "platform")
_FREE_MAIL: Final = Normalized(None, "free-mail")
_IP_ADDRESS: Final = Normalized(None, "ip-address")


def _classify_host_uncached(host: str) -> Normalized:
    """Domain key of a lowercase ASCII host without its trailing dot (steps 4 and 5)."""
    if not host or host[0] == "." or host[-1] == "." or ".." in host:
        return _UNPARSEABLE
    last = host.rfind(".")
    top = host[last + 1 :]
    # WHATWG: a host ending in a number is an IPv4 or invalid (every such top starts with
    # a digit, so the regex runs only then)
    if top[0] in _DIGITS and _IPV4_PART.fullmatch(top):
        return _IP_ADDRESS if _is_ipv4(host) else _UNPARSEABLE
    if top in _SPECIAL_USE_TLDS:
        return _SPECIAL_USE
    if last < 0:
        return _SINGLE_LABEL
    # The PSL walk of `_PSL.suffix_start`, longest suffix first, collecting on the way the
    # list flags of the suffixes down to the registrable domain (`_HostList.matches`).
    flags_of = _SUFFIX_FLAGS.get
    listed = 0  # list flags of the suffixes before the previous one
    prev_listed = 0  # list flags of the previous suffix
    prev = -1
    start = 0
    while True:
        f = flags_of(host[start:], 0) if start else flags_of(host, 0)
        if f:
            if prev >= 0 and f & _WILDCARD:  # `*.suffix` makes the previous one public
                suffix_start = prev
                break
            if f & _EXCEPTION:  # `!a.b`: `b` is the public suffix, `a.b` registrable
                listed |= prev_listed | (f & _LISTED)
                suffix_start = host.index(".", start) + 1
                break
            if f & _RULE:
                listed |= prev_listed
                suffix_start = start
                break
        dot = host.find(".", start)
        if dot < 0:
            return _UNKNOWN_TLD
        listed |= prev_listed
        prev_listed = f & _LISTED
        prev = start
        start = dot + 1
    if suffix_start == 0:
        return _PUBLIC_SUFFIX
    first = host.rfind(".", 0, suffix_start - 1) + 1
    registrable = host[first:] if first else host
    brand = _BRAND_FLAGS.get(registrable[: registrable.index(".")], 0)
    if (listed | brand) & _PLATFORM_HOST:
        return _PLATFORM
    if (listed | brand) & _FREEMAIL_HOST:
        return _FREE_MAIL
    return _new_normalized(Normalized, (registrable, None))


_classify_host: Final = functools.lru_cache(maxsize=1 << 16)(_classify_host_uncached)


def _host_to_ascii(raw: str) -> str | None:
    """Step 3: lowercase A-label host (trailing dot removed), or None when IDNA rejects it."""
    if "%" in raw:  # browsers percent-decode the host before IDNA
        raw = unquote(raw, errors="replace")
    if raw.isascii():
        # Kept as typed even where strict IDNA would object (underscores, `--`), like browsers.
        host = None if _FORBIDDEN_ASCII.search(raw) else raw.lower()
    else:
        try:
            host = idna.encode(raw, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            host = None
    if host and host.endswith("."):
        host = host[:-1]
    return host


def _classify_value(value: str) -> Normalized:
    """Domain key of one value of a cell (already trimmed, NFC, without separators)."""
    text = value.lstrip(_WRAPPING_LEAD).rstrip(_WRAPPING_TRAIL)
    if not any(ch.isalnum() for ch in text):
        return _EMPTY  # placeholders such as "-", "—", "/", "()"
    raw, path = _split_authority(_strip_schemes(text.replace("\\", "/")))
    if raw.startswith("["):
        return Normalized(None, "ip-address") if _is_ipv6(raw) else _UNPARSEABLE
    host = _host_to_ascii(raw)
    if not host:
        return _UNPARSEABLE
    result = _classify_host_uncached(host)
    if result.value is not None and path and _PLATFORMS.matches_path(host, path):
        return Normalized(None, "platform")
    return result


def _domain_uncached(value: str | None) -> Normalized:
    if value is None:
        return _EMPTY
    text = value.strip()
    if not text:
        return _EMPTY
    fast = _FAST_PATH.fullmatch(text)
    if fast is None:
        return _classify_cell(text)
    host, path, tail = fast.groups()
    host = host.lower()
    result = _classify_host_uncached(host)
    if path and result.value is not None:
        if not tail:  # as in the general parser, which strips trailing punctuation first
            path = path.rstrip(_WRAPPING_TRAIL)
        if _PLATFORMS.matches_path(host, path):
            return _PLATFORM
    return result


@functools.lru_cache(maxsize=1 << 16)
def domain_with_reason(value: str | None) -> Normalized:
    """Domain key of a website/URL/email cell, or the reason there is none.

    >>> domain_with_reason("HTTPS://www.Acme.co.uk:443/about?x=1")
    Normalized(value='acme.co.uk', reason=None)
    >>> domain_with_reason("jane@gmail.com")
    Normalized(value=None, reason='free-mail')
    """
    return _domain_uncached(value)


def domains_with_reason(values: Iterable[str | None]) -> list[Normalized]:
    """`[domain_with_reason(v) for v in values]` for a column of mostly distinct cells.

    Skips the per-value cache: in a CRM export nearly every website differs, so the cache
    only costs (about a third of the time per value, measured on 1M rows).
    """
    return list(map(_domain_uncached, values))


def _classify_cell(text: str) -> Normalized:
    """Slow path: the first value of the cell that yields a domain (DESIGN §3.4 step 1)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    first: Normalized | None = None
    strong: Normalized | None = None
    for part in _VALUE_SEPARATORS.split(text):
        if not part:
            continue
        result = _classify_value(part)
        if result.value is not None:
            return result
        first = first or result
        if strong is None and result.reason not in _WEAK_REASONS:
            strong = result
    return strong or first or _EMPTY


def domain(value: str | None) -> str | None:
    """Registrable domain (lowercase A-label) of a website/URL/email cell, or None.

    >>> domain("http:\\\\WWW.Bücher.de\\shop")
    'xn--bcher-kva.de'
    """
    return domain_with_reason(value).value


# --- name key -----------------------------------------------------------------------------

_PARENTHESISED: Final = re.compile(r"\([^()]*\)|\[[^\[\]]*\]")
_ASCII_WORDS: Final = re.compile(r"[a-z0-9]+")
# Letters that carry no combining mark under NFKD but are "accented" to a reader.
# (Applied after casefold, so only lowercase forms are needed.)
_FOLD_LETTERS: Final = str.maketrans(
    {
        "\u00f8": "o",  # ø
        "\u0111": "d",  # đ
        "\u00f0": "d",  # ð
        "\u0127": "h",  # ħ
        "\u0131": "i",  # dotless i
        "\u0142": "l",  # ł
        "\u0167": "t",  # ŧ
        "\u00fe": "th",  # þ
        "\u00e6": "ae",  # æ
        "\u0153": "oe",  # œ
    }
)


def _fold_diacritics(text: str) -> str:
    """NFKD, drop nonspacing marks (category Mn), map the letters above, recompose (NFC)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return unicodedata.normalize("NFC", stripped.translate(_FOLD_LETTERS))


def _words(text: str) -> list[str]:
    """Words of casefolded text: `&` → and, diacritics folded, punctuation as separator.

    A word is a run of letters, digits and marks (Unicode categories L*, N*, M*).
    """
    text = text.replace("&", " and ")
    if text.isascii():
        return _ASCII_WORDS.findall(text)
    text = _fold_diacritics(text)
    if text.isascii():
        return _ASCII_WORDS.findall(text)
    kept = (ch if unicodedata.category(ch)[0] in "LNM" else " " for ch in text)
    return "".join(kept).split()


def _load_legal_forms() -> tuple[frozenset[str], int]:
    forms: set[str] = set()
    longest = 1
    for entry in _list_entries(_LEGAL_FORMS_FILE):
        words = _words(unicodedata.normalize("NFKC", entry).casefold())
        forms.add("".join(words))
        longest = max(longest, len(words))
    return frozenset(forms), longest


_LEGAL_FORMS, _LEGAL_FORM_MAX_WORDS = _load_legal_forms()


def _strip_legal_forms(words: list[str]) -> list[str]:
    """Drop trailing legal forms, longest first, repeatedly, always keeping one word.

    A form matches the last k words joined without spaces, so `S.A.`, `SA` and `S A` agree.
    """
    while len(words) > 1:
        for k in range(min(_LEGAL_FORM_MAX_WORDS, len(words) - 1), 0, -1):
            if "".join(words[-k:]) in _LEGAL_FORMS:
                del words[-k:]
                break
        else:
            break
    return words


def _drop_parenthesised(text: str) -> str:
    """Remove `(...)` and `[...]` qualifiers (innermost first), unless nothing would remain."""
    stripped = text
    while True:
        shorter = _PARENTHESISED.sub(" ", stripped)
        if shorter == stripped:
            break
        stripped = shorter
    return stripped if any(ch.isalnum() for ch in stripped) else text


@functools.lru_cache(maxsize=1 << 16)
def name_with_reason(value: str | None) -> Normalized:
    """Name key of a company name, or `empty` when it has no letter or digit.

    >>> name_with_reason("Müller & Söhne GmbH & Co. KG (Deutschland)")
    Normalized(value='mullerandsohne', reason=None)
    """
    if value is None:
        return _EMPTY
    text = unicodedata.normalize("NFKC", value).casefold()
    words = _strip_legal_forms(_words(_drop_parenthesised(text)))
    key = "".join(words)
    return Normalized(key, None) if key else _EMPTY


def name(value: str | None) -> str | None:
    """Name key of a company name (`"ACME, Inc."` → `"acme"`), or None."""
    return name_with_reason(value).value
