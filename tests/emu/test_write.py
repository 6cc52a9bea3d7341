"""Batched upserts, insert-only writes, row deletes and schema PUT."""
import json

ROWS = "/api/v2/datatables/%s/rows"
SCHEMA = "/api/v2/datatables/%s/schema"


def post(emu, tok, tid, body, upsert=True, **kw):
    path = ROWS % tid + ("?upsert=true" if upsert else "")
    return emu.request("POST", path, body=body, token=tok, **kw)


def batch(*cols):
    return [{"columns": c} for c in cols]


def test_upsert_counts(emu, tok):
    tid = emu.table_id("Customers")
    status, headers, body = post(emu, tok, tid, batch(
        {"customer_id": "CUST-00001", "loyalty_tier": 5},
        {"customer_id": "CUST-00002", "loyalty_tier": 4},
        {"customer_id": "NEW-1", "loyalty_tier": 1},
        {"customer_id": "NEW-2"},
        {"customer_id": "NEW-3", "last_interaction": "2024-06-01T09:15:00Z"}))
    assert status == 200
    assert body == {"inserted": 3, "updated": 2}
    assert headers["ETag"].startswith('"')
    rows = emu.rows("Customers")
    assert len(rows) == 3003
    assert rows[0] == {"customer_id": "CUST-00001", "loyalty_tier": 5}
    assert rows[-3:] == [
        {"customer_id": "NEW-1", "loyalty_tier": 1},
        {"customer_id": "NEW-2"},
        {"customer_id": "NEW-3", "last_interaction": "2024-06-01T09:15:00Z"}]


def test_update_keeps_id_and_position(emu, tok):
    before = emu.row_entries("RoutingRules")
    target = before[5]
    cols = dict(target["columns"])
    cols["priority"] = 42
    body = emu.upsert("RoutingRules", [cols])
    assert body == {"inserted": 0, "updated": 1}
    after = emu.row_entries("RoutingRules")
    assert [r["id"] for r in after] == [r["id"] for r in before]
    assert after[5]["columns"]["priority"] == 42
    assert after[5]["columns"]["region"] == target["columns"]["region"]


def test_upsert_replaces_columns_and_null_means_absent(emu, tok):
    tid = emu.table_id("RoutingRules")
    status, _, _ = post(emu, tok, tid, batch(
        {"region": "emea", "queue": "billing", "priority": None,
         "enabled": False, "note": None}))
    assert status == 200
    row = [r for r in emu.rows("RoutingRules")
           if r["region"] == "emea" and r["queue"] == "billing"][0]
    assert row == {"region": "emea", "queue": "billing", "enabled": False}


def test_values_text_and_column_order_kept(emu, tok):
    tid = emu.table_id("RoutingRules")
    # columns sent out of schema order, numbers with telling text
    raw = (b'[{"columns": {"note": "a/b \\"q\\" \\u00e9", "enabled": true,'
           b' "priority": 7, "queue": "q1", "region": "r1"}}]')
    status, _, _ = emu.request("POST", ROWS % tid + "?upsert=true", body=raw,
                               token=tok)
    assert status == 200
    cid = emu.table_id("Customers")
    raw = (b'[{"columns": {"loyalty_tier": 1.10, "customer_id": "T1"}},'
           b' {"columns": {"customer_id": "T2", "loyalty_tier": 2.50}},'
           b' {"columns": {"customer_id": "T3", "loyalty_tier": 1E+3}},'
           b' {"columns": {"customer_id": "T4", "loyalty_tier": -0.0}},'
           b' {"columns": {"customer_id": "T5", "loyalty_tier": 12345678901234}}]')
    status, _, _ = emu.request("POST", ROWS % cid + "?upsert=true", body=raw,
                               token=tok)
    assert status == 200
    text = b""
    for table in (tid, cid):
        conn = emu.connection()
        cursor = None
        while True:
            path = ROWS % table + "?pageSize=1000" + (
                "&cursor=" + cursor if cursor else "")
            conn.request("GET", path,
                         headers={"Authorization": "Bearer " + tok})
            resp = conn.getresponse()
            page = resp.read()
            assert resp.status == 200
            text += page
            cursor = json.loads(page).get("nextPageCursor")
            if not cursor:
                break
        conn.close()
    assert (b'"columns":{"region":"r1","queue":"q1","priority":7,'
            b'"enabled":true,"note":"a/b \\"q\\" \xc3\xa9"}') in text
    assert b'"columns":{"customer_id":"T1","loyalty_tier":1.10}' in text
    assert b'"columns":{"customer_id":"T2","loyalty_tier":2.50}' in text
    assert b'"columns":{"customer_id":"T3","loyalty_tier":1E+3}' in text
    assert b'"columns":{"customer_id":"T4","loyalty_tier":-0.0}' in text
    assert (b'"columns":{"customer_id":"T5","loyalty_tier":12345678901234}'
            in text)
    # the sample data's own fractional text survives loading
    assert b'"loyalty_tier":2.50}' in text or b'"loyalty_tier":1.10}' in text


def test_all_or_nothing_with_details(emu, tok):
    tid = emu.table_id("Customers")
    before = emu.rows("Customers")
    etag = emu.request("GET", ROWS % tid + "?pageSize=1", token=tok)[1]["ETag"]
    status, headers, body = post(emu, tok, tid, batch(
        {"customer_id": "OK-1", "loyalty_tier": 1},
        {"customer_id": "OK-2", "loyalty_tier": "gold"},
        {"customer_id": "CUST-00001", "loyalty_tier": 3},
        {"customer_id": "OK-3", "last_interaction": "yesterday"}))
    assert status == 400
    assert body["code"] == "invalid.row"
    assert body["status"] == 400
    assert body["contextId"] == headers["ININ-Correlation-Id"]
    assert body["details"] == [
        {"row": 1, "fieldName": "loyalty_tier", "errorCode": "type.mismatch"},
        {"row": 3, "fieldName": "last_interaction",
         "errorCode": "type.mismatch"}]
    assert emu.rows("Customers") == before
    status, h, _ = emu.request("GET", ROWS % tid + "?pageSize=1", token=tok)
    assert h["ETag"] == etag


def test_type_rules(emu, tok):
    tid = emu.table_id("RoutingRules")
    cid = emu.table_id("Customers")
    bad = [
        (tid, {"region": "r", "queue": "q", "priority": 1.5}, "priority"),
        (tid, {"region": "r", "queue": "q", "priority": 1.0}, "priority"),
        (tid, {"region": "r", "queue": "q", "priority": 1e2}, "priority"),
        (tid, {"region": "r", "queue": "q", "priority": "3"}, "priority"),
        (tid, {"region": "r", "queue": "q", "enabled": "true"}, "enabled"),
        (tid, {"region": "r", "queue": "q", "enabled": 1}, "enabled"),
        (tid, {"region": "r", "queue": "q", "note": 3}, "note"),
        (tid, {"region": 1, "queue": "q"}, "region"),
        (cid, {"customer_id": "x", "loyalty_tier": "3"}, "loyalty_tier"),
        (cid, {"customer_id": "x", "loyalty_tier": True}, "loyalty_tier"),
        (cid, {"customer_id": "x", "last_interaction": "2024-05-12"},
         "last_interaction"),
        (cid, {"customer_id": "x", "last_interaction": "2024-13-12T00:00:00Z"},
         "last_interaction"),
        (cid, {"customer_id": "x", "last_interaction": "2024-05-12T14:30:00"},
         "last_interaction"),
        (cid, {"customer_id": "x", "last_interaction": 1715524200},
         "last_interaction"),
    ]
    for table, cols, field in bad:
        status, _, body = post(emu, tok, table, batch(cols))
        assert status == 400, cols
        assert body["details"] == [{"row": 0, "fieldName": field,
                                    "errorCode": "type.mismatch"}], cols
    good = [
        (tid, {"region": "r", "queue": "q", "priority": -3, "enabled": False,
               "note": ""}),
        (cid, {"customer_id": "x", "loyalty_tier": 7}),
        (cid, {"customer_id": "y", "loyalty_tier": 0.5,
               "last_interaction": "2024-05-12T14:30:00.123+02:00"}),
        (cid, {"customer_id": "z", "last_interaction": "2024-02-29T23:59:60Z"}),
    ]
    for table, cols in good:
        status, _, body = post(emu, tok, table, batch(cols))
        assert status == 200, (cols, body)


def test_unknown_column(emu, tok):
    tid = emu.table_id("Customers")
    status, _, body = post(emu, tok, tid, batch(
        {"customer_id": "A"},
        {"customer_id": "B", "favourite_colour": "blue"}))
    assert status == 400
    assert body["code"] == "invalid.row"
    assert body["details"] == [{"row": 1, "fieldName": "favourite_colour",
                                "errorCode": "unknown.column"}]


def test_missing_key(emu, tok):
    tid = emu.table_id("RoutingRules")
    status, _, body = post(emu, tok, tid, batch(
        {"region": "r", "queue": "q"},
        {"region": "r", "priority": 1},
        {"region": "r", "queue": None}))
    assert status == 400
    assert body["code"] == "invalid.row"
    assert body["details"] == [
        {"row": 1, "fieldName": "queue", "errorCode": "missing.key"},
        {"row": 2, "fieldName": "queue", "errorCode": "missing.key"}]


def test_row_without_columns(emu, tok):
    tid = emu.table_id("Customers")
    status, _, body = post(emu, tok, tid, [{"columns": {"customer_id": "A"}},
                                           {"id": "x"}])
    assert status == 400
    assert body["code"] == "invalid.row"
    assert body["details"][0]["row"] == 1


def test_duplicate_key_in_batch(emu, tok):
    tid = emu.table_id("RoutingRules")
    status, _, body = post(emu, tok, tid, batch(
        {"region": "x", "queue": "1"},
        {"region": "x", "queue": "2"},
        {"region": "x", "queue": "1", "priority": 3}))
    assert status == 400
    assert body["code"] == "invalid.row"
    assert body["details"] == [{"row": 2, "fieldName": "region",
                                "errorCode": "duplicate.key"}]
    assert not [r for r in emu.rows("RoutingRules") if r["region"] == "x"]


def test_insert_only_409(emu, tok):
    tid = emu.table_id("Customers")
    before = emu.rows("Customers")
    status, headers, body = post(emu, tok, tid, batch(
        {"customer_id": "FRESH"}, {"customer_id": "CUST-00002"}),
        upsert=False)
    assert status == 409
    assert body["code"] == "duplicate.key"
    assert body["contextId"] == headers["ININ-Correlation-Id"]
    assert body["details"] == [{"row": 1, "fieldName": "customer_id",
                                "errorCode": "duplicate.key"}]
    assert emu.rows("Customers") == before
    status, _, body = post(emu, tok, tid, batch({"customer_id": "FRESH"}),
                           upsert=False)
    assert status == 200 and body == {"inserted": 1, "updated": 0}


def test_413_over_1000_rows(emu, tok):
    tid = emu.table_id("Customers")
    status, headers, body = post(emu, tok, tid, batch(
        *({"customer_id": "R%d" % i} for i in range(1001))))
    assert status == 413
    assert body["code"] == "request.entity.too.large"
    assert body["contextId"] == headers["ININ-Correlation-Id"]
    assert len(emu.rows("Customers")) == 3000


def test_1000_rows_of_a_few_megabytes(emu, tok):
    tid = emu.table_id("RoutingRules")
    note = "n" * 3000
    rows = batch(*({"region": "big", "queue": "q%04d" % i, "note": note}
                   for i in range(1000)))
    assert len(json.dumps(rows)) > 3_000_000
    status, _, body = post(emu, tok, tid, rows)
    assert status == 200, body
    assert body == {"inserted": 1000, "updated": 0}
    got = [r for r in emu.rows("RoutingRules") if r["region"] == "big"]
    assert len(got) == 1000 and got[999]["note"] == note


def test_body_not_an_array_of_objects(emu, tok):
    tid = emu.table_id("Customers")
    for raw in (b'{"columns": {"customer_id": "A"}}', b'not json', b'',
                b'[1, 2]', b'[]', b'[{"columns": {"customer_id": "A"}}] x',
                b'"text"', b'[[]]'):
        status, headers, body = emu.request(
            "POST", ROWS % tid + "?upsert=true", body=raw, token=tok)
        assert status == 400, raw
        assert body["code"] == "bad.request", raw
        assert body["contextId"] == headers["ININ-Correlation-Id"]


def test_delete_row(emu, tok):
    tid = emu.table_id("Holidays/2025")
    before = emu.row_entries("Holidays/2025")
    victim = before[3]
    status, headers, body = emu.request(
        "DELETE", ROWS % tid + "/" + victim["id"], token=tok)
    assert status == 204
    assert body == b""
    after = emu.row_entries("Holidays/2025")
    assert after == before[:3] + before[4:]
    status, _, body = emu.request(
        "DELETE", ROWS % tid + "/" + victim["id"], token=tok)
    assert status == 404
    status, _, body = emu.request(
        "DELETE", ROWS % tid + "/no-such-row", token=tok)
    assert status == 404
    # the key can come back, as a new row at the end
    emu.upsert("Holidays/2025", [victim["columns"]])
    assert emu.row_entries("Holidays/2025")[-1]["columns"] == \
        victim["columns"]


def schema_of(emu, tok, tid):
    status, headers, body = emu.request("GET", SCHEMA % tid, token=tok)
    assert status == 200
    return headers["ETag"], body


def test_schema_put_needs_if_match(emu, tok):
    tid = emu.table_id("Customers")
    etag, schema = schema_of(emu, tok, tid)
    schema["columns"].append({"name": "email", "type": "string",
                              "isPrimaryKey": False})
    status, headers, body = emu.request("PUT", SCHEMA % tid, body=schema,
                                        token=tok)
    assert status == 428
    assert body["contextId"] == headers["ININ-Correlation-Id"]
    now, current = schema_of(emu, tok, tid)
    assert now == etag
    assert len(current["columns"]) == 3


def test_schema_put_stale_version_412(emu, tok):
    tid = emu.table_id("Customers")
    etag, schema = schema_of(emu, tok, tid)
    schema["columns"].append({"name": "email", "type": "string",
                              "isPrimaryKey": False})
    status, h, body = emu.request("PUT", SCHEMA % tid, body=schema,
                                  token=tok, headers={"If-Match": etag})
    assert status == 200
    new_etag = h["ETag"]
    assert new_etag != etag
    assert body == schema
    assert schema_of(emu, tok, tid) == (new_etag, schema)
    schema["columns"].append({"name": "phone", "type": "string",
                              "isPrimaryKey": False})
    status, _, body = emu.request("PUT", SCHEMA % tid, body=schema,
                                  token=tok, headers={"If-Match": etag})
    assert status == 412
    assert body["code"] == "version.mismatch"
    # unquoted If-Match works as well
    status, _, body = emu.request("PUT", SCHEMA % tid, body=schema,
                                  token=tok,
                                  headers={"If-Match": new_etag.strip('"')})
    assert status == 200


def test_schema_put_additive_only(emu, tok):
    tid = emu.table_id("RoutingRules")
    etag, schema = schema_of(emu, tok, tid)
    cols = schema["columns"]

    def variant(columns):
        return {"columns": columns}

    changes = [
        cols[:-1],                                              # remove
        [dict(c, name="notes") if c["name"] == "note" else c    # rename
         for c in cols],
        [dict(c, type="string") if c["name"] == "priority" else c  # retype
         for c in cols],
        [dict(c, isPrimaryKey=False) if c["name"] == "queue" else c  # key
         for c in cols],
        [dict(c, isPrimaryKey=True) if c["name"] == "note" else c
         for c in cols],
        cols + [{"name": "k2", "type": "string", "isPrimaryKey": True}],
        [cols[1], cols[0]] + cols[2:],                          # reorder
    ]
    for columns in changes:
        status, _, body = emu.request("PUT", SCHEMA % tid,
                                      body=variant(columns), token=tok,
                                      headers={"If-Match": etag})
        assert status == 400, columns
        assert body["code"] == "schema.change.not.allowed", columns
    assert schema_of(emu, tok, tid) == (etag, schema)
    # additions, even in the middle, are fine; old rows have no value there
    grown = cols[:2] + [{"name": "weight", "type": "number",
                         "isPrimaryKey": False}] + cols[2:]
    status, _, body = emu.request("PUT", SCHEMA % tid, body=variant(grown),
                                  token=tok, headers={"If-Match": etag})
    assert status == 200
    assert body == variant(grown)
    rows = emu.rows("RoutingRules")
    assert all("weight" not in r for r in rows)
    emu.upsert("RoutingRules", [{"region": "emea", "queue": "billing",
                                 "note": "n", "weight": 2.5, "priority": 1}])
    row = [r for r in emu.rows("RoutingRules")
           if (r["region"], r["queue"]) == ("emea", "billing")][0]
    assert list(row) == ["region", "queue", "weight", "priority", "note"]


def test_schema_put_bad_body(emu, tok):
    tid = emu.table_id("Customers")
    etag, _ = schema_of(emu, tok, tid)
    for body in ({"columns": []}, {"cols": []}, [],
                 {"columns": [{"name": "a", "type": "float",
                               "isPrimaryKey": True}]}):
        status, _, reply = emu.request("PUT", SCHEMA % tid, body=body,
                                       token=tok, headers={"If-Match": etag})
        assert status == 400, body
        assert reply["code"] == "bad.request"


def test_body_over_64_mib_is_413(emu, tok):
    tid = emu.table_id("Customers")
    raw = b'[{"columns": {"customer_id": "' + b"x" * (65 << 20) + b'"}}]'
    status, headers, body = emu.request(
        "POST", ROWS % tid + "?upsert=true", body=raw, token=tok)
    assert status == 413
    assert body["code"] == "request.entity.too.large"
    assert "X-RateLimit-Remaining" in headers
    assert len(emu.rows("Customers")) == 3000
