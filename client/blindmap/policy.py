"""Sharing policies (DESIGN §5): the one model of the document and its pure evaluation.

A policy is what *I* (the owner) share with *one partner* (the viewer), per population of
mine. The SDK validates a file with :class:`Policy` before sending it; the escrow stores
the same document and asks :func:`release` what a report may show. Nothing here does I/O
except reading YAML that the caller hands over and the templates shipped in the package.

Levels, each including the ones before it: ``hidden < count < overlap < full``.
:class:`Share` compares by that order, so ``min``/``max``/``<`` mean "stricter/looser".

Schema for editors and other languages: ``python -m blindmap.policy --schema``
(committed as ``policies/schema.json``; a test keeps it current).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from blindmap.protocol import Slug

# PyYAML ships without type hints and the stubs are not a dependency: load it untyped
# rather than with a `type: ignore` that breaks the day the stubs get installed.
yaml: Any = importlib.import_module("yaml")

__all__ = [
    "MAX_FIELDS",
    "REQUIRED_LEVEL",
    "STRICTEST_TEMPLATE",
    "TEMPLATES",
    "Effective",
    "FieldName",
    "MatchKind",
    "Policy",
    "PolicyError",
    "PopulationRule",
    "ReportKind",
    "Share",
    "allows",
    "count_cell",
    "diff",
    "effective",
    "format_errors",
    "json_schema",
    "json_schema_text",
    "load_template",
    "main",
    "name_matching_enabled",
    "release",
    "template_text",
]

TEMPLATES: Final = ("counts-only", "co-sell", "open-book")
STRICTEST_TEMPLATE: Final = "counts-only"
MAX_FIELDS: Final = 32


class PolicyError(ValueError):
    """A policy file that is not a YAML/JSON mapping (syntax, duplicate key, empty file).

    Content errors are :class:`pydantic.ValidationError`; both are ``ValueError``.
    """


class Share(StrEnum):
    """How much of one population the partner sees; each level includes the ones before.

    hidden: nothing, not even that the population exists. count: its name, kind, size and
    per-partner-population overlap counts. overlap: for each matching record of the
    partner, that it is in this population, plus the sealed fields listed. full: also the
    non-matching records with their sealed fields (white space for the partner).
    """

    hidden = "hidden"
    # The member name the design uses shadows str.count; nothing here calls that method.
    count = "count"  # type: ignore[assignment]
    overlap = "overlap"
    full = "full"

    @property
    def rank(self) -> int:
        """0 for hidden … 3 for full."""
        return _SHARE_RANK[self]

    # A StrEnum would otherwise compare alphabetically ("count" < "full" < "hidden"),
    # which silently inverts min()/max(); compare by level instead.
    def __lt__(self, other: object) -> bool:
        r = _other_rank(other)
        return NotImplemented if r is None else self.rank < r

    def __le__(self, other: object) -> bool:
        r = _other_rank(other)
        return NotImplemented if r is None else self.rank <= r

    def __gt__(self, other: object) -> bool:
        r = _other_rank(other)
        return NotImplemented if r is None else self.rank > r

    def __ge__(self, other: object) -> bool:
        r = _other_rank(other)
        return NotImplemented if r is None else self.rank >= r


_SHARE_RANK: Final = {s: i for i, s in enumerate(Share)}


def _other_rank(other: object) -> int | None:
    # Plain strings are coerced (an unknown one raises ValueError) so that
    # `Share.count < "overlap"` never falls back to str's alphabetical order.
    if isinstance(other, str):
        return _SHARE_RANK[Share(other)]
    return None


FieldName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$"),
    Field(description="Name of a partner-sealed field, e.g. name, domain, owner_email, stage"),
]
MatchKind = Literal["domain", "name"]


class ReportKind(StrEnum):
    """Reports the escrow releases (DESIGN §6); `ecosystem` is client-side only."""

    summary = "summary"
    overlaps = "overlaps"
    white_space = "white-space"
    lookup = "lookup"


REQUIRED_LEVEL: Final[dict[ReportKind, Share]] = {
    ReportKind.summary: Share.count,
    ReportKind.overlaps: Share.overlap,
    ReportKind.lookup: Share.overlap,
    ReportKind.white_space: Share.full,
}
"""The lowest level of the owner's population at which a report shows anything of it."""


def _duplicates(items: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for item in items:
        if item in seen and item not in dup:
            dup.append(item)
        seen.add(item)
    return dup


class PopulationRule(BaseModel):
    """What the partner sees of one of my populations."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            # Mirrors the validator below so editors flag it too.
            "if": {"properties": {"share": {"enum": ["hidden", "count"]}}},
            "then": {"properties": {"fields": {"maxItems": 0}}},
        },
    )

    share: Share = Field(description="Level released for this population")
    fields: list[FieldName] = Field(
        default_factory=list,
        max_length=MAX_FIELDS,
        description="Partner-sealed fields released with each record (overlap and full only)",
        json_schema_extra={"uniqueItems": True},
    )

    @model_validator(mode="after")
    def _check(self) -> PopulationRule:
        dup = _duplicates(self.fields)
        if dup:
            raise ValueError(f"fields listed twice: {', '.join(dup)}")
        if self.fields and self.share < Share.overlap:
            raise ValueError(
                f"fields {self.fields} would never be released at share {self.share.value!r}: "
                "sealed fields reach the partner only at 'overlap' or 'full'; "
                "remove them or raise the share"
            )
        return self


def _default_match_on() -> list[MatchKind]:
    return ["domain"]


class Policy(BaseModel):
    """What I share with one partner, per population of mine (DESIGN §5).

    Populations not listed get `default` (with no fields). Keys of `populations` are MY
    population slugs.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="Blindmap policy",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    version: Literal[1] = Field(1, description="Document format version")
    default: Share = Field(Share.hidden, description="Level for populations not listed")
    populations: dict[Slug, PopulationRule] = Field(
        default_factory=dict,
        max_length=1000,
        description="Rules per population of mine, by slug",
        json_schema_extra={"additionalProperties": False},
    )
    min_count: int = Field(
        5,
        strict=True,
        ge=1,
        le=1_000_000_000,
        description="Counts below this are shown as '<min_count' (1 shows every count exactly)",
    )
    min_population: int = Field(
        25,
        strict=True,
        ge=0,
        le=1_000_000_000,
        description="No counts against a partner population with fewer records than this",
    )
    reciprocal: bool = Field(
        False,
        strict=True,
        description="The partner gets at most the level it grants me for the pair",
    )
    match_on: list[MatchKind] = Field(
        default_factory=_default_match_on,
        min_length=1,
        description="Token kinds to match on; 'domain' is required, 'name' is used only "
        "when both partners list it",
        json_schema_extra={"uniqueItems": True, "contains": {"const": "domain"}},
    )

    @model_validator(mode="after")
    def _check(self) -> Policy:
        dup = _duplicates(self.match_on)
        if dup:
            raise ValueError(f"match_on lists {', '.join(dup)} twice")
        if "domain" not in self.match_on:
            raise ValueError("match_on must contain 'domain' (the primary token kind)")
        return self

    # --- lookups -------------------------------------------------------------------

    def rule_for(self, population: str) -> PopulationRule:
        """The listed rule for `population`, else `default` with no fields."""
        rule = self.populations.get(population)
        return rule if rule is not None else PopulationRule(share=self.default)

    def level_for(self, population: str) -> Share:
        """The level this policy grants for one of the owner's populations."""
        return self.rule_for(population).share

    def fields_for(self, population: str) -> tuple[str, ...]:
        """Fields released for `population`: empty below `overlap`."""
        rule = self.rule_for(population)
        return tuple(rule.fields) if rule.share >= Share.overlap else ()

    def max_level(self) -> Share:
        """The loosest level granted to any population, `default` included."""
        return max((self.default, *(r.share for r in self.populations.values())))

    def warnings(self) -> list[str]:
        """Legal but probably unintended settings, worded for the policy author."""
        out: list[str] = []
        if self.default > Share.hidden:
            out.append(
                f"default is {self.default.value!r}: every population you have not listed, "
                "including ones you create later, is named and sized to this partner"
                + (" (with no fields)" if self.default >= Share.overlap else "")
                + "; prefer 'default: hidden' and list populations explicitly"
            )
        for slug, rule in self.populations.items():
            if rule.share == Share.full and not {"name", "domain"} & set(rule.fields):
                out.append(
                    f"population {slug!r} is shared 'full' without 'name' or 'domain' in "
                    "fields: the partner gets white-space records it cannot identify"
                )
        if self.min_count == 1:
            out.append(
                "min_count is 1: every count is exact, so small differences between "
                "reports can single out accounts"
            )
        return out

    # --- YAML ----------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> Policy:
        """Parse and validate a policy.

        A `str` is the YAML (or JSON) text itself; a path (``pathlib.Path``) is read as
        UTF-8. Raises :class:`PolicyError` for a malformed document and
        :class:`pydantic.ValidationError` for invalid content.
        """
        if isinstance(source, str):
            text, origin = source, "<policy>"
        else:
            path = Path(source)
            text, origin = path.read_text(encoding="utf-8"), str(path)
        return cls.model_validate(_parse_yaml(text, origin))

    def to_yaml(self) -> str:
        """The document as YAML, keys in the order of DESIGN §5; round-trips exactly."""
        data = self.model_dump(mode="json")
        # One line per rule, as in DESIGN §5 and the templates; empty fields left out.
        data["populations"] = {
            slug: _FlowMap({k: v for k, v in rule.items() if v != []})
            for slug, rule in data["populations"].items()
        }
        text: str = yaml.dump(
            data,
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=None,
            allow_unicode=True,
            width=100,
        )
        return text


def _parse_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{origin}: not valid YAML: {exc}") from None
    if data is None:
        raise PolicyError(f"{origin}: the policy document is empty")
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: a policy must be a mapping, not {type(data).__name__}")
    return data


def _construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict[str, Any]:
    # PyYAML keeps the last of two equal keys without a word; in a policy that silently
    # drops a rule. Keys are taken as written, so a population called `on`, `no` or
    # `2024` stays a string instead of becoming a bool or int (YAML 1.1).
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, f"expected a mapping, found {node.id}", node.start_mark
        )
    loader.flatten_mapping(node)
    out: dict[str, Any] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                "keys must be plain names",
                key_node.start_mark,
            )
        key = key_node.value
        if key in out:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"duplicate key {key!r}",
                key_node.start_mark,
            )
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


# Built with type() because PyYAML is untyped here (subclassing Any fails mypy --strict).
_StrictLoader: Any = type("_StrictLoader", (yaml.SafeLoader,), {})
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_StrictLoader.construct_mapping = _construct_mapping


class _FlowMap(dict[str, Any]):
    """A mapping that YAML writes on one line."""


_Dumper: Any = type("_Dumper", (yaml.SafeDumper,), {})
_Dumper.add_representer(
    _FlowMap,
    lambda dumper, data: dumper.represent_mapping(
        "tag:yaml.org,2002:map", data.items(), flow_style=True
    ),
)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per error, ``path: message``, naming the closest key for an unknown one.

    The validation error itself keeps each unknown key in its `loc` (the API reports it
    as the field); this is for people reading a policy file.
    """
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"] if part != "[key]"]
        where = ".".join(loc) or "policy"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden" and loc:
            model: type[BaseModel] = PopulationRule if len(loc) == 3 else Policy
            close = difflib.get_close_matches(loc[-1], sorted(model.model_fields), n=1)
            msg = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
        elif err["type"] == "string_pattern_mismatch":
            msg = (
                f"{err['input']!r} is not a population slug (lowercase letters, digits, '-')"
                if "[key]" in err["loc"]
                else f"{err['input']!r} is not a field name (lowercase letters, digits, '_')"
            )
        lines.append(f"{where}: {msg}")
    return lines


# --- templates ---------------------------------------------------------------------


def template_text(name: str) -> str:
    """The YAML of a template shipped in the package (comments included)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown policy template {name!r}; choose one of {', '.join(TEMPLATES)}")
    # Read from the installed package, never the repository: the SDK ships on its own.
    return (
        resources.files("blindmap")
        .joinpath("data", "policies", f"{name}.yaml")
        .read_text(encoding="utf-8")
    )


def load_template(name: str) -> Policy:
    """A template as a :class:`Policy`; new partnerships start from `STRICTEST_TEMPLATE`."""
    return Policy.from_yaml(template_text(name))


# --- schema ------------------------------------------------------------------------


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy document, generated from :class:`Policy`."""
    return Policy.model_json_schema()


def json_schema_text() -> str:
    """`policies/schema.json` exactly: 2-space indent, sorted keys, trailing newline."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# --- evaluation (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Effective:
    """What the viewer may see of one owner population, for one pair of populations.

    `policy_version` / `viewer_policy_version` are the escrow's stored version numbers of
    the two policies (not the document's `version`), passed through so every report can
    name the versions that produced it; the viewer's is set only when reciprocity
    consulted it.
    """

    level: Share
    fields: tuple[str, ...]
    min_count: int
    min_population: int
    policy_version: int | None = None
    viewer_policy_version: int | None = None
    owner_level: Share = Share.hidden
    """The owner's level before reciprocity."""
    reciprocal_cap: Share | None = None
    """The cap reciprocity applied (None when the owner's policy is not reciprocal)."""

    @property
    def capped(self) -> bool:
        """True when reciprocity lowered the owner's level."""
        return self.level < self.owner_level


def effective(
    owner: Policy,
    owner_population: str,
    *,
    viewer: Policy | None = None,
    viewer_population: str | None = None,
    policy_version: int | None = None,
    viewer_policy_version: int | None = None,
) -> Effective:
    """The level and fields the viewer gets for the owner's `owner_population`.

    The owner's policy decides. With ``reciprocal: true`` the level is capped by what the
    viewer's policy (toward the owner) grants:

    - for a population pair (a summary cell, an overlap row, a lookup hit) the cap is the
      viewer's level for `viewer_population`;
    - with no viewer population in play (white space, the row naming an owner
      population) the cap is the viewer's loosest level over all its populations,
      `default` included - the most the viewer grants the owner anywhere;
    - a viewer without a policy grants nothing, so the cap is `hidden` (fail closed).

    Fields are the owner's fields for the population, and only at `overlap` or above;
    thresholds (`min_count`, `min_population`) are always the owner's.
    """
    owner_level = owner.level_for(owner_population)
    level = owner_level
    cap: Share | None = None
    used_viewer = False
    if owner.reciprocal:
        if viewer is None:
            cap = Share.hidden
        elif viewer_population is None:
            cap, used_viewer = viewer.max_level(), True
        else:
            cap, used_viewer = viewer.level_for(viewer_population), True
        level = min(owner_level, cap)
    fields = owner.fields_for(owner_population) if level >= Share.overlap else ()
    return Effective(
        level=level,
        fields=fields,
        min_count=owner.min_count,
        min_population=owner.min_population,
        policy_version=policy_version,
        viewer_policy_version=viewer_policy_version if used_viewer else None,
        owner_level=owner_level,
        reciprocal_cap=cap,
    )


def allows(eff: Effective, report: ReportKind) -> bool:
    """Whether `report` shows anything of the population at `eff.level`.

    summary needs `count`; overlaps and lookup need `overlap`; white-space needs `full`.
    """
    return eff.level >= REQUIRED_LEVEL[ReportKind(report)]


def release(
    owner: Policy,
    owner_population: str,
    report: ReportKind,
    *,
    viewer: Policy | None = None,
    viewer_population: str | None = None,
    policy_version: int | None = None,
    viewer_policy_version: int | None = None,
) -> Effective | None:
    """:func:`effective` if `report` may show the population, else None (show nothing).

    None means the report must not mention the owner population at all for this pair.
    """
    eff = effective(
        owner,
        owner_population,
        viewer=viewer,
        viewer_population=viewer_population,
        policy_version=policy_version,
        viewer_policy_version=viewer_policy_version,
    )
    return eff if allows(eff, report) else None


def count_cell(eff: Effective, matched: int, partner_population_size: int) -> int | str | None:
    """One summary cell as the viewer may see it.

    None when the partner's population has fewer than `min_population` records (no
    count at all: a tiny list is a probe), ``"<min_count"`` (e.g. ``"<5"``) when
    `matched` is below `min_count` (zero included), else `matched`. Call it only for an
    `eff` that :func:`allows` the summary.
    """
    if matched < 0 or partner_population_size < 0:
        raise ValueError("counts cannot be negative")
    if partner_population_size < eff.min_population:
        return None
    if matched < eff.min_count:
        return f"<{eff.min_count}"
    return matched


def name_matching_enabled(a: Policy, b: Policy) -> bool:
    """Name tokens are matched only when both partners' policies list `name`."""
    return "name" in a.match_on and "name" in b.match_on


def diff(old: Policy, new: Policy) -> list[str]:
    """Human-readable changes from `old` to `new`, one line each (for `policy diff`)."""
    out: list[str] = []
    if old.default != new.default:
        out.append(f"default: {old.default.value} -> {new.default.value}")
    for slug in sorted(set(old.populations) | set(new.populations)):
        before, after = old.rule_for(slug), new.rule_for(slug)
        if before.share != after.share:
            out.append(f"populations.{slug}: {before.share.value} -> {after.share.value}")
        added = [f for f in after.fields if f not in before.fields]
        removed = [f for f in before.fields if f not in after.fields]
        if added or removed:
            change = " ".join([*(f"+{f}" for f in added), *(f"-{f}" for f in removed)])
            out.append(f"populations.{slug}.fields: {change}")
    for key in ("min_count", "min_population", "reciprocal", "match_on"):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            out.append(f"{key}: {_show(a)} -> {_show(b)}")
    return out


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


# --- command line ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m blindmap.policy --schema | --template NAME | FILE...` (validate files)."""
    parser = argparse.ArgumentParser(
        prog="python -m blindmap.policy",
        description="Print the policy JSON Schema or a template, or validate policy files.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--schema", action="store_true", help="print the JSON Schema")
    group.add_argument("--template", choices=TEMPLATES, help="print a template")
    group.add_argument("files", nargs="*", default=[], type=Path, help="policy files to check")
    args = parser.parse_args(argv)
    if args.schema:
        sys.stdout.write(json_schema_text())
        return 0
    if args.template:
        sys.stdout.write(template_text(args.template))
        return 0
    status = 0
    for path in args.files:
        try:
            policy = Policy.from_yaml(path)
        except ValidationError as exc:
            for line in format_errors(exc):
                print(f"{path}: {line}", file=sys.stderr)
            status = 1
            continue
        except (OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: ok")
        for warning in policy.warnings():
            print(f"{path}: warning: {warning}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
