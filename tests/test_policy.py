"""The policy model (DESIGN §5), its templates and schema, and its pure evaluation."""

from __future__ import annotations

import inspect
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from blindmap import policy as pol
from blindmap.policy import (
    Effective,
    Policy,
    PolicyError,
    PopulationRule,
    ReportKind,
    Share,
    allows,
    count_cell,
    effective,
    release,
)

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies"
PACKAGED = ROOT / "client" / "blindmap" / "data" / "policies"
LEVELS = list(Share)


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(pol.format_errors(exc.value))


# ------------------------------------------------------------------------ Share order


def test_share_orders_by_level_not_alphabet():
    assert [s.value for s in sorted(Share)] == ["hidden", "count", "overlap", "full"]
    assert Share.hidden < Share.count < Share.overlap < Share.full
    assert [s.rank for s in Share] == [0, 1, 2, 3]
    assert max(Share.count, Share.full, Share.hidden) is Share.full
    assert min(Share.full, Share.count) is Share.count
    # plain strings compare by level too, never alphabetically ("full" < "hidden")
    assert Share.hidden < "full" and Share.full > "hidden"
    assert Share.count == "count" and Share.count <= "count"
    with pytest.raises(ValueError):
        _ = Share.count < "everything"


# ------------------------------------------------------------------------ model


def test_defaults_are_the_strictest():
    p = Policy()
    assert p.default is Share.hidden and p.populations == {}
    assert (p.min_count, p.min_population, p.reciprocal, p.match_on) == (5, 25, False, ["domain"])
    assert p.level_for("customers") is Share.hidden and p.fields_for("customers") == ()
    assert p.warnings() == []


def test_design_example_validates():
    p = Policy.from_yaml(
        """
version: 1
default: hidden                     # populations not listed
populations:
  customers:     {share: overlap, fields: [name, owner_email, stage]}
  opportunities: {share: count}
min_count: 5
min_population: 25
reciprocal: false
match_on: [domain]
"""
    )
    assert p.level_for("customers") is Share.overlap
    assert p.fields_for("customers") == ("name", "owner_email", "stage")
    assert p.level_for("opportunities") is Share.count and p.fields_for("opportunities") == ()
    assert p.level_for("prospects") is Share.hidden
    assert p.max_level() is Share.overlap


@pytest.mark.parametrize(
    ("doc", "where", "needle"),
    [
        ({"sharing": "all"}, ("sharing",), "unknown key"),
        ({"defualt": "count"}, ("defualt",), "did you mean 'default'"),
        (
            {"populations": {"customers": {"share": "count", "feilds": []}}},
            ("populations", "customers", "feilds"),
            "did you mean 'fields'",
        ),
        ({"default": "everything"}, ("default",), "hidden"),
        ({"version": 2}, ("version",), "1"),
        ({"min_count": 0}, ("min_count",), "greater than or equal to 1"),
        ({"min_count": "5"}, ("min_count",), "integer"),
        ({"min_count": 2.5}, ("min_count",), "integer"),
        ({"min_population": -1}, ("min_population",), "greater than or equal to 0"),
        ({"reciprocal": 1}, ("reciprocal",), "boolean"),
        ({"reciprocal": "yes"}, ("reciprocal",), "boolean"),
        ({"match_on": ["name"]}, (), "must contain 'domain'"),
        ({"match_on": []}, ("match_on",), "at least 1"),
        ({"match_on": ["domain", "domain"]}, (), "domain twice"),
        ({"match_on": ["domain", "email"]}, ("match_on", 1), "'domain' or 'name'"),
        ({"populations": {"Customers": {"share": "count"}}}, None, "not a population slug"),
        ({"populations": {"-x": {"share": "count"}}}, None, "not a population slug"),
        ({"populations": {"x" * 64: {"share": "count"}}}, None, "63"),
        (
            {"populations": {"c": {"share": "count", "fields": ["name"]}}},
            ("populations", "c"),
            "would never be released at share 'count'",
        ),
        (
            {"populations": {"c": {"share": "hidden", "fields": ["stage"]}}},
            ("populations", "c"),
            "would never be released at share 'hidden'",
        ),
        (
            {"populations": {"c": {"share": "full", "fields": ["name", "stage", "name"]}}},
            ("populations", "c"),
            "fields listed twice: name",
        ),
        (
            {"populations": {"c": {"share": "full", "fields": ["Owner Email"]}}},
            ("populations", "c", "fields", 0),
            "not a field name",
        ),
        (
            {"populations": {"c": {"share": "full", "fields": [f"f{i}" for i in range(33)]}}},
            ("populations", "c", "fields"),
            "at most 32",
        ),
        ({"populations": {"c": {"fields": ["name"]}}}, ("populations", "c", "share"), "required"),
        ({"populations": {"c": "count"}}, ("populations", "c"), "PopulationRule"),
    ],
)
def test_invalid_documents_name_the_problem(doc, where, needle):
    with pytest.raises(ValidationError) as exc:
        Policy.model_validate(doc)
    if where is not None:
        # the API turns `loc` into the offending field: keep it structured
        assert exc.value.errors()[0]["loc"] == where
    assert needle in _errors(exc) or needle in str(exc.value)


def test_fields_allowed_at_overlap_and_full_and_order_kept():
    for share in ("overlap", "full"):
        rule = PopulationRule.model_validate({"share": share, "fields": ["stage", "name"]})
        assert rule.fields == ["stage", "name"]


def test_policy_is_immutable():
    p = Policy()
    with pytest.raises(ValidationError):
        p.default = Share.full  # type: ignore[misc]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"populations": {"c": {"share": "full", "fields": ["stage"]}}}, "'c' is shared 'full'"),
        ({"populations": {"c": {"share": "full"}}}, "without 'name' or 'domain'"),
        ({"default": "count"}, "including ones you create later"),
        ({"default": "full"}, "(with no fields)"),
        ({"min_count": 1}, "min_count is 1"),
    ],
)
def test_warnings(doc, needle):
    warnings = Policy.model_validate(doc).warnings()
    assert len(warnings) == 1 and needle in warnings[0], warnings


@pytest.mark.parametrize("ident", ["name", "domain"])
def test_full_with_an_identifier_does_not_warn(ident):
    p = Policy.model_validate({"populations": {"c": {"share": "full", "fields": [ident]}}})
    assert p.warnings() == []


# ------------------------------------------------------------------------ YAML


def test_yaml_round_trip_and_json_compatibility():
    p = pol.load_template("open-book")
    assert Policy.from_yaml(p.to_yaml()) == p
    # JSON is YAML: the API's JSON document parses the same way
    assert Policy.from_yaml(json.dumps(p.model_dump(mode="json"))) == p
    assert "customers: {share: full, fields: [name, domain, owner_email]}" in p.to_yaml()
    assert "fields: []" not in pol.load_template("counts-only").to_yaml()


def test_from_yaml_reads_a_path(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("default: count\n", encoding="utf-8")
    assert Policy.from_yaml(f).default is Share.count
    with pytest.raises(FileNotFoundError):
        Policy.from_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- default: hidden\n", "must be a mapping"),
        ("default: [\n", "not valid YAML"),
        ("populations:\n  c: {share: count}\n  c: {share: full}\n", "duplicate key 'c'"),
        ("default: hidden\ndefault: full\n", "duplicate key 'default'"),
        ("populations:\n  ? [a, b]\n  : {share: count}\n", "keys must be plain names"),
    ],
)
def test_malformed_yaml(text, needle):
    with pytest.raises(PolicyError) as exc:
        Policy.from_yaml(text)
    assert needle in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_yaml_keys_stay_strings():
    # YAML 1.1 would make `on` a bool and `2024` an int; as slugs they are names
    p = Policy.from_yaml("populations:\n  on: {share: count}\n  2024: {share: count}\n")
    assert set(p.populations) == {"on", "2024"}


def test_yaml_tags_beyond_safe_are_refused():
    with pytest.raises(PolicyError):
        Policy.from_yaml("default: !!python/object/apply:os.system ['true']\n")


# ------------------------------------------------------------------------ templates


def test_templates_are_the_three_and_strictest_is_counts_only():
    assert pol.TEMPLATES == ("counts-only", "co-sell", "open-book")
    assert pol.STRICTEST_TEMPLATE == "counts-only"
    assert sorted(p.stem for p in POLICIES.glob("*.yaml")) == sorted(pol.TEMPLATES)
    assert sorted(p.stem for p in PACKAGED.glob("*.yaml")) == sorted(pol.TEMPLATES)


@pytest.mark.parametrize("name", pol.TEMPLATES)
def test_template_copies_in_repo_and_package_are_identical(name):
    repo = (POLICIES / f"{name}.yaml").read_bytes()
    assert repo == (PACKAGED / f"{name}.yaml").read_bytes(), (
        f"policies/{name}.yaml and client/blindmap/data/policies/{name}.yaml differ: "
        f"cp policies/{name}.yaml client/blindmap/data/policies/"
    )
    assert pol.template_text(name).encode("utf-8") == repo


@pytest.mark.parametrize("name", pol.TEMPLATES)
def test_templates_validate_without_warnings(name):
    p = pol.load_template(name)
    assert p.warnings() == []
    assert p.default is Share.hidden  # unlisted and future populations stay hidden
    assert Policy.from_yaml(POLICIES / f"{name}.yaml") == p


def test_templates_grow_strictly_looser():
    strict, co, open_ = (pol.load_template(n) for n in pol.TEMPLATES)
    for slug in ("customers", "opportunities", "prospects", "partners"):
        assert strict.level_for(slug) <= co.level_for(slug) <= open_.level_for(slug)
        assert set(strict.fields_for(slug)) <= set(co.fields_for(slug)) | {"domain"}
    assert strict.max_level() is Share.count and not any(strict.fields_for(s) for s in "abc")
    assert strict.reciprocal and co.reciprocal


def test_unknown_template():
    with pytest.raises(ValueError, match="counts-only"):
        pol.load_template("everything")


# ------------------------------------------------------------------------ schema


def test_schema_json_is_current():
    committed = (POLICIES / "schema.json").read_text(encoding="utf-8")
    assert committed == pol.json_schema_text(), (
        "policies/schema.json is stale; refresh it with: "
        ".venv/bin/python -m blindmap.policy --schema > policies/schema.json"
    )


def test_schema_text_format_and_main(capsys):
    text = pol.json_schema_text()
    assert text.endswith("}\n") and json.loads(text) == pol.json_schema()
    assert json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text
    assert pol.main(["--schema"]) == 0
    assert capsys.readouterr().out == text


def test_schema_mirrors_the_model_rules():
    # no jsonschema validator in the dependencies: check the rules editors rely on
    schema = pol.json_schema()
    rule = schema["$defs"]["PopulationRule"]
    assert schema["additionalProperties"] is False and rule["additionalProperties"] is False
    assert schema["properties"]["populations"]["additionalProperties"] is False
    assert rule["then"] == {"properties": {"fields": {"maxItems": 0}}}
    assert rule["if"]["properties"]["share"]["enum"] == ["hidden", "count"]
    assert rule["properties"]["fields"]["uniqueItems"] is True
    assert schema["properties"]["match_on"]["contains"] == {"const": "domain"}
    assert schema["$defs"]["Share"]["enum"] == ["hidden", "count", "overlap", "full"]
    assert schema["title"] == "Blindmap policy" and "$schema" in schema


def test_main_validates_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("populations:\n  c: {share: count, feilds: [a]}\n", encoding="utf-8")
    warn = tmp_path / "warn.yaml"
    warn.write_text("default: count\n", encoding="utf-8")
    assert pol.main([str(POLICIES / "co-sell.yaml"), str(warn)]) == 0
    out = capsys.readouterr()
    assert "co-sell.yaml: ok" in out.out and "warning: default is 'count'" in out.err
    assert pol.main([str(bad)]) == 1
    assert "populations.c.feilds: unknown key (did you mean 'fields'?)" in capsys.readouterr().err
    assert pol.main(["--template", "co-sell"]) == 0
    assert capsys.readouterr().out == pol.template_text("co-sell")


# ------------------------------------------------------------------------ diff


def test_diff():
    old = pol.load_template("counts-only")
    new = old.model_copy(
        update={
            "populations": {
                **old.populations,
                "customers": PopulationRule(share=Share.overlap, fields=["name"]),
            },
            "min_count": 3,
            "match_on": ["domain", "name"],
        }
    )
    assert pol.diff(old, new) == [
        "populations.customers: count -> overlap",
        "populations.customers.fields: +name",
        "min_count: 5 -> 3",
        "match_on: [domain] -> [domain, name]",
    ]
    assert pol.diff(old, old) == []


# ------------------------------------------------------------------------ evaluation

REQUIRED = {
    ReportKind.summary: Share.count,
    ReportKind.overlaps: Share.overlap,
    ReportKind.lookup: Share.overlap,
    ReportKind.white_space: Share.full,
}


def _owner(level: Share, *, reciprocal: bool) -> Policy:
    fields = ["name", "owner_email"] if level >= Share.overlap else []
    return Policy.model_validate(
        {
            "populations": {"customers": {"share": level.value, "fields": fields}},
            "reciprocal": reciprocal,
            "min_count": 3,
            "min_population": 10,
        }
    )


def _viewer(level_for_y: Share, *, other: Share = Share.hidden) -> Policy:
    # the viewer grants `level_for_y` for its population "accounts" and `other` to the rest
    return Policy.model_validate(
        {"default": other.value, "populations": {"accounts": {"share": level_for_y.value}}}
    )


# (owner level, reciprocal, viewer's level for Y, report) -> expected effective level
CASES = [
    (own, rec, vy, report)
    for own, rec, vy, report in itertools.product(LEVELS, (False, True), LEVELS, list(ReportKind))
]


@pytest.mark.parametrize(("own", "reciprocal", "viewer_y", "report"), CASES)
def test_every_level_reciprocity_and_report(own, reciprocal, viewer_y, report):
    owner, viewer = _owner(own, reciprocal=reciprocal), _viewer(viewer_y)
    expected = min(own, viewer_y) if reciprocal else own

    eff = effective(
        owner,
        "customers",
        viewer=viewer,
        viewer_population="accounts",
        policy_version=4,
        viewer_policy_version=9,
    )
    assert eff.level is expected
    assert eff.owner_level is own
    assert eff.capped == (expected < own)
    assert eff.reciprocal_cap == (viewer_y if reciprocal else None)
    assert eff.fields == (("name", "owner_email") if expected >= Share.overlap else ())
    assert (eff.min_count, eff.min_population) == (3, 10)  # always the owner's
    assert eff.policy_version == 4
    assert eff.viewer_policy_version == (9 if reciprocal else None)

    shown = expected >= REQUIRED[report]
    assert allows(eff, report) is shown
    got = release(owner, "customers", report, viewer=viewer, viewer_population="accounts")
    assert (got is not None) is shown
    if got is not None:
        assert got.level is expected and got.fields == eff.fields


@pytest.mark.parametrize(
    ("own", "reciprocal", "viewer_max"),
    list(itertools.product(LEVELS, (False, True), LEVELS)),
)
def test_without_viewer_population_the_cap_is_the_viewers_loosest_level(
    own, reciprocal, viewer_max
):
    owner = _owner(own, reciprocal=reciprocal)
    # the loosest grant is on a listed population, the default stays hidden
    viewer = _viewer(viewer_max)
    eff = effective(owner, "customers", viewer=viewer)
    assert eff.level is (min(own, viewer_max) if reciprocal else own)
    # the default counts as a grant as well
    viewer = _viewer(Share.hidden, other=viewer_max)
    assert effective(owner, "customers", viewer=viewer).level is eff.level
    ws = release(owner, "customers", ReportKind.white_space, viewer=viewer)
    assert (ws is not None) is (eff.level is Share.full)


@pytest.mark.parametrize("own", LEVELS)
def test_reciprocal_without_a_viewer_policy_fails_closed(own):
    assert effective(_owner(own, reciprocal=True), "customers").level is Share.hidden
    assert effective(_owner(own, reciprocal=False), "customers").level is own


def test_unlisted_viewer_population_uses_the_viewers_default():
    owner = _owner(Share.full, reciprocal=True)
    viewer = _viewer(Share.full, other=Share.count)
    assert (
        effective(owner, "customers", viewer=viewer, viewer_population="pipeline").level
        is Share.count
    )


def test_unlisted_owner_population_uses_the_default():
    owner = Policy.model_validate({"default": "count"})
    eff = effective(owner, "anything")
    assert eff.level is Share.count and eff.fields == ()
    assert release(owner, "anything", ReportKind.summary) is not None
    assert release(owner, "anything", ReportKind.overlaps) is None


def test_report_kind_values_and_string_input():
    assert [k.value for k in ReportKind] == ["summary", "overlaps", "white-space", "lookup"]
    eff = Effective(level=Share.full, fields=(), min_count=5, min_population=25)
    assert allows(eff, "white-space")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        allows(eff, "ecosystem")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("matched", "size", "expected"),
    [
        (0, 100, "<3"),
        (2, 100, "<3"),
        (3, 100, 3),
        (50, 100, 50),
        (9, 9, None),  # partner population below min_population: no count at all
        (0, 0, None),
        (3, 10, 3),
    ],
)
def test_count_cell(matched, size, expected):
    eff = effective(_owner(Share.count, reciprocal=False), "customers")
    assert count_cell(eff, matched, size) == expected


def test_count_cell_rejects_negative():
    eff = effective(Policy(), "x")
    with pytest.raises(ValueError):
        count_cell(eff, -1, 10)


def test_name_matching_needs_both():
    dom = Policy()
    both = Policy(match_on=["domain", "name"])
    assert pol.name_matching_enabled(both, both)
    assert not pol.name_matching_enabled(both, dom)
    assert not pol.name_matching_enabled(dom, both)
    assert not pol.name_matching_enabled(dom, dom)


def test_templates_against_each_other():
    strict, co, open_ = (pol.load_template(n) for n in pol.TEMPLATES)
    # open-book is not reciprocal: a counts-only partner still gets white space
    eff = release(
        open_, "customers", ReportKind.white_space, viewer=strict, viewer_population="customers"
    )
    assert eff is not None and eff.fields == ("name", "domain", "owner_email")
    # co-sell is reciprocal: toward a counts-only partner it releases counts only
    assert (
        release(co, "customers", ReportKind.overlaps, viewer=strict, viewer_population="customers")
        is None
    )
    eff = release(
        co, "customers", ReportKind.overlaps, viewer=co, viewer_population="opportunities"
    )
    assert eff is not None and eff.fields == ("name", "owner_email")
    # ...and nothing against a partner population the partner hides from me
    assert (
        release(co, "customers", ReportKind.summary, viewer=co, viewer_population="partners")
        is None
    )
    # a new partnership: both on counts-only, summary only, no fields anywhere
    for report in ReportKind:
        got = release(strict, "customers", report, viewer=strict, viewer_population="prospects")
        assert (got is not None) is (report is ReportKind.summary)
    assert not pol.name_matching_enabled(open_, co) and pol.name_matching_enabled(open_, open_)


# ------------------------------------------------------------------------ properties

slugs = st.sampled_from(["customers", "opportunities", "prospects", "partners", "x-1"])
field_names = st.sampled_from(["name", "domain", "owner_email", "stage", "amount"])


@st.composite
def rules(draw):
    share = draw(st.sampled_from(LEVELS))
    fields = draw(st.lists(field_names, unique=True, max_size=5)) if share >= Share.overlap else []
    return PopulationRule(share=share, fields=fields)


policies = st.builds(
    Policy,
    default=st.sampled_from(LEVELS),
    populations=st.dictionaries(slugs, rules(), max_size=4),
    min_count=st.integers(1, 50),
    min_population=st.integers(0, 500),
    reciprocal=st.booleans(),
    match_on=st.sampled_from([["domain"], ["domain", "name"], ["name", "domain"]]),
)
viewer_pops = st.one_of(st.none(), slugs)


@settings(max_examples=300, deadline=None)
@given(owner=policies, viewer=st.one_of(st.none(), policies), x=slugs, y=viewer_pops)
def test_effective_properties(owner, viewer, x, y):
    eff = effective(owner, x, viewer=viewer, viewer_population=y)
    own = owner.level_for(x)
    assert eff.level <= own  # never more than the owner grants
    assert eff.owner_level is own
    assert set(eff.fields) <= set(owner.fields_for(x))
    if eff.level < Share.overlap:
        assert eff.fields == ()
    else:
        assert eff.fields == owner.fields_for(x)
    assert (eff.min_count, eff.min_population) == (owner.min_count, owner.min_population)
    if not owner.reciprocal:
        assert eff.level is own and eff.reciprocal_cap is None
    elif viewer is not None:
        assert eff.level <= (viewer.level_for(y) if y is not None else viewer.max_level())
    for report in ReportKind:
        got = release(owner, x, report, viewer=viewer, viewer_population=y)
        assert (got is None) == (eff.level < REQUIRED[report])
        assert got is None or got == eff


@settings(max_examples=200, deadline=None)
@given(owner=policies, viewer=policies, x=slugs, y=slugs)
def test_reciprocity_never_raises_a_level(owner, viewer, x, y):
    plain = owner.model_copy(update={"reciprocal": False})
    recip = owner.model_copy(update={"reciprocal": True})
    lo = effective(recip, x, viewer=viewer, viewer_population=y)
    hi = effective(plain, x, viewer=viewer, viewer_population=y)
    assert lo.level <= hi.level
    assert set(lo.fields) <= set(hi.fields)
    # a pair-specific cap is never looser than the cap without a pair
    assert lo.level <= effective(recip, x, viewer=viewer).level


@settings(max_examples=200, deadline=None)
@given(p=policies)
def test_yaml_round_trip_property(p):
    p = Policy.model_validate(p.model_dump())  # re-validate what st.builds assembled
    assert Policy.from_yaml(p.to_yaml()) == p
    assert Policy.model_validate_json(p.model_dump_json()) == p
    assert pol.diff(p, p) == []


@given(p=policies, x=slugs)
def test_fields_for_is_empty_below_overlap(p, x):
    assert (p.fields_for(x) == ()) or p.level_for(x) >= Share.overlap
    assert p.level_for(x) <= p.max_level()


@given(matched=st.integers(0, 10_000), size=st.integers(0, 10_000), p=policies)
def test_count_cell_never_shows_a_small_count(matched, size, p):
    cell = count_cell(effective(p, "customers"), matched, size)
    if cell is None:
        assert size < p.min_population
    elif isinstance(cell, str):
        assert cell == f"<{p.min_count}" and matched < p.min_count
    else:
        assert cell == matched >= p.min_count


def test_public_surface():
    assert sorted(pol.__all__) == sorted(set(pol.__all__))
    for name in pol.__all__:
        obj = getattr(pol, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__, name


@pytest.mark.parametrize("name", pol.TEMPLATES)
def test_readme_shows_each_template_as_it_is(name):
    readme = (POLICIES / "README.md").read_text(encoding="utf-8")
    section = readme.split(f"### `{name}`", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert Policy.from_yaml(block) == pol.load_template(name)
