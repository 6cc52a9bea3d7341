"""The production dialect: tables (/api/v2/flows/datatables), its error
bodies, scopes, and the one store it shares with the cursor API."""
import subprocess
import urllib.parse

import pytest

from emu import FLOWS, SAMPLE_DATA, SAMPLE_PRODUCTION, emu_binary

ERROR_FIELDS = {"message", "code", "status", "messageWithParams",
                "messageParams", "contextId", "details", "errors"}

SAMPLE_ARGS = ("--data", SAMPLE_DATA, "--data", SAMPLE_PRODUCTION)


@pytest.fixture
def emu(emu_factory):  # noqa: F811  (the sample tables and PriceList)
    return emu_factory(*SAMPLE_ARGS)


def schema(props):
    """A production JSON Schema from {name: (type, extra dict)}."""
    out = {"$schema": "http://json-schema.org/draft-04/schema#",
           "type": "object", "required": ["key"],
           "additionalProperties": False, "properties": {}}
    for i, (name, (typ, extra)) in enumerate(props.items()):
        p = {"$id": "/properties/" + name, "type": typ, "displayOrder": i}
        p.update(extra)
        out["properties"][name] = p
    return out


PROPS = {"key": ("string", {"title": "Email"}),
         "score": ("number", {"title": "Score", "default": 0.5}),
         "visits": ("integer", {"title": "Visits"}),
         "deleted": ("boolean", {"title": "Is Deleted", "default": False}),
         "note": ("string", {"title": "Note", "default": "n/a"})}


def create(emu, name, props=PROPS, expect=200, **extra):
    body = {"name": name, "description": "d", "schema": schema(props)}
    body.update(extra)
    return emu.api("POST", FLOWS, body=body, expect=expect)[2]


def assert_error(status, headers, body, want_status, code):
    assert status == want_status, body
    assert ERROR_FIELDS <= set(body), body
    assert body["code"] == code and body["status"] == want_status
    assert body["contextId"] == headers["ININ-Correlation-Id"]
    assert isinstance(body["details"], list)
    assert isinstance(body["errors"], list)


def test_listing_shape_and_visibility(emu):
    _, h, body = emu.api("GET", FLOWS)
    assert h["ININ-Correlation-Id"]
    assert "X-RateLimit-Remaining" not in h
    names = [t["name"] for t in body["entities"]]
    # Holidays/2025 (a date key) and RoutingRules (two key columns) have
    # no single string key: not visible in the production dialect
    assert sorted(names) == ["Customers", "PriceList"]
    assert body["pageSize"] == 25 and body["pageNumber"] == 1
    assert body["total"] == 2 and body["pageCount"] == 1
    for k in ("firstUri", "lastUri", "selfUri"):
        assert body[k].startswith(FLOWS + "?")
    assert "nextUri" not in body and "previousUri" not in body
    t = body["entities"][0]
    assert set(t) == {"id", "name", "description", "division", "selfUri"}
    assert set(t["division"]) == {"id", "name", "selfUri"}
    assert t["selfUri"] == FLOWS + "/" + t["id"]
    # ids are the cursor dialect's ids
    assert emu.table_id(t["name"]) == t["id"]


def test_listing_paging_sort_and_filters(emu):
    for i in range(5):
        create(emu, "T%d" % i)
    _, _, p2 = emu.api("GET", FLOWS + "?pageSize=2&pageNumber=2"
                       "&sortBy=name&sortOrder=descending")
    assert [t["name"] for t in p2["entities"]] == ["T2", "T1"]
    assert p2["total"] == 7 and p2["pageCount"] == 4
    assert "pageNumber=3" in p2["nextUri"]
    assert "pageNumber=1" in p2["previousUri"]
    _, _, last = emu.api("GET", FLOWS + "?pageSize=2&pageNumber=4"
                         "&sortBy=name")
    assert [t["name"] for t in last["entities"]] == ["T4"]
    assert "nextUri" not in last
    _, _, past = emu.api("GET", FLOWS + "?pageSize=2&pageNumber=9")
    assert past["entities"] == [] and past["total"] == 7
    _, _, by_id = emu.api("GET", FLOWS + "?sortBy=id")
    ids = [t["id"] for t in by_id["entities"]]
    assert ids == sorted(ids)
    _, _, f = emu.api("GET", FLOWS + "?name=" + urllib.parse.quote("t*"))
    assert sorted(t["name"] for t in f["entities"]) == [
        "T0", "T1", "T2", "T3", "T4"]
    _, _, f = emu.api("GET", FLOWS + "?name=pricelist")
    assert [t["name"] for t in f["entities"]] == ["PriceList"]
    _, _, f = emu.api("GET", FLOWS + "?name=*LIS*")
    assert [t["name"] for t in f["entities"]] == ["PriceList"]
    for pat, want in (("p*t", ["PriceList"]), ("c*s*s", ["Customers"]),
                      ("*", ["Customers", "PriceList", "T0", "T1", "T2",
                             "T3", "T4"]),
                      ("*x", []), ("price", []), ("**list", ["PriceList"])):
        _, _, f = emu.api("GET", FLOWS + "?sortBy=name&name=" +
                          urllib.parse.quote(pat))
        assert [t["name"] for t in f["entities"]] == want, pat
    div = f["entities"][0]["division"]["id"]
    _, _, f = emu.api("GET", FLOWS + "?divisionId=" + div)
    assert f["total"] == 7
    _, _, f = emu.api("GET", FLOWS + "?divisionId=other")
    assert f["total"] == 0
    for q in ("pageSize=0", "pageSize=501", "pageNumber=0", "sortBy=x",
              "sortOrder=up"):
        status, h, body = emu.api("GET", FLOWS + "?" + q, expect=None)
        assert_error(status, h, body, 400, "bad.request")


def test_expand_schema(emu):
    tid = emu.flows_table_id("PriceList")
    _, _, t = emu.api("GET", "%s/%s" % (FLOWS, tid))
    assert "schema" not in t
    _, _, t = emu.api("GET", "%s/%s?expand=schema" % (FLOWS, tid))
    s = t["schema"]
    assert s["required"] == ["key"] and s["additionalProperties"] is False
    assert s["title"] == "PriceList" and s["type"] == "object"
    p = s["properties"]
    assert list(p) == ["key", "name", "price", "stock", "active"]
    assert p["key"] == {"$id": "/properties/key", "type": "string",
                        "title": "SKU", "displayOrder": 0}
    assert p["price"]["default"] == 9.99 and p["price"]["type"] == "number"
    assert p["stock"]["type"] == "integer" and p["stock"]["default"] == 0
    assert p["active"]["default"] is True
    # a cursor table: its key column is `key`, titled with its name
    _, _, c = emu.api("GET", "%s/%s?expand=schema"
                      % (FLOWS, emu.table_id("Customers")))
    p = c["schema"]["properties"]
    assert p["key"]["title"] == "customer_id"
    assert p["last_interaction"]["type"] == "string"  # a date column
    _, _, listing = emu.api("GET", FLOWS + "?expand=schema")
    assert all("schema" in t for t in listing["entities"])


def test_table_not_found_body(emu):
    for method, path in (("GET", FLOWS + "/nope"),
                         ("PUT", FLOWS + "/nope"),
                         ("DELETE", FLOWS + "/nope"),
                         ("GET", FLOWS + "/nope/rows"),
                         ("POST", FLOWS + "/nope/export/jobs"),
                         # a table the production dialect cannot show
                         ("GET", FLOWS + "/" + emu.table_id("RoutingRules"))):
        body = {"name": "x", "schema": schema(PROPS)} \
            if method == "PUT" else None
        status, h, err = emu.api(method, path, body=body, expect=None)
        assert_error(status, h, err, 404, "flows.datatables.table.not.found")


def test_create_and_both_dialects(emu):
    t = create(emu, "Mail", division={"id": "div-1"})
    assert t["name"] == "Mail" and t["division"]["id"] == "div-1"
    s = t["schema"]
    assert s["title"] == "Mail"  # the name overrides the schema title
    assert s["properties"]["key"]["title"] == "Email"
    assert s["properties"]["score"]["default"] == 0.5
    _, _, got = emu.api("GET", "%s/%s?expand=schema" % (FLOWS, t["id"]))
    assert got == t
    # the cursor dialect sees the same table, key column `key`
    assert emu.table_id("Mail") == t["id"]
    assert emu.schema("Mail")["columns"] == [
        {"name": "key", "type": "string", "isPrimaryKey": True},
        {"name": "score", "type": "number", "isPrimaryKey": False},
        {"name": "visits", "type": "integer", "isPrimaryKey": False},
        {"name": "deleted", "type": "boolean", "isPrimaryKey": False},
        {"name": "note", "type": "string", "isPrimaryKey": False}]
    # no division: the home division
    t2 = create(emu, "Mail2")
    assert t2["division"]["name"] == "Home"


def test_create_refusals(emu):
    create(emu, "Dup")
    status, h, body = emu.api("POST", FLOWS, body={
        "name": "Dup", "schema": schema(PROPS)}, expect=None)
    assert_error(status, h, body, 409, "flows.datatables.name.conflict")
    bad = [
        {"name": "a/b", "schema": schema(PROPS)},
        {"name": "a\\b", "schema": schema(PROPS)},
        {"name": "", "schema": schema(PROPS)},
        {"name": "x" * 257, "schema": schema(PROPS)},
        {"schema": schema(PROPS)},
        {"name": "nokey", "schema": schema({"k": ("string", {})})},
        {"name": "badkey", "schema": schema({"key": ("integer", {})})},
        {"name": "badtype", "schema": schema({"key": ("string", {}),
                                              "d": ("date", {})})},
        {"name": "baddefault", "schema": schema({
            "key": ("string", {}), "n": ("integer", {"default": "1"})})},
        {"name": "noschema"},
        {"name": "notjson"},
    ]
    for body in bad:
        data = b"{junk" if body.get("name") == "notjson" else body
        status, h, err = emu.api("POST", FLOWS, body=data, expect=None)
        assert_error(status, h, err, 400, "flows.datatables.syntax.error")
    assert create(emu, "x" * 256)["name"] == "x" * 256
    names = [t["name"] for t in emu.flows_tables()]
    assert "a/b" not in names and "nokey" not in names


def test_put_adds_properties_and_edits_titles(emu):
    t = create(emu, "Evolve")
    s = t["schema"]
    s["properties"]["score"]["title"] = "Score (0..1)"
    s["properties"]["score"]["default"] = 0.25
    s["properties"]["score"]["displayOrder"] = 9
    s["properties"]["city"] = {"type": "string", "title": "City",
                               "displayOrder": 5, "default": "Gent"}
    body = {"id": t["id"], "name": "Evolved", "description": "new",
            "division": t["division"], "schema": s}
    _, _, got = emu.api("PUT", "%s/%s" % (FLOWS, t["id"]), body=body)
    assert got["name"] == "Evolved" and got["description"] == "new"
    p = got["schema"]["properties"]
    assert p["score"]["title"] == "Score (0..1)"
    assert p["score"]["default"] == 0.25
    assert list(p)[-1] == "score"  # displayOrder 9
    assert p["city"]["default"] == "Gent"
    assert [c["name"] for c in emu.schema("Evolved")["columns"]][-1] == "city"
    # a row created now gets the new defaults
    _, _, row = emu.api("POST", "%s/%s/rows" % (FLOWS, t["id"]),
                        body={"key": "a"})
    assert row["score"] == 0.25 and row["city"] == "Gent"


def test_put_refuses_removal_and_type_change(emu):
    t = create(emu, "Fixed")
    for change in ("remove", "retype"):
        s = schema(PROPS)
        if change == "remove":
            del s["properties"]["note"]
        else:
            s["properties"]["visits"]["type"] = "string"
        status, h, err = emu.api("PUT", "%s/%s" % (FLOWS, t["id"]), body={
            "name": "Fixed", "schema": s}, expect=None)
        assert_error(status, h, err, 400, "flows.datatables.schema.exception")
    create(emu, "Other")
    status, h, err = emu.api("PUT", "%s/%s" % (FLOWS, t["id"]), body={
        "name": "Other", "schema": schema(PROPS)}, expect=None)
    assert_error(status, h, err, 409, "flows.datatables.name.conflict")
    _, _, got = emu.api("GET", "%s/%s?expand=schema" % (FLOWS, t["id"]))
    assert got["name"] == "Fixed" and list(got["schema"]["properties"]) == \
        list(PROPS)


def test_delete_table(emu):
    t = create(emu, "Gone")
    emu.api("POST", "%s/%s/rows" % (FLOWS, t["id"]), body={"key": "a"})
    status, _, body = emu.api("DELETE", "%s/%s?force=true" % (FLOWS, t["id"]),
                              expect=204)
    assert body == b""
    status, h, err = emu.api("GET", "%s/%s" % (FLOWS, t["id"]), expect=None)
    assert_error(status, h, err, 404, "flows.datatables.table.not.found")
    assert "Gone" not in [x["name"] for x in emu.tables()]
    status, _, _ = emu.api("GET", "/api/v2/datatables/%s/rows" % t["id"],
                           expect=404)
    # a cursor table can be deleted too; the name can be used again
    emu.api("DELETE", "%s/%s" % (FLOWS, emu.table_id("Customers")),
            expect=204)
    assert "Customers" not in [x["name"] for x in emu.tables()]
    create(emu, "Gone")


def test_table_limits(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--max-tables", "6",
                    "--max-properties", "5")
    # four sample tables count; two more fit
    create(e, "A")
    create(e, "B")
    status, h, err = e.api("POST", FLOWS, body={
        "name": "C", "schema": schema(PROPS)}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    assert err["limit"]["value"] == 6
    e.api("DELETE", "%s/%s" % (FLOWS, e.flows_table_id("A")), expect=204)
    six = dict(PROPS, extra=("string", {}))
    status, h, err = e.api("POST", FLOWS, body={
        "name": "C", "schema": schema(six)}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    assert err["limit"]["value"] == 5
    t = create(e, "C")
    s = schema(six)
    status, h, err = e.api("PUT", "%s/%s" % (FLOWS, t["id"]), body={
        "name": "C", "schema": s}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    e.config(max_properties=50, max_tables=200)
    e.api("PUT", "%s/%s" % (FLOWS, t["id"]), body={"name": "C", "schema": s})


def test_default_limits(emu):
    many = {"key": ("string", {})}
    many.update(("p%02d" % i, ("integer", {})) for i in range(50))
    status, h, err = emu.api("POST", FLOWS, body={
        "name": "Wide", "schema": schema(many)}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    del many["p49"]
    create(emu, "Wide", props=many)  # 50 properties with the key
    cfg = emu.config()
    assert (cfg["max_rows"], cfg["max_properties"], cfg["max_tables"],
            cfg["max_name_length"], cfg["max_flows_page_size"]) == (
                5000, 50, 200, 256, 500)
    for i in range(200 - len(emu.tables())):
        create(emu, "Fill%03d" % i, props={"key": ("string", {})})
    status, h, err = emu.api("POST", FLOWS, body={
        "name": "OneTooMany", "schema": schema(PROPS)}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")


def test_scopes(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--client", "dt:s:data-table:read",
                    "--client", "ro:s:architect:readonly",
                    "--client", "all:s")
    tok = e.token("dt", "s")
    status, h, err = e.request("GET", FLOWS, token=tok)
    assert_error(status, h, err, 403, "missing.permissions")
    ro = e.token("ro", "s")
    status, _, _ = e.request("GET", FLOWS, token=ro)
    assert status == 200
    status, h, err = e.request("POST", FLOWS, token=ro, body={
        "name": "x", "schema": schema(PROPS)})
    assert_error(status, h, err, 403, "missing.permissions")
    status, _, _ = e.request("GET", "/api/v2/datatables", token=ro)
    assert status == 403
    # a client given without scopes gets every scope, architect too
    status, _, body = e.token_response("all", "s")
    assert body["scope"] == "data-table:read data-table:write architect"
    status, _, body = e.token_response("all", "s", scopes=["architect"])
    assert body["scope"] == "architect"
    status, _, body = e.token_response("all", "s",
                                       scopes=["architect:readonly"])
    assert body["scope"] == "architect:readonly"


def test_demo_client_has_architect(emu):
    _, _, body = emu.token_response()
    assert "architect" in body["scope"].split()


def test_auth_and_routing_errors(emu, tok):
    status, h, err = emu.request("GET", FLOWS)
    assert_error(status, h, err, 401, "authentication.required")
    assert "X-RateLimit-Remaining" not in h
    emu.expire_tokens()
    status, h, err = emu.request("GET", FLOWS, token=tok)
    assert_error(status, h, err, 401, "authentication.required")
    tok = emu.token()
    status, h, err = emu.request("PATCH", FLOWS, token=tok)
    assert_error(status, h, err, 405, "method.not.allowed")
    status, h, err = emu.request("GET", FLOWS + "/x/nothing", token=tok)
    assert_error(status, h, err, 404, "not.found")


def test_data_folders(emu_factory, tmp_path):
    # --data of the cursor samples skips the production collection
    e = emu_factory("--data", SAMPLE_DATA)
    assert "PriceList" not in [t["name"] for t in e.tables()]
    # a production JSON Schema in a --data folder; rows are flat objects
    d = tmp_path / "prod" / "Prod%2FTable"
    d.mkdir(parents=True)
    (d / "schema.json").write_text(
        '{"description": "p", "properties": {"n": {"type": "integer", '
        '"displayOrder": 1}, "key": {"type": "string", "title": "K", '
        '"displayOrder": 0}}}')
    (d / "rows.jsonl").write_text('{"key": "a", "n": 1}\n')
    e = emu_factory("--data", str(tmp_path / "prod"))
    t = e.tables()[0]
    assert (t["name"], t["description"]) == ("Prod/Table", "p")
    assert e.rows("Prod/Table") == [{"key": "a", "n": 1}]
    assert e.flows_rows(t["id"]) == [{"key": "a", "n": 1}]
    # a folder with files but no schema.json is still an error
    bad = tmp_path / "bad" / "T"
    bad.mkdir(parents=True)
    (bad / "rows.jsonl").write_text("{}\n")
    for args in (("--data", str(tmp_path / "bad")),):
        try:
            emu_factory(*args)
        except AssertionError as exc:
            assert "schema.json" in str(exc)
        else:
            raise AssertionError("a folder without schema.json loaded")
    (d / "schema.json").write_text('{"properties": {"n": {"type": "date"}}}')
    try:
        emu_factory("--data", str(tmp_path / "prod"))
    except AssertionError as exc:
        assert "type" in str(exc)
    else:
        raise AssertionError("a bad production schema loaded")


def test_rename_keeps_the_cursor_listing_in_order(emu):
    t = create(emu, "Zeta")
    body = {"name": "Alpha", "schema": t["schema"]}
    emu.api("PUT", "%s/%s" % (FLOWS, t["id"]), body=body)
    names = [x["name"] for x in emu.tables()]
    assert names == sorted(names) and "Alpha" in names and "Zeta" not in names
    assert emu.table_id("Alpha") == t["id"]
    _, _, got = emu.api("GET", FLOWS + "?sortBy=name")
    assert [x["name"] for x in got["entities"]] == [
        "Alpha", "Customers", "PriceList"]


@pytest.mark.parametrize("args", [
    ["--job-delay", "-1"], ["--job-delay", "x"], ["--max-rows", "-5"],
    ["--max-properties", "0"], ["--max-tables", "many"],
    ["--max-name-length", "0"], ["--max-flows-page-size", "0"],
    ["--download-status", "301"], ["--client", "id:s:architect:admin"],
])
def test_bad_production_flags_are_refused(args):
    proc = subprocess.run([emu_binary(), *args], capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, args
    assert b"listening" not in proc.stdout


def test_help_lists_the_production_flags():
    proc = subprocess.run([emu_binary(), "--help"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0
    for opt in (b"--job-delay", b"--max-rows", b"--max-properties",
                b"--max-tables", b"--max-name-length",
                b"--max-flows-page-size", b"--download-status",
                b"architect"):
        assert opt in proc.stdout


def test_production_config_keys(emu):
    cfg = emu.config(job_delay_ms=5, max_rows=7, max_properties=9,
                     max_tables=11, max_name_length=13,
                     max_flows_page_size=15, download_status=302)
    assert (cfg["job_delay_ms"], cfg["max_rows"], cfg["max_properties"],
            cfg["max_tables"], cfg["max_name_length"],
            cfg["max_flows_page_size"], cfg["download_status"]) == (
                5, 7, 9, 11, 13, 15, 302)
    assert emu.stats()["config"]["job_delay_ms"] == 5
    for body in ({"job_delay_ms": -1}, {"max_rows": "x"},
                 {"download_status": 301}, {"max_flows_page_size": 0}):
        status, _, _ = emu.request("POST", "/_emu/config", body=body)
        assert status == 400, body
    assert emu.config()["max_rows"] == 7
    # the name limit applies at once
    status, h, err = emu.api("POST", FLOWS, body={
        "name": "x" * 14, "schema": schema(PROPS)}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.syntax.error")
