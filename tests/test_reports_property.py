"""Policy enforcement as a property: for random lists and random policies on both sides,
every report equals a reference computed here from the plaintext lists and the rules of
DESIGN §5 — nothing beyond what the policy allows, suppression exactly at min_count,
nothing at all (not even a name) for hidden populations."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blindmap.policy import Policy, Share, effective
from tests.conftest import _empty_all_tables, make_tenant, partner_up
from tests.uploads import upload, wait_jobs

LEVELS = ["hidden", "count", "overlap", "full"]
POPS = {"a": ["alpha", "beta"], "b": ["gamma", "delta"]}
FIELDS = ["name", "owner_email"]

universe = st.integers(min_value=0, max_value=24)
lists = st.lists(universe, min_size=1, max_size=14, unique=True)


@st.composite
def side(draw, pops):
    rules = {}
    for p in pops:
        level = draw(st.sampled_from(LEVELS))
        fields = (
            draw(st.lists(st.sampled_from(FIELDS), unique=True))
            if level in ("overlap", "full")
            else []
        )
        rules[p] = {"share": level, "fields": fields}
    policy = {
        "default": "hidden",
        "populations": rules,
        "min_count": draw(st.integers(1, 4)),
        "min_population": draw(st.integers(0, 8)),
        "reciprocal": draw(st.booleans()),
    }
    data = {p: draw(lists) for p in pops}
    return policy, data


def _reference_summary(owner: Policy, viewer: Policy, owner_lists, viewer_lists):
    cells = {}
    for y, ylist in viewer_lists.items():
        for x, xlist in owner_lists.items():
            eff = effective(owner, x, viewer=viewer, viewer_population=y)
            if eff.level < Share.count:
                continue
            matched = len(set(ylist) & set(xlist))
            if len(ylist) < owner.min_population:
                cells[(y, x)] = "—"
            elif matched < owner.min_count:
                cells[(y, x)] = f"<{owner.min_count}"
            else:
                cells[(y, x)] = str(matched)
    return cells


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(a=side(POPS["a"]), b=side(POPS["b"]))
def test_reports_equal_the_reference(app, client, a, b):
    _empty_all_tables(app.state.engine)
    ta, tb = make_tenant(app, "acme", "Acme"), make_tenant(app, "globex", "Globex")
    pid = partner_up(client, ta, tb)
    for tenant, (policy, data) in ((ta, a), (tb, b)):
        for pop in data:
            client.post(
                "/v1/populations", json={"slug": pop, "kind": "other"}, headers=tenant.headers()
            )
        assert (
            client.put(
                f"/v1/partnerships/{pid}/policy", json=policy, headers=tenant.headers()
            ).status_code
            == 200
        )
    for tenant, (policy, data) in ((ta, a), (tb, b)):
        for pop, values in data.items():
            fields = policy["populations"][pop]["fields"]
            _, r = upload(client, tenant, pid, pop, [[v] for v in values], sealed_fields=fields)
            assert r.status_code == 200, r.text
    wait_jobs(app)
    pa, pb = Policy.model_validate(a[0]), Policy.model_validate(b[0])

    # viewer a, owner b (and the symmetric case)
    for viewer, (vpol, vdata), (opol, odata), owner_pops in (
        (ta, (pa, a[1]), (pb, b[1]), POPS["b"]),
        (tb, (pb, b[1]), (pa, a[1]), POPS["a"]),
    ):
        h = viewer.headers()
        rep = client.get(f"/v1/partnerships/{pid}/reports/summary", headers=h).json()
        got = {(c["mine"], c["theirs"]): c["display"] for c in rep["cells"]}
        assert got == _reference_summary(opol, vpol, odata, vdata)

        items = client.get(
            f"/v1/partnerships/{pid}/reports/overlaps", params={"limit": 1000}, headers=h
        ).json()["items"]
        expected = set()
        for y, ylist in vdata.items():
            for x, xlist in odata.items():
                eff = effective(opol, x, viewer=vpol, viewer_population=y)
                if eff.level >= Share.overlap:
                    for v in set(ylist) & set(xlist):
                        expected.add((y, f"r{ylist.index(v)}", x, tuple(eff.fields)))
        released = {
            (i["population"], i["ref"], p["population"], tuple(p["fields"]))
            for i in items
            for p in i["partner"]
        }
        assert released == expected
        for i in items:
            for p in i["partner"]:
                assert (p["sealed"] is not None) == bool(p["fields"])

        ws = client.get(
            f"/v1/partnerships/{pid}/reports/white-space", params={"limit": 1000}, headers=h
        ).json()["items"]
        mine_all = set().union(*map(set, vdata.values()))
        exp_ws = {
            (x, f"r{xl.index(v)}")
            for x, xl in odata.items()
            if effective(opol, x, viewer=vpol).level >= Share.full
            for v in xl
            if v not in mine_all
        }
        assert {(w["population"], w["ref"]) for w in ws} == exp_ws

        # hidden populations are never named anywhere the viewer can look
        hidden = [
            x
            for x in owner_pops
            if effective(opol, x, viewer=vpol).level < Share.count
            and all(
                effective(opol, x, viewer=vpol, viewer_population=y).level < Share.count
                for y in vdata
            )
        ]
        seen = json.dumps(
            [
                rep,
                items,
                ws,
                client.get(f"/v1/partnerships/{pid}/status", headers=h).json(),
                client.get(f"/v1/partnerships/{pid}/partner-policy", headers=h).json(),
            ]
        )
        for x in hidden:
            assert x not in seen, x
