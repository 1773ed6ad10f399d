"""blindmap.reports without HTTP: wire objects sealed with real keys, decrypted, rendered."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from blindmap import crypto, protocol
from blindmap import reports as rep

pytestmark = pytest.mark.usefixtures("no_network")

PID = uuid.UUID("6f1c3a52-8d7e-4d0b-9a51-0c2b7e4f9a10")
NOW = datetime(2026, 5, 4, 12, 30, tzinfo=UTC)
PV = protocol.PolicyVersions(mine=3, partner=7)
EVIL = '<script>alert("x")</script>'


def b64(raw: bytes) -> str:
    return rep._b64encode(raw)


class World:
    """Me (acme) and my partner (globex) with real key pairs, sealing like `sync` does."""

    def __init__(self) -> None:
        self.me = crypto.generate_private_key()
        self.partner = crypto.generate_private_key()
        self.my_keys = crypto.PartnershipKeys.derive(
            self.me, crypto.public_key_bytes(self.partner), PID
        )
        self.their_keys = crypto.PartnershipKeys.derive(
            self.partner, crypto.public_key_bytes(self.me), PID
        )
        assert self.my_keys.key("seal") == self.their_keys.key("seal")
        self.keys = rep.ReportKeys(self.me, PID, crypto.public_key_bytes(self.partner))

    def mine(self, local_id: str, name: str, domain: str, population: str) -> tuple[str, str]:
        sk = crypto.self_key(self.me)
        ref = crypto.pseudonymous_ref(sk, PID, local_id)
        blob = crypto.Sealer(sk).seal(
            crypto.self_aad(PID, ref),
            {"id": local_id, "name": name, "domain": domain, "population": population},
        )
        return ref, b64(blob)

    def theirs(self, ref: str, population: str, **fields: Any) -> protocol.PartnerRecord:
        blob = self.their_keys.sealer().seal(crypto.partner_aad(PID, ref), fields)
        return protocol.PartnerRecord(
            population=population, ref=ref, sealed=b64(blob), fields=sorted(fields)
        )

    def overlap(
        self, local_id: str, name: str, domain: str, population: str, *partner: Any
    ) -> protocol.OverlapItem:
        ref, blob = self.mine(local_id, name, domain, population)
        return protocol.OverlapItem(
            ref=ref, population=population, self_sealed=blob, partner=list(partner)
        )


@pytest.fixture
def world() -> World:
    return World()


def summary() -> protocol.SummaryReport:
    pop = protocol.ReportPopulation
    return protocol.SummaryReport(
        partnership_id=PID,
        generated_at=NOW,
        mine=[
            pop(slug="customers", display_name="Customers", kind="customers", records=181),
            pop(slug="prospects", display_name="Prospects", kind="prospects", records=12),
        ],
        theirs=[
            pop(slug="customers", display_name="Customers", kind="customers", records=120),
            pop(slug="opportunities", display_name=EVIL, kind="opportunities", records=None),
        ],
        cells=[
            protocol.SummaryCell(mine="customers", theirs="customers", matched=20, display="20"),
            protocol.SummaryCell(
                mine="customers", theirs="opportunities", matched=None, display="<5"
            ),
            protocol.SummaryCell(mine="prospects", theirs="customers", matched=None, display="—"),
            protocol.SummaryCell(
                mine="prospects", theirs="opportunities", matched=None, display="—"
            ),
        ],
        min_count=5,
        min_population=25,
        policy_versions=PV,
    )


def context() -> rep.Context:
    return rep.Context(PID, "globex", "Globex Cloud", PV, NOW)


def full_report(world: World) -> rep.Report:
    items = [
        world.overlap(
            "001A",
            "Initech",
            "initech.com",
            "customers",
            world.theirs("t1", "customers", name="Initech Corp", owner_email="kim@globex.test"),
            world.theirs("t2", "opportunities", name="Initech", stage="=HYPERLINK(1)"),
        ),
        world.overlap(
            "001B",
            EVIL,
            "evil.example",
            "customers",
            protocol.PartnerRecord(
                population="customers", ref="t3", withheld="policy dropped owner_email"
            ),
        ),
    ]
    ws = [
        world.theirs("w1", "customers", name="Umbrella", domain="umbrella.test", owner_email=EVIL),
        world.theirs("w2", "customers", name="@SUM(A1:A9)", domain="sum.test"),
    ]
    r = rep.Report(context(), summary=summary())
    r.overlaps = rep.decrypt_overlaps(world.keys, items)
    r.white_space = rep.decrypt_white_space(world.keys, ws)
    return r


# -- decryption -----------------------------------------------------------------------------
def test_overlaps_decrypt_mine_and_theirs(world: World) -> None:
    item = world.overlap(
        "0015g00000ABC",
        "Initech",
        "initech.com",
        "opportunities",
        world.theirs("f" * 32, "customers", name="Initech Corp", owner_email="kim@globex.test"),
        protocol.PartnerRecord(population="prospects", ref="e" * 32),
    )
    [row] = rep.decrypt_overlaps(world.keys, [item])
    assert row.mine == rep.MyAccount(
        item.ref, "opportunities", "0015g00000ABC", "Initech", "initech.com"
    )
    assert row.partner[0] == rep.Released(
        "customers", "ok", {"name": "Initech Corp", "owner_email": "kim@globex.test"}
    )
    assert row.partner[1] == rep.Released("prospects", "no-fields")


def test_withheld_payload_is_explained(world: World) -> None:
    rec = protocol.PartnerRecord(population="customers", ref="x", withheld="re-sync pending")
    [rel] = rep.decrypt_white_space(world.keys, [rec])
    assert rel == rep.Released("customers", "withheld", note="re-sync pending")


def test_undecryptable_payloads_are_shown_and_counted_not_raised(world: World) -> None:
    good = world.theirs("ref-1", "customers", name="Acme")
    moved = good.model_copy(update={"ref": "ref-2"})  # the escrow moved it to another record
    garbage = protocol.PartnerRecord(population="customers", ref="r", sealed="!!not base64!!")
    short = protocol.PartnerRecord(population="customers", ref="r", sealed=b64(b"x" * 5))
    rotated = World()  # a payload sealed under keys that are not mine any more
    item = rotated.overlap("9", "Old", "old.test", "customers", rotated.theirs("z", "customers"))
    r = rep.Report(context())
    r.white_space = rep.decrypt_white_space(world.keys, [good, moved, garbage, short])
    r.overlaps = rep.decrypt_overlaps(world.keys, [item])
    assert [x.status for x in r.white_space] == ["ok"] + ["undecryptable"] * 3
    assert r.white_space[1].note == rep.UNDECRYPTABLE
    assert not r.overlaps[0].mine.decrypted
    assert r.undecryptable == 5
    out = _table(r)
    assert rep.UNDECRYPTABLE in out and "5 payload(s) could not be decrypted" in out
    assert json.loads(rep.to_json(r))["undecryptable"] == 5


def test_partner_without_a_key_cannot_open_but_does_not_crash(world: World) -> None:
    keys = rep.ReportKeys(world.me, PID, None)
    [rel] = rep.decrypt_white_space(keys, [world.theirs("a", "customers", name="x")])
    assert rel.status == "undecryptable"
    with pytest.raises(crypto.CryptoError):
        keys.domain_token("acme.com")


def test_lookup_maps_tokens_back_to_domains(world: World) -> None:
    t_found = world.keys.domain_token("initech.com")
    t_none = world.keys.domain_token("nobody.test")
    assert t_found == b64(world.their_keys.tokenizer("domain").token("initech.com"))
    resp = protocol.LookupResponse(
        partnership_id=PID,
        results=[
            protocol.LookupResult(
                kind="domain",
                value=t_found,
                partner=[world.theirs("q", "customers", name="Initech Corp")],
            ),
            protocol.LookupResult(kind="domain", value=t_none, partner=[]),
        ],
        policy_versions=PV,
    )
    rows = rep.decrypt_lookup(world.keys, {t_found: "initech.com", t_none: "nobody.test"}, resp)
    assert [(r.domain, r.found) for r in rows] == [("initech.com", True), ("nobody.test", False)]
    assert rows[0].partner[0].fields == {"name": "Initech Corp"}
    r = rep.Report(context(), lookup=rows)
    assert r.kind == "lookup"
    assert "not in the partner's lists" in rep.to_csv(r)


def test_keys_never_in_repr(world: World) -> None:
    text = repr(world.keys)
    assert "hidden" in text
    for secret in (world.my_keys.key("seal"), crypto.self_key(world.me)):
        assert secret.hex() not in text


# -- ecosystem ------------------------------------------------------------------------------
def test_ecosystem_joins_by_local_id_across_partnerships(world: World) -> None:
    other = World()
    pid2 = uuid.uuid4()
    keys2 = rep.ReportKeys(world.me, pid2, crypto.public_key_bytes(other.partner))
    their2 = crypto.PartnershipKeys.derive(other.partner, crypto.public_key_bytes(world.me), pid2)
    sk = crypto.self_key(world.me)

    def item2(local_id: str, name: str, pop: str, theirs_pop: str, **f: Any) -> Any:
        ref = crypto.pseudonymous_ref(sk, pid2, local_id)
        blob = crypto.Sealer(sk).seal(
            crypto.self_aad(pid2, ref),
            {"id": local_id, "name": name, "domain": f"{name.lower()}.test", "population": pop},
        )
        tref = "p2-" + local_id
        sealed = their2.sealer().seal(crypto.partner_aad(pid2, tref), f)
        return protocol.OverlapItem(
            ref=ref,
            population=pop,
            self_sealed=b64(blob),
            partner=[protocol.PartnerRecord(population=theirs_pop, ref=tref, sealed=b64(sealed))],
        )

    rows1 = rep.decrypt_overlaps(
        world.keys,
        [
            world.overlap(
                "A1", "Initech", "initech.test", "customers", world.theirs("x", "customers")
            ),
            world.overlap(
                "A2", "Hooli", "hooli.test", "prospects", world.theirs("y", "customers", name="H")
            ),
        ],
    )
    rows2 = rep.decrypt_overlaps(
        keys2, [item2("A1", "Initech", "opportunities", "partners", owner="Ann")]
    )
    ctx2 = rep.Context(pid2, "soylent", "Soylent", protocol.PolicyVersions(mine=1, partner=2), NOW)
    eco = rep.build_ecosystem([(context(), rows1), (ctx2, rows2)])
    first, second = eco.rows
    assert (first.local_id, first.populations) == ("A1", ["customers", "opportunities"])
    assert [(h.partner, h.populations, h.fields) for h in first.partners] == [
        ("globex", ["customers"], {}),
        ("soylent", ["partners"], {"owner": "Ann"}),
    ]
    assert second.local_id == "A2" and [h.partner for h in second.partners] == ["globex"]
    doc = json.loads(rep.to_json(eco))
    assert doc["report"] == "ecosystem"
    assert [p["policy_versions"] for p in doc["partnerships"]] == [
        {"mine": 3, "partner": 7},
        {"mine": 1, "partner": 2},
    ]
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(eco))))
    assert {(r["my_id"], r["partner"], r["policy_version_partner"]) for r in rows} == {
        ("A1", "globex", "7"),
        ("A1", "soylent", "2"),
        ("A2", "globex", "7"),
    }
    assert "Ecosystem of 2 partnership(s)" in _table(eco)
    assert "soylent" in rep.to_html(eco)


# -- renderers ------------------------------------------------------------------------------
def _table(report: Any) -> str:
    console = Console(file=io.StringIO(), width=250, color_system=None)
    rep.render_table(report, console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_every_format_states_partner_and_policy_versions(world: World) -> None:
    r = full_report(world)
    summary_only = rep.Report(context(), summary=summary())
    overlaps_only = rep.Report(context(), overlaps=r.overlaps)
    text = _table(r)
    assert "globex" in text and str(PID) in text and "mine v3, partner's v7" in text
    doc = json.loads(rep.to_json(r))
    assert doc["partnership"] == {
        "id": str(PID),
        "partner": "globex",
        "partner_name": "Globex Cloud",
    }
    assert doc["policy_versions"] == {"mine": 3, "partner": 7}
    for one in (summary_only, overlaps_only):
        rows = list(csv.DictReader(io.StringIO(rep.to_csv(one))))
        assert rows and all(
            (r["partner"], r["partnership_id"], r["policy_version_mine"])
            == ("globex", str(PID), "3")
            and r["policy_version_partner"] == "7"
            for r in rows
        )
    page = rep.to_html(r)
    assert "Globex Cloud" in page and "mine v3, partner&#x27;s v7" in page and str(PID) in page


def test_json_keys_are_stable(world: World) -> None:
    doc = json.loads(rep.to_json(full_report(world)))
    assert list(doc) == [
        "blindmap_report",
        "report",
        "generated_at",
        "partnership",
        "policy_versions",
        "summary",
        "overlaps",
        "white_space",
        "undecryptable",
        "notes",
    ]
    assert doc["report"] == "full" and doc["blindmap_report"] == 1
    o = doc["overlaps"][0]
    assert o["mine"] == {
        "ref": o["mine"]["ref"],
        "population": "customers",
        "id": "001A",
        "name": "Initech",
        "domain": "initech.com",
        "status": "ok",
    }
    assert o["partner"][0] == {
        "population": "customers",
        "status": "ok",
        "fields": {"name": "Initech Corp", "owner_email": "kim@globex.test"},
        "note": None,
    }
    assert doc["overlaps"][1]["partner"][0]["status"] == "withheld"
    assert doc["summary"]["cells"][1] == {
        "mine": "customers",
        "theirs": "opportunities",
        "matched": None,
        "display": "<5",
    }
    assert doc["white_space"][0]["fields"]["domain"] == "umbrella.test"


def test_summary_table_is_a_matrix(world: World) -> None:
    out = _table(rep.Report(context(), summary=summary()))
    line = next(ln for ln in out.splitlines() if "customers (181)" in ln)
    assert "20" in line and "<5" in line
    assert "—" in next(ln for ln in out.splitlines() if "prospects (12)" in ln)


def test_table_does_not_interpret_markup_or_terminal_escapes(world: World) -> None:
    item = world.overlap(
        "1",
        "[bold red]boom[/]",
        "x.test",
        "customers",
        world.theirs("t", "customers", name="\x1b[2J"),
    )
    out = _table(rep.Report(context(), overlaps=rep.decrypt_overlaps(world.keys, [item])))
    assert "[bold red]boom[/]" in out
    assert "\x1b" not in out


@pytest.mark.parametrize(
    "value",
    ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://evil")'],
)
def test_csv_neutralises_formulas(value: str) -> None:
    assert rep.neutralise_csv_cell(value) == "'" + value


@pytest.mark.parametrize("value", ["Initech", "<5", "—", "a=b", "", None, 12])
def test_csv_leaves_other_cells(value: Any) -> None:
    assert rep.neutralise_csv_cell(value) == ("" if value is None else str(value))


def test_csv_export_neutralises_partner_fields(world: World) -> None:
    r = full_report(world)
    over = rep.to_csv(rep.Report(context(), overlaps=r.overlaps))
    rows = list(csv.reader(io.StringIO(over)))
    header = rows[0]
    assert header[:4] == [
        "partner",
        "partnership_id",
        "policy_version_mine",
        "policy_version_partner",
    ]
    assert "their_stage" in header and "my_id" in header
    stage = header.index("their_stage")
    assert sorted(row[stage] for row in rows[1:]) == ["", "", "'=HYPERLINK(1)"]
    ws = list(
        csv.DictReader(io.StringIO(rep.to_csv(rep.Report(context(), white_space=r.white_space))))
    )
    assert [w["name"] for w in ws] == ["'@SUM(A1:A9)", "Umbrella"]
    assert ws[1]["owner_email"] == EVIL  # not a formula: CSV is not HTML
    for line in over.splitlines()[1:]:
        for cell in next(csv.reader([line])):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_csv_refuses_a_multi_section_report(world: World) -> None:
    with pytest.raises(ValueError, match="one report"):
        rep.to_csv(full_report(world))


def test_html_is_self_contained_and_escaped(world: World) -> None:
    page = rep.to_html(full_report(world))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)\s*=", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page
    # the heat map: counted cells shaded, suppressed cells distinct
    assert re.search(r'<td style="background:rgba\(var\(--accent\),0\.90\)[^>]*>20</td>', page)
    assert page.count('class="sup"') == 3
    assert ">&lt;5</td>" in page
    for text in ("Initech Corp", "kim@globex.test", "umbrella.test", "policy dropped owner_email"):
        assert text in page


def test_table_output_of_the_full_report(world: World) -> None:
    out = _table(full_report(world))
    for text in ("Account mapping", "Overlaps", "White space", "Initech Corp", "umbrella.test"):
        assert text in out


def test_policy_change_between_sections_is_noted(world: World) -> None:
    r = rep.Report(context(), summary=summary())
    r.add_versions(PV, "overlaps")
    assert r.notes == []
    r.add_versions(protocol.PolicyVersions(mine=3, partner=8), "white space")
    assert "white space" in r.notes[0]
    assert "white space" in _table(r)
