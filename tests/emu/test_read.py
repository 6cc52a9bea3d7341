"""Listing, schema, cursor-paged rows, ETags and 304."""
import base64
import re
import urllib.parse

ROWS = "/api/v2/datatables/%s/rows"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                  r"[0-9a-f]{12}$")


def rows_path(tid, **q):
    return ROWS % tid + ("?" + urllib.parse.urlencode(q) if q else "")


def get(emu, tok, path, **kw):
    return emu.request("GET", path, token=tok, **kw)


def test_listing(emu, tok):
    status, headers, body = get(emu, tok, "/api/v2/datatables")
    assert status == 200
    names = [t["name"] for t in body["entities"]]
    assert names == ["Customers", "Holidays/2025", "RoutingRules"]
    for t in body["entities"]:
        assert UUID.match(t["id"])
        assert isinstance(t["description"], str)
    assert not body.get("nextPageCursor")


def test_listing_pages(emu_factory):
    args = []
    for i in range(30):
        args += ["--generate", "T%02d:1" % i]
    e = emu_factory(*args)
    tok = e.token()
    status, _, body = get(e, tok, "/api/v2/datatables")
    assert status == 200
    assert len(body["entities"]) == 25  # the default page size
    seen = [t["name"] for t in body["entities"]]
    status, _, body2 = get(e, tok, "/api/v2/datatables?pageSize=25&cursor="
                           + body["nextPageCursor"])
    assert status == 200
    seen += [t["name"] for t in body2["entities"]]
    assert seen == ["T%02d" % i for i in range(30)]
    assert not body2.get("nextPageCursor")
    status, _, _ = get(e, tok, "/api/v2/datatables?pageSize=101")
    assert status == 400
    status, _, _ = get(e, tok, "/api/v2/datatables?pageSize=0")
    assert status == 400


def test_table_ids_are_stable(emu_factory):
    from emu import SAMPLE_DATA
    a = emu_factory("--data", SAMPLE_DATA).tables()
    b = emu_factory("--data", SAMPLE_DATA).tables()
    assert a == b
    assert len({t["id"] for t in a}) == len(a)


def test_schema(emu, tok):
    tid = emu.table_id("Customers")
    status, headers, body = get(emu, tok, "/api/v2/datatables/%s/schema"
                                % tid)
    assert status == 200
    assert body == {"columns": [
        {"name": "customer_id", "type": "string", "isPrimaryKey": True},
        {"name": "last_interaction", "type": "date", "isPrimaryKey": False},
        {"name": "loyalty_tier", "type": "number", "isPrimaryKey": False},
    ]}
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    rr = emu.schema("RoutingRules")
    assert [c["name"] for c in rr["columns"] if c["isPrimaryKey"]] == [
        "region", "queue"]
    assert {c["type"] for c in rr["columns"]} == {"string", "integer",
                                                  "boolean"}


def test_unknown_table_404(emu, tok):
    for path in ("/api/v2/datatables/nope/schema", ROWS % "nope",
                 "/api/v2/datatables/00000000-0000-0000-0000-000000000000"
                 "/rows"):
        status, headers, body = get(emu, tok, path)
        assert status == 404
        assert body["code"] == "datatable.not.found"
        assert body["contextId"] == headers["ININ-Correlation-Id"]


def test_pagination_without_gaps_or_repeats(emu_factory):
    e = emu_factory("--generate", "Big:2345")
    tok = e.token()
    tid = e.table_id("Big")
    keys, cursor, pages = [], None, 0
    while True:
        q = {"pageSize": 500}
        if cursor:
            q["cursor"] = cursor
        status, _, body = get(e, tok, rows_path(tid, **q))
        assert status == 200
        pages += 1
        assert len(body["rows"]) == (500 if pages < 5 else 345)
        keys += [r["columns"]["customer_id"] for r in body["rows"]]
        cursor = body.get("nextPageCursor")
        if not cursor:
            break
    assert pages == 5
    assert keys == ["CUST-%07d" % i for i in range(1, 2346)]
    assert "nextPageCursor" not in body or body["nextPageCursor"] is None


def test_row_shape(emu, tok):
    tid = emu.table_id("Customers")
    status, _, body = get(emu, tok, rows_path(tid, pageSize=1))
    row = body["rows"][0]
    assert set(row) == {"id", "columns"}
    assert UUID.match(row["id"])
    assert row["columns"]["customer_id"] == "CUST-00001"


def test_default_page_size(emu, tok):
    tid = emu.table_id("Customers")
    status, _, body = get(emu, tok, ROWS % tid)
    assert status == 200
    assert len(body["rows"]) == 100
    assert body["nextPageCursor"]


def test_maximum_page_size(emu, tok):
    tid = emu.table_id("Customers")
    status, _, body = get(emu, tok, rows_path(tid, pageSize=1000))
    assert status == 200 and len(body["rows"]) == 1000
    for bad in ("1001", "0", "-1", "abc", "10.5", ""):
        status, headers, body = get(emu, tok, ROWS % tid + "?pageSize=" + bad)
        assert status == 400, bad
        assert body["code"] == "bad.request"
        assert body["contextId"] == headers["ININ-Correlation-Id"]


def test_max_page_size_option_and_config(emu_factory):
    e = emu_factory("--generate", "G:50", "--max-page-size", "20")
    tok = e.token()
    tid = e.table_id("G")
    status, _, body = get(e, tok, ROWS % tid)
    assert status == 200 and len(body["rows"]) == 20
    status, _, _ = get(e, tok, rows_path(tid, pageSize=21))
    assert status == 400
    e.config(max_page_size=30)
    status, _, body = get(e, tok, rows_path(tid, pageSize=30))
    assert status == 200 and len(body["rows"]) == 30


def test_empty_table(emu_factory, tmp_path):
    d = tmp_path / "Empty"
    d.mkdir()
    (d / "schema.json").write_text(
        '{"columns": [{"name": "k", "type": "string", "isPrimaryKey": true}]}')
    e = emu_factory("--data", str(tmp_path))
    tok = e.token()
    status, headers, body = get(e, tok, ROWS % e.table_id("Empty"))
    assert status == 200
    assert body == {"rows": []}
    assert headers["ETag"]


def test_etag_equal_across_pages(emu, tok):
    tid = emu.table_id("Customers")
    etags, cursor = [], None
    while True:
        q = {"pageSize": 1000}
        if cursor:
            q["cursor"] = cursor
        status, headers, body = get(emu, tok, rows_path(tid, **q))
        etags.append(headers["ETag"])
        cursor = body.get("nextPageCursor")
        if not cursor:
            break
    assert len(etags) == 3
    assert len(set(etags)) == 1
    assert etags[0].startswith('"') and etags[0].endswith('"')


def current_etag(emu, tok, tid):
    status, headers, _ = get(emu, tok, rows_path(tid, pageSize=1))
    assert status == 200
    return headers["ETag"]


def test_etag_changed_by_every_write(emu, tok):
    tid = emu.table_id("Customers")
    seen = [current_etag(emu, tok, tid)]

    def changed(reply_etag=None):
        now = current_etag(emu, tok, tid)
        assert now not in seen
        if reply_etag is not None:
            assert reply_etag == now
        seen.append(now)

    # an insert
    status, h, _ = emu.request("POST", ROWS % tid + "?upsert=true", token=tok,
                               body=[{"columns": {"customer_id": "NEW-1"}}])
    assert status == 200
    changed(h["ETag"])
    # an update, even one that writes the same values
    status, h, _ = emu.request("POST", ROWS % tid + "?upsert=true", token=tok,
                               body=[{"columns": {"customer_id": "NEW-1"}}])
    assert status == 200
    changed(h["ETag"])
    # an insert-only write
    status, h, _ = emu.request("POST", ROWS % tid, token=tok,
                               body=[{"columns": {"customer_id": "NEW-2"}}])
    assert status == 200
    changed(h["ETag"])
    # a delete
    rid = emu.row_entries("Customers")[0]["id"]
    status, h, _ = emu.request("DELETE", ROWS % tid + "/" + rid, token=tok)
    assert status == 204
    changed()
    # a schema change
    status, h, schema = get(emu, tok, "/api/v2/datatables/%s/schema" % tid)
    schema["columns"].append({"name": "extra", "type": "string",
                              "isPrimaryKey": False})
    status, _, _ = emu.request("PUT", "/api/v2/datatables/%s/schema" % tid,
                               token=tok, body=schema,
                               headers={"If-Match": h["ETag"]})
    assert status == 200
    changed()
    # a rejected write changes nothing
    status, _, _ = emu.request("POST", ROWS % tid + "?upsert=true", token=tok,
                               body=[{"columns": {"customer_id": 5}}])
    assert status == 400
    assert current_etag(emu, tok, tid) == seen[-1]


def test_304_when_unchanged(emu, tok):
    tid = emu.table_id("Customers")
    status, headers, first = get(emu, tok, rows_path(tid, pageSize=1000))
    etag = headers["ETag"]
    for value in (etag, etag.strip('"'), 'W/' + etag, '"other", ' + etag):
        status, h, body = get(emu, tok, rows_path(tid, pageSize=1000),
                              headers={"If-None-Match": value})
        assert status == 304, value
        assert body == b""
        assert h["ETag"] == etag
    # on a later page too
    status, _, body = get(emu, tok, rows_path(
        tid, pageSize=1000, cursor=first["nextPageCursor"]),
        headers={"If-None-Match": etag})
    assert status == 304
    # another tag: the page itself
    status, _, body = get(emu, tok, rows_path(tid, pageSize=10),
                          headers={"If-None-Match": '"nope"'})
    assert status == 200 and len(body["rows"]) == 10
    # after a write the old tag no longer matches
    emu.upsert("Customers", [{"customer_id": "CUST-00001",
                              "loyalty_tier": 9}])
    status, h, body = get(emu, tok, rows_path(tid, pageSize=10),
                          headers={"If-None-Match": etag})
    assert status == 200 and h["ETag"] != etag


def test_schema_304(emu, tok):
    tid = emu.table_id("Customers")
    path = "/api/v2/datatables/%s/schema" % tid
    status, headers, _ = get(emu, tok, path)
    status, _, body = get(emu, tok, path,
                          headers={"If-None-Match": headers["ETag"]})
    assert status == 304 and body == b""


def test_cursor_usable_after_a_change(emu, tok):
    tid = emu.table_id("Customers")
    status, h1, page1 = get(emu, tok, rows_path(tid, pageSize=1000))
    cursor = page1["nextPageCursor"]
    # delete a row of the first page: positions shift by one
    gone = page1["rows"][0]
    status, _, _ = emu.request("DELETE", ROWS % tid + "/" + gone["id"],
                               token=tok)
    assert status == 204
    status, h2, page2 = get(emu, tok, rows_path(tid, pageSize=1000,
                                                cursor=cursor))
    assert status == 200
    assert h2["ETag"] != h1["ETag"]
    # a position: the row that was first on page 2 moved to page 1 and is
    # skipped; the client learns it only from the changed ETag
    assert page2["rows"][0]["columns"]["customer_id"] == "CUST-01002"
    assert len(page2["rows"]) == 1000
    # an insert goes to the end and does not disturb positions
    emu.upsert("Customers", [{"customer_id": "ZZZ"}])
    status, _, again = get(emu, tok, rows_path(tid, pageSize=1000,
                                               cursor=cursor))
    assert status == 200 and again["rows"] == page2["rows"]


def test_cursor_past_the_end_after_deletes(emu_factory):
    e = emu_factory("--generate", "S:4")
    tok = e.token()
    tid = e.table_id("S")
    status, _, page = get(e, tok, rows_path(tid, pageSize=3))
    for r in page["rows"]:
        e.request("DELETE", ROWS % tid + "/" + r["id"], token=tok)
    status, _, rest = get(e, tok, rows_path(tid, pageSize=3,
                                            cursor=page["nextPageCursor"]))
    assert status == 200
    assert rest["rows"] == []
    assert not rest.get("nextPageCursor")


def test_invalid_cursor(emu, tok):
    tid = emu.table_id("Customers")
    other = emu.table_id("RoutingRules")
    _, _, page = get(emu, tok, rows_path(tid, pageSize=10))
    good = page["nextPageCursor"]
    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[-1] ^= 1  # a forged check value
    forged = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[16] ^= 1  # another position with the old check value
    moved = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    for cursor, table in (("garbage", tid), ("eyJ9", tid),
                          (forged, tid), (moved, tid), (good, other),
                          (good + "AA", tid)):
        status, headers, body = get(emu, tok, ROWS % table + "?cursor="
                                    + urllib.parse.quote(cursor))
        assert status == 400, cursor
        assert body["code"] == "invalid.cursor"
        assert body["contextId"] == headers["ININ-Correlation-Id"]
    status, _, body = get(emu, tok, ROWS % tid + "?cursor=")
    assert status == 400 and body["code"] == "invalid.cursor"
    status, _, _ = get(emu, tok, rows_path(tid, pageSize=10, cursor=good))
    assert status == 200


def test_listing_cursor_is_not_a_rows_cursor(emu_factory):
    args = []
    for i in range(3):
        args += ["--generate", "T%d:5" % i]
    e = emu_factory(*args)
    tok = e.token()
    _, _, lst = get(e, tok, "/api/v2/datatables?pageSize=1")
    status, _, body = get(e, tok, ROWS % e.table_id("T0") + "?cursor="
                          + lst["nextPageCursor"])
    assert status == 400 and body["code"] == "invalid.cursor"


def test_correlation_id_on_every_response(emu, tok):
    tid = emu.table_id("Customers")
    ids = set()
    for method, path, t in (("GET", "/api/v2/datatables", tok),
                            ("GET", ROWS % tid, tok),
                            ("GET", ROWS % tid, None),
                            ("GET", "/api/v2/nothing", tok),
                            ("GET", "/_emu/stats", None),
                            ("POST", "/oauth/token", None)):
        status, headers, body = emu.request(method, path, token=t)
        cid = headers["ININ-Correlation-Id"]
        assert cid and cid not in ids
        ids.add(cid)
        if status >= 400 and isinstance(body, dict) and "code" in body:
            assert body["contextId"] == cid
            assert body["status"] == status
            assert isinstance(body["message"], str)
            assert isinstance(body["details"], list)


def test_unknown_route_and_method(emu, tok):
    status, _, body = get(emu, tok, "/api/v2/nothing")
    assert status == 404 and body["code"] == "not.found"
    tid = emu.table_id("Customers")
    status, _, body = emu.request("DELETE", ROWS % tid, token=tok)
    assert status == 405


def test_keep_alive(emu, tok):
    tid = emu.table_id("Customers")
    conn = emu.connection()
    try:
        cursor = None
        for _ in range(3):
            path = rows_path(tid, pageSize=1000, **(
                {"cursor": cursor} if cursor else {}))
            status, headers, body = emu.request("GET", path, token=tok,
                                                conn=conn)
            assert status == 200
            cursor = body.get("nextPageCursor")
        assert cursor is None
        sock = conn.sock
        assert sock is not None  # the same connection served all three
    finally:
        conn.close()
