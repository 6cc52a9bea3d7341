"""The production dialect: rows by page number and one at a time, limits,
both dialects on the same data, numbers' text, 429s and faults."""
import json
import threading
import urllib.parse

import pytest

from emu import FLOWS, SAMPLE_DATA, SAMPLE_PRODUCTION
from test_flows_tables import PROPS, assert_error, create

SAMPLE_ARGS = ("--data", SAMPLE_DATA, "--data", SAMPLE_PRODUCTION)


@pytest.fixture
def emu(emu_factory):  # noqa: F811  (the sample tables and PriceList)
    return emu_factory(*SAMPLE_ARGS)


def rows_path(tid, q=""):
    return "%s/%s/rows%s" % (FLOWS, tid, q)


def row_path(tid, key):
    return "%s/%s/rows/%s" % (FLOWS, tid, urllib.parse.quote(key, safe=""))


def test_rows_paging(emu):
    tid = emu.flows_table_id("PriceList")
    # showbrief defaults to true: keys only
    _, h, body = emu.api("GET", rows_path(tid, "?pageSize=7"))
    assert "X-RateLimit-Remaining" not in h
    assert body["entities"] == [{"key": "SKU-%04d" % i} for i in range(1, 8)]
    assert body["total"] == 40 and body["pageCount"] == 6
    assert body["pageSize"] == 7 and body["pageNumber"] == 1
    assert "pageNumber=2" in body["nextUri"]
    # the last page is short; past the end is empty, not an error
    _, _, last = emu.api("GET", rows_path(tid, "?pageSize=7&pageNumber=6"
                                          "&showbrief=false"))
    assert [r["key"] for r in last["entities"]] == [
        "SKU-%04d" % i for i in range(36, 41)]
    assert "nextUri" not in last and "pageNumber=5" in last["previousUri"]
    assert set(last["entities"][0]) == {"key", "name", "price", "stock",
                                        "active"}
    _, _, past = emu.api("GET", rows_path(tid, "?pageSize=7&pageNumber=7"))
    assert past["entities"] == [] and past["total"] == 40
    assert past["pageCount"] == 6
    # default pageSize 25; descending order
    _, _, d = emu.api("GET", rows_path(tid, "?sortOrder=descending"))
    assert len(d["entities"]) == 25 and d["entities"][0] == {"key": "SKU-0040"}
    # the whole table through pages equals the sample file
    want = [json.loads(line) for line in
            open(SAMPLE_PRODUCTION + "/PriceList/rows.jsonl", encoding="utf-8")]
    assert emu.flows_rows(tid, page_size=9) == want


def test_page_size_limits(emu_factory):
    e = emu_factory("--generate", "Big:1200")
    tid = e.flows_table_id("Big")
    _, _, body = e.api("GET", rows_path(tid, "?pageSize=500&pageNumber=3"
                                        "&showbrief=false"))
    assert len(body["entities"]) == 200 and body["pageCount"] == 3
    assert body["entities"][0]["key"] == "CUST-0001001"
    for q in ("?pageSize=501", "?pageSize=0", "?pageSize=x",
              "?pageNumber=0", "?showbrief=maybe", "?sortOrder=up"):
        status, h, err = e.api("GET", rows_path(tid, q), expect=None)
        assert_error(status, h, err, 400, "bad.request")
    e.config(max_flows_page_size=1000)
    e.api("GET", rows_path(tid, "?pageSize=1000"))
    f = emu_factory("--generate", "Big:10", "--max-flows-page-size", "5")
    status, _, _ = f.api("GET", rows_path(f.flows_table_id("Big"),
                                          "?pageSize=6"), expect=None)
    assert status == 400
    assert f.config()["max_flows_page_size"] == 5


def test_create_fills_defaults(emu):
    t = create(emu, "Mail")
    _, h, row = emu.api("POST", rows_path(t["id"]), body={"key": "a@b"})
    assert row == {"key": "a@b", "score": 0.5, "visits": 0,
                   "deleted": False, "note": "n/a"}
    _, _, row = emu.api("POST", rows_path(t["id"]), body={
        "key": "c@d", "score": 1.25, "visits": 3, "deleted": True,
        "note": None})
    assert row == {"key": "c@d", "score": 1.25, "visits": 3,
                   "deleted": True, "note": "n/a"}
    _, _, got = emu.api("GET", row_path(t["id"], "c@d") + "?showbrief=false")
    assert got == row
    _, _, brief = emu.api("GET", row_path(t["id"], "c@d"))
    assert brief == {"key": "c@d"}


def test_row_refusals(emu):
    t = create(emu, "Mail")
    emu.api("POST", rows_path(t["id"]), body={"key": "a"})
    status, h, err = emu.api("POST", rows_path(t["id"]), body={"key": "a"},
                             expect=None)
    assert_error(status, h, err, 409, "flows.datatables.row.already.exists")
    for body in ({"key": "b", "score": "1"}, {"key": "b", "visits": 1.5},
                 {"key": "b", "deleted": 0}, {"key": "b", "nope": 1},
                 {"score": 1}, {"key": ""}, {"key": 7}, [], "junk"):
        status, h, err = emu.api("POST", rows_path(t["id"]), body=body,
                                 expect=None)
        assert_error(status, h, err, 400, "flows.datatables.syntax.error")
    status, _, err = emu.api("POST", rows_path(t["id"]),
                             body={"key": "b", "nope": 1}, expect=None)
    assert err["details"][0]["fieldName"] == "nope"
    assert [r["key"] for r in emu.flows_rows(t["id"])] == ["a"]


def test_put_get_delete_row_by_encoded_key(emu):
    t = create(emu, "Keys")
    for key in ("a/b c", "100%", "é?&=#+", "x" * 256):
        _, _, row = emu.api("POST", rows_path(t["id"]), body={
            "key": key, "visits": 1})
        _, _, got = emu.api("GET", row_path(t["id"], key) + "?showbrief=false")
        assert got == row
        _, _, put = emu.api("PUT", row_path(t["id"], key), body={
            "key": key, "visits": 2, "note": "edited"})
        assert put["visits"] == 2 and put["note"] == "edited"
        # PUT replaces the row: omitted properties take their defaults
        assert put["score"] == 0.5
        # the body may leave the key out
        _, _, put = emu.api("PUT", row_path(t["id"], key), body={"visits": 3})
        assert put["key"] == key and put["visits"] == 3
        emu.api("DELETE", row_path(t["id"], key), expect=204)
        status, h, err = emu.api("GET", row_path(t["id"], key), expect=None)
        assert_error(status, h, err, 404, "flows.datatables.row.not.found")
        status, h, err = emu.api("DELETE", row_path(t["id"], key),
                                 expect=None)
        assert_error(status, h, err, 404, "flows.datatables.row.not.found")
    status, h, err = emu.api("PUT", row_path(t["id"], "missing"),
                             body={"key": "missing"}, expect=None)
    assert_error(status, h, err, 404, "flows.datatables.row.not.found")
    emu.api("POST", rows_path(t["id"]), body={"key": "k"})
    status, h, err = emu.api("PUT", row_path(t["id"], "k"),
                             body={"key": "other"}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.syntax.error")
    status, h, err = emu.api("POST", rows_path(t["id"]),
                             body={"key": "x" * 257}, expect=None)
    assert_error(status, h, err, 400, "flows.datatables.syntax.error")


def test_row_limit(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--max-rows", "3")
    t = create(e, "Small")
    for k in "abc":
        e.api("POST", rows_path(t["id"]), body={"key": k})
    status, h, err = e.api("POST", rows_path(t["id"]), body={"key": "d"},
                           expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    assert err["limit"]["value"] == 3
    # updates still work at the limit
    e.api("PUT", row_path(t["id"], "a"), body={"visits": 9})
    e.config(max_rows=4)
    e.api("POST", rows_path(t["id"]), body={"key": "d"})
    assert len(e.flows_rows(t["id"])) == 4


def test_default_row_limit(emu_factory):
    e = emu_factory("--generate", "Full:5000")
    tid = e.flows_table_id("Full")
    status, h, err = e.api("POST", rows_path(tid), body={"key": "one-more"},
                           expect=None)
    assert_error(status, h, err, 400, "flows.datatables.limit.exceeded")
    assert err["limit"]["value"] == 5000


def test_both_dialects_share_rows_and_version(emu):
    tid = emu.flows_table_id("Customers")
    cursor_rows = "/api/v2/datatables/%s/rows" % tid
    _, h, _ = emu.api("GET", cursor_rows + "?pageSize=1")
    etag = h["ETag"]
    # a production write is a new version for the cursor dialect
    _, _, row = emu.api("POST", rows_path(tid), body={
        "key": "CUST-NEW", "loyalty_tier": 2.50,
        "last_interaction": "2024-01-02T03:04:05Z"})
    _, h, _ = emu.api("GET", cursor_rows + "?pageSize=1",
                      headers={"If-None-Match": etag})
    assert h["ETag"] != etag
    assert emu.rows("Customers")[-1] == {
        "customer_id": "CUST-NEW", "last_interaction": "2024-01-02T03:04:05Z",
        "loyalty_tier": 2.50}
    # a cursor write is seen by the production dialect
    emu.upsert("Customers", [{"customer_id": "CUST-00001",
                              "loyalty_tier": 5}])
    _, _, got = emu.api("GET", row_path(tid, "CUST-00001") +
                        "?showbrief=false")
    assert got == {"key": "CUST-00001", "loyalty_tier": 5}
    # a production delete is a cursor delete
    emu.api("DELETE", row_path(tid, "CUST-NEW"), expect=204)
    assert "CUST-NEW" not in [r["customer_id"] for r in emu.rows("Customers")]
    # a production row with a non-date string in a date column is refused
    status, _, err = emu.api("POST", rows_path(tid), body={
        "key": "X", "last_interaction": "soon"}, expect=None)
    assert status == 400


def test_numbers_keep_their_text(emu):
    """Issue 11: integers beyond 64 bits came back clamped."""
    big = "9" * 400
    tid = emu.flows_table_id("PriceList")
    raw = '{"key":"BIG","price":%s,"stock":%s}' % ("1.10E+400", big)
    emu.api("POST", rows_path(tid), body=raw.encode())
    conn = emu.connection()
    conn.request("GET", row_path(tid, "BIG") + "?showbrief=false",
                 headers={"Authorization": "Bearer " + emu.token()})
    text = conn.getresponse().read().decode()
    conn.close()
    assert '"price":1.10E+400' in text and '"stock":%s' % big in text
    # an integer column takes a big integer, but not a fraction
    _, _, t = emu.api("POST", FLOWS, body={"name": "Ints", "schema": {
        "properties": {"key": {"type": "string"},
                       "n": {"type": "integer"}, "x": {"type": "number"}}}})
    emu.api("POST", rows_path(t["id"]),
            body=('{"key":"a","n":-%s}' % big).encode())
    status, _, _ = emu.api("POST", rows_path(t["id"]),
                           body=b'{"key":"b","n":1.0}', expect=None)
    assert status == 400
    # the cursor dialect keeps the text too, in and out
    conn = emu.connection()
    auth = {"Authorization": "Bearer " + emu.token()}
    conn.request("POST", "/api/v2/datatables/%s/rows?upsert=true" % t["id"],
                 body='[{"columns":{"key":"c","n":%s}},{"columns":{"key":'
                      '"d","x":-0.000}}]' % big, headers=auth)
    assert conn.getresponse().read()
    conn.request("GET", "/api/v2/datatables/%s/rows" % t["id"], headers=auth)
    text = conn.getresponse().read().decode()
    conn.close()
    assert '"n":-%s,' % big in text
    assert '"columns":{"key":"c","n":%s}' % big in text
    assert '"x":-0.000}' in text


def test_429_without_budget_headers(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--rate-limit", "2/30")
    tok = e.token()
    for _ in range(2):
        status, h, _ = e.request("GET", FLOWS, token=tok)
        assert status == 200 and "X-RateLimit-Remaining" not in h
        assert "X-RateLimit-Reset" not in h
    status, h, err = e.request("GET", FLOWS, token=tok)
    assert_error(status, h, err, 429, "too.many.requests.retry.after")
    assert 1 <= int(h["Retry-After"]) <= 30
    assert err["message"] == ("Rate limit exceeded the maximum. Retry the "
                              "request in [%s] seconds" % h["Retry-After"])
    assert "X-RateLimit-Remaining" not in h and "X-RateLimit-Reset" not in h
    assert not [k for k in h if k.lower().startswith("inin-ratelimit")]
    # the same window as the cursor dialect, which keeps its headers
    status, h, _ = e.request("GET", "/api/v2/datatables", token=tok)
    assert status == 429 and h["X-RateLimit-Remaining"] == "0"


def test_faults_on_production_routes(emu):
    tid = emu.flows_table_id("PriceList")
    emu.config(fail_next=2)
    status, h, err = emu.api("GET", rows_path(tid), expect=None)
    assert_error(status, h, err, 503, "flows.datatables.server.too.busy")
    status, h, err = emu.api("POST", rows_path(tid), body={"key": "F"},
                             expect=None)
    assert status == 503
    emu.api("GET", row_path(tid, "F"), expect=404)  # nothing was written
    emu.config(fail_next=1, fail_next_status=500)
    status, h, err = emu.api("GET", FLOWS, expect=None)
    assert_error(status, h, err, 500, "internal.server.error")
    emu.config(fail_rate=1.0)
    status, _, _ = emu.api("GET", FLOWS, expect=None)
    assert status in (500, 502, 503)


def test_parallel_pages_are_served_concurrently(emu_factory):
    e = emu_factory("--generate", "Big:5000", "--latency", "300")
    tid = e.flows_table_id("Big")
    tok = e.token()
    e.reset_stats()
    out = {}

    def page(n):
        status, _, body = e.request(
            "GET", rows_path(tid, "?pageNumber=%d&pageSize=500"
                             "&showbrief=false" % n), token=tok)
        out[n] = (status, [r["key"] for r in body["entities"]])

    threads = [threading.Thread(target=page, args=(n,)) for n in range(1, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [k for n in range(1, 11) for k in out[n][1]]
    assert keys == ["CUST-%07d" % i for i in range(1, 5001)]
    s = e.stats()
    assert s["by_route"]["flows_rows_get"] == 10
    assert s["rows_served"] == 5000
    assert s["max_in_flight"] > 1


def test_stats_route_names(emu):
    tid = emu.flows_table_id("PriceList")
    emu.reset_stats()
    assert "flows_list" not in emu.stats()["by_route"]
    assert emu.route_count("flows_list") == 0
    emu.api("GET", FLOWS)
    emu.api("POST", FLOWS, body={"name": "S", "schema": {
        "properties": {"key": {"type": "string"}}}})
    emu.api("GET", FLOWS + "/" + tid)
    emu.api("GET", rows_path(tid))
    emu.api("POST", rows_path(tid), body={"key": "S1"})
    emu.api("GET", row_path(tid, "S1"))
    emu.api("PUT", row_path(tid, "S1"), body={"stock": 1})
    emu.api("DELETE", row_path(tid, "S1"), expect=204)
    s = emu.stats()
    assert {k: v for k, v in s["by_route"].items() if v} == {
        "flows_list": 2, "flows_table": 1, "flows_rows_get": 1,
        "flows_row_post": 1, "flows_row_get": 1, "flows_row_put": 1,
        "flows_row_delete": 1}
    assert s["rows_written"] == 2 and s["rows_deleted"] == 1
    assert s["requests_total"] == 8


# ---- the race hook -------------------------------------------------------

def test_race_changes_the_table_just_before_the_nth_request(emu):
    """/_emu/race: a row deleted (or created) just before the nth request
    of a route, as if another client had been quicker; fires once."""
    tid = emu.flows_table_id("PriceList")
    emu.reset_stats()
    armed = emu.race(route="flows_row_get", nth=2, table=tid,
                     delete="SKU-0003")
    assert armed == {"armed": True, "route": "flows_row_get", "nth": 2,
                     "fired": 0}
    # the first GET is served as ever; the second finds the row gone
    status, _, _ = emu.api("GET", row_path(tid, "SKU-0003"), expect=None)
    assert status == 200
    status, h, body = emu.api("GET", row_path(tid, "SKU-0003"), expect=None)
    assert_error(status, h, body, 404, "flows.datatables.row.not.found")
    assert emu.race_state() == {"armed": False, "fired": 1}
    s = emu.stats()
    assert s["by_route"]["flows_row_get"] == 2
    assert s["rows_deleted"] == 1
    # an insert before the first POST: the POST finds the key taken
    row = {"key": "SKU-9999", "name": "raced", "price": 1.5, "stock": 1,
           "active": True}
    emu.race(route="flows_row_post", nth=1, table=tid, insert=row)
    status, h, body = emu.api("POST", rows_path(tid),
                              body=dict(row, name="mine"), expect=None)
    assert status == 409
    _, _, got = emu.api("GET", row_path(tid, "SKU-9999") +
                        "?showbrief=false")
    assert got["name"] == "raced"
    assert emu.race_state()["fired"] == 2
    # {} disarms; bad settings are 400 and arm nothing
    emu.race(route="flows_row_put", nth=1, table=tid, delete="SKU-0001")
    assert emu.race() == {"armed": False, "fired": 2}
    for bad in ({"route": "nope", "nth": 1, "table": tid, "delete": "k"},
                {"route": "flows_row_put", "nth": 0, "table": tid,
                 "delete": "k"},
                {"route": "flows_row_put", "nth": 1, "table": tid},
                {"route": "flows_row_put", "nth": 1, "table": tid,
                 "delete": "k", "insert": {"key": "k"}}):
        status, _, body = emu.request("POST", "/_emu/race", body=bad)
        assert status == 400, bad
    assert emu.race_state() == {"armed": False, "fired": 2}
