"""rows.csv (issue 14): the version rows.jsonl shows, as RFC 4180 CSV, and
writing it imports with everything rows.jsonl writes have.

Real mounts against dtfs-emu; checked with real tools (cat, cp, head) and
Python's csv module as an independent reader, the table's rows through the
API, rejects.jsonl and the emulator's request counters."""
import csv
import errno
import io
import json
import os
import subprocess

import pytest

from mount import DATA_DIR

CUSTOMERS = ["customer_id", "last_interaction", "loyalty_tier"]
ROUTING = ["region", "queue", "priority", "enabled", "note"]


def run(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True)


def ok(cmd):
    p = run(cmd)
    assert p.returncode == 0, (cmd, p.stderr.decode(errors="replace"))
    return p.stdout


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def rejects(m, table):
    return [json.loads(line)
            for line in slurp(m.file(table, "rejects.jsonl")).splitlines()]


def route(emu, name):
    return emu.stats()["by_route"].get(name, 0)


def csv_value(v):
    """A JSON value as the CSV field the contract says."""
    if v is None:
        return ""
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def parse_csv(data):
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@pytest.fixture
def sample(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu).start()


# ---- export ----------------------------------------------------------------

def test_csv_export_is_stable_and_equal_to_jsonl(sample):
    emu, m = sample
    assert "rows.csv" in os.listdir(m.table("Customers"))
    path = m.file("Customers", "rows.csv")
    s0 = route(emu, "rows_get")
    first = slurp(path)
    fetched = route(emu, "rows_get") - s0
    assert fetched >= 1
    # the same bytes again, from the cache pages: no row page refetched
    assert slurp(path) == first
    assert ok(f"cat '{path}'") == first
    assert route(emu, "rows_get") - s0 == fetched
    # st_size is exact once a reader converted the complete version
    assert os.stat(path).st_size == len(first)

    assert first.startswith(b"customer_id,last_interaction,loyalty_tier\r\n")
    assert first.endswith(b"\r\n") and b"\n" not in first.replace(b"\r\n", b"")
    records = parse_csv(first)
    # numbers as their text, as in rows.jsonl
    jsonl = [json.loads(line, parse_float=str, parse_int=str) for line in
             slurp(m.file("Customers", "rows.jsonl")).splitlines()]
    assert records[0] == CUSTOMERS
    assert records[1:] == [[csv_value(r.get(c)) for c in CUSTOMERS]
                           for r in jsonl]
    # numbers keep their text (4.50 stays 4.50)
    assert b",4.50\r\n" in first
    # head reads a prefix; random reads agree with the whole
    assert ok(f"head -c 1000 '{path}'") == first[:1000]
    with open(path, "rb") as f:
        f.seek(len(first) - 5000)
        assert f.read(100) == first[-5000:-4900]
        f.seek(10)
        assert f.read(50) == first[10:60]


def test_awkward_text_round_trips(sample, tmp_path):
    emu, m = sample
    awkward = [
        ["emea", "q1", "1", "true", "a, comma"],
        ["emea", "q2", "2", "false", 'say "hi"'],
        ["emea", "q3", "3", "true", "two\nlines\r\nand crlf"],
        ["emea", "q4", "4", "false", "Ångström, café ☕ 日本"],
        ["emea", "q5", "5", "true", ""],
        ["emea", "q6", "6", "true", " padded "],
    ]
    src = tmp_path / "in.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        # every field quoted: "" is the empty string, and "3" in a number
        # column is the number 3
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(ROUTING)
        w.writerows(awkward)
    ok(f"cp '{src}' '{m.file('RoutingRules', 'rows.csv')}'")
    got = {(r["region"], r["queue"]): r for r in emu.rows("RoutingRules")}
    for rec in awkward:
        r = got[(rec[0], rec[1])]
        assert r["note"] == rec[4]
        assert r["priority"] == int(rec[2])
        assert r["enabled"] == (rec[3] == "true")
    back = parse_csv(slurp(m.file("RoutingRules", "rows.csv")))
    assert back[0] == ROUTING
    for rec in awkward:
        assert rec in back[1:]


def test_round_trip_sends_nothing(sample, tmp_path):
    emu, m = sample
    for table in ("Customers", "RoutingRules", "Holidays/2025"):
        path = m.file(table, "rows.csv")
        x = tmp_path / "x.csv"
        ok(f"cp '{path}' '{x}'")
        s = emu.stats()["by_route"]
        before = {k: v for k, v in s.items() if "upsert" in k or "put" in k
                  or "post" in k or "delete" in k}
        ok(f"cp '{x}' '{path}'")
        s = emu.stats()["by_route"]
        after = {k: v for k, v in s.items() if "upsert" in k or "put" in k
                 or "post" in k or "delete" in k}
        assert after == before, table
        assert rejects(m, table) == []


# ---- import ----------------------------------------------------------------

def test_bad_records_quarantined_by_record_number(sample, tmp_path):
    emu, m = sample
    src = tmp_path / "bad.csv"
    src.write_bytes(
        b"customer_id,loyalty_tier,last_interaction\n"
        b"NEW-1,\"3\",2024-01-01T00:00:00Z\n"      # "3" in a number column
        b"NEW-2,gold,2024-01-01T00:00:00Z\n"       # 2: not a number
        b"NEW-3,1,not a date\n"                    # 3: not a date
        b"\n"                                      # blank: no record
        b"NEW-4,2\n"                               # 4: too few fields
        b"\"NEW-5\nmultiline\",5,2024-01-01T00:00:00Z\n"
        b"NEW-6,x\"y,2024-01-01T00:00:00Z\n"       # 6: stray quote
        b"NEW-7,7,2024-01-01T00:00:00Z")           # no line end
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.csv')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    rej = rejects(m, "Customers")
    assert [r["record"] for r in rej] == [2, 3, 4, 6]
    assert "loyalty_tier" in rej[0]["error"] and rej[0]["text"] == \
        "NEW-2,gold,2024-01-01T00:00:00Z"
    assert "line 4" in rej[1]["error"]
    assert "line 6" in rej[2]["error"]
    got = {r["customer_id"]: r for r in emu.rows("Customers")}
    assert got["NEW-1"]["loyalty_tier"] == 3
    assert got["NEW-5\nmultiline"]["loyalty_tier"] == 5
    assert got["NEW-7"]["loyalty_tier"] == 7
    for k in ("NEW-2", "NEW-3", "NEW-4", "NEW-6"):
        assert k not in got


def test_header_drift_fails_the_write_and_sends_nothing(sample, tmp_path):
    emu, m = sample
    path = m.file("Customers", "rows.csv")
    s0 = route(emu, "rows_upsert")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, b"customer_id,segment\r\nNEW-1,gold\r\n")
        assert e.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError) as e:
            os.close(fd)
        assert e.value.errno == errno.EINVAL
    assert route(emu, "rows_upsert") == s0
    assert "segment" in rejects(m, "Customers")[0]["error"]
    assert "segment" in m.stderr()
    # a header without the key, and no header at all, fail too
    for body in (b"loyalty_tier\r\n3\r\n", b""):
        src = tmp_path / "h.csv"
        src.write_bytes(body + b"\n" if body else b"\n\n")
        p = run(f"cp '{src}' '{path}'")
        assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert route(emu, "rows_upsert") == s0


def test_platform_style_csv_with_bom_and_crlf_imports(sample, tmp_path):
    emu, m = sample
    src = tmp_path / "export.csv"
    src.write_bytes(
        "\ufeffregion,queue,priority,enabled,note\r\n"
        "apac,\"billing, tier 2\",7,TRUE,\"he said \"\"ok\"\"\"\r\n"
        "apac,support,8,False,\r\n".encode("utf-8"))
    s0 = route(emu, "rows_upsert")
    ok(f"cp '{src}' '{m.file('RoutingRules', 'rows.csv')}'")
    assert route(emu, "rows_upsert") == s0 + 1
    got = {(r["region"], r["queue"]): r for r in emu.rows("RoutingRules")}
    assert got[("apac", "billing, tier 2")] == {
        "region": "apac", "queue": "billing, tier 2", "priority": 7,
        "enabled": True, "note": 'he said "ok"'}
    assert got[("apac", "support")]["enabled"] is False
    # the cursor API has nulls: an unquoted empty field is no value
    assert "note" not in got[("apac", "support")]
    # the same file again: nothing changed, nothing sent
    ok(f"cp '{src}' '{m.file('RoutingRules', 'rows.csv')}'")
    assert route(emu, "rows_upsert") == s0 + 1


# ---- the production dialect ------------------------------------------------

@pytest.fixture
def flows(emu_factory, mount_factory):
    from emu import SAMPLE_PRODUCTION
    emu = emu_factory("--data", SAMPLE_PRODUCTION)
    return emu, mount_factory(emu, opts="api=flows").start()


FLOWS_WRITES = ("flows_row_post", "flows_row_put", "flows_row_delete",
                "import_job", "upload")


def test_platform_export_matches_and_imports_unchanged(flows, tmp_path):
    emu, m = flows
    tid = emu.flows_table_id("PriceList")
    exported = emu.export_csv(tid)
    ours = slurp(m.file("PriceList", "rows.csv"))
    assert ours.splitlines()[0] == b"key,name,price,stock,active"
    # the same records as the platform's export job (the order of rows
    # and the quoting style may differ: compare as parsed CSV)
    assert sorted(parse_csv(ours)[1:]) == sorted(parse_csv(exported)[1:])
    assert parse_csv(ours)[0] == parse_csv(exported)[0]
    src = tmp_path / "export.csv"
    src.write_bytes(exported)
    before = {k: route(emu, k) for k in FLOWS_WRITES}
    ok(f"cp '{src}' '{m.file('PriceList', 'rows.csv')}'")
    assert {k: route(emu, k) for k in FLOWS_WRITES} == before
    assert rejects(m, "PriceList") == []


def test_flows_csv_import_converts_by_type(flows, tmp_path):
    emu, m = flows
    tid = emu.flows_table_id("PriceList")
    src = tmp_path / "in.csv"
    src.write_bytes(b"\xef\xbb\xbfkey,price,stock,active,name\r\n"
                    b"SKU-9001,\"3\",4,TRUE,\"Tea, green\"\r\n"
                    b"SKU-9002,gold,1,true,x\r\n"
                    b"SKU-9003,2.5,,false,\r\n")
    p = run(f"cp '{src}' '{m.file('PriceList', 'rows.csv')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    rej = rejects(m, "PriceList")
    assert [r["record"] for r in rej] == [2]
    got = {r["key"]: r for r in emu.flows_rows(tid)}
    assert got["SKU-9001"]["price"] == 3
    assert got["SKU-9001"]["name"] == "Tea, green"
    assert got["SKU-9001"]["active"] is True
    assert "SKU-9002" not in got
    # the platform has no null: an empty string field is ""
    assert got["SKU-9003"]["name"] == ""


def test_change_during_cold_csv_read_is_estale(emu_factory, mount_factory):
    emu = emu_factory("--generate", "Big:20000")
    # lazy_size: a stat does not read the table, the read stays cold
    m = mount_factory(emu, opts="revalidate=0,lazy_size").start()
    path = m.file("Big", "rows.csv")
    assert os.stat(path).st_size == 0          # nothing cached: unknown
    with open(path, "rb", buffering=0) as f:
        f.read(1000)
        emu.upsert("Big", [{"customer_id": "CHANGED-1",
                            "last_interaction": "2024-01-01T00:00:00Z",
                            "loyalty_tier": 1}])
        with pytest.raises(OSError) as e:
            while f.read(1 << 16):
                pass
        assert e.value.errno == errno.ESTALE
    assert "changed during export" in m.stderr()
    # the next open: a fresh snapshot, whole, the same rows as rows.jsonl
    after = slurp(path)
    assert b"CHANGED-1" in after
    assert after.count(b"\r\n") == 20002
    assert len(parse_csv(after)) - 1 == \
        len(slurp(m.file("Big", "rows.jsonl")).splitlines())


def test_big_csv_import_goes_in_chunks(emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:0")
    m = mount_factory(emu).start()
    n = 2000
    src = tmp_path / "big.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["customer_id", "last_interaction", "loyalty_tier",
                    "visits", "active"])
        for i in range(n):
            w.writerow(["IMP-%05d" % i, "2024-01-02T03:04:05Z",
                        "%d.5" % (i % 5), i, "true" if i % 2 else "false"])
    s0 = route(emu, "rows_upsert")
    # dd with small blocks: records split across writes anywhere
    ok(f"dd if='{src}' of='{m.file('Big', 'rows.csv')}' bs=777 "
       f"status=none")
    assert route(emu, "rows_upsert") - s0 == n // 250
    rows = {r["customer_id"]: r for r in emu.rows("Big")}
    assert len(rows) == n
    assert rows["IMP-00007"]["visits"] == 7
    assert rows["IMP-00007"]["active"] is True
    st = json.loads(slurp(m.file("Big", "status.json")))["import"]
    assert st["state"] == "done" and st["rows_valid"] == n


def test_csv_size_follows_a_change_on_the_server(emu_factory, mount_factory):
    """rows.csv's st_size is the size of the version an open would read,
    as rows.jsonl's is: a size recorded for the version before a change on
    the server is not reported for the new one."""
    import time
    emu = emu_factory("--generate", "Big:300")
    m = mount_factory(emu, opts="revalidate=0").start()
    path = m.file("Big", "rows.csv")
    first = slurp(path)
    assert os.stat(path).st_size == len(first)
    emu.upsert("Big", [{"customer_id": "A-LONGER-KEY-THAN-BEFORE",
                        "last_interaction": "2024-01-01T00:00:00Z",
                        "loyalty_tier": 1}])
    time.sleep(1.2)  # past attr_timeout: the kernel asks dtfs again
    size = os.stat(path).st_size
    after = slurp(path)
    assert len(after) > len(first)
    assert size == len(after)


def test_csv_size_is_kept_across_mounts(emu_factory, mount_factory,
                                        tmp_path):
    """rows.csv's size, once measured, is kept in the cache with the
    version: a later mount (even with lazy_size, which never converts to
    measure) and dtfsctl find it, and a new version drops it."""
    emu = emu_factory("--generate", "Big:300")
    cache = str(tmp_path / "cache")
    m = mount_factory(emu, cache_dir=cache).start()
    path = m.file("Big", "rows.csv")
    data = slurp(path)
    m.stop()
    m = mount_factory(emu, cache_dir=cache, opts="lazy_size").start()
    path = m.file("Big", "rows.csv")
    assert os.stat(path).st_size == len(data)
    assert slurp(path) == data
