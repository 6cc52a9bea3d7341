"""schema.json writes and new tables (issue 14): a whole new schema.json
adds the columns it adds; every other change is refused with EINVAL before
anything is sent; a 412 is a conflict (EAGAIN) and schema.json shows the
server's schema again. mkdir + schema.json creates a table (flows), rmdir
deletes one only with allow_delete. Checked with real tools (cp, jq-like
edits through Python, mkdir, rmdir), the API and /_emu/stats."""
import copy
import errno
import json
import os
import subprocess

import pytest

from emu import FLOWS, SAMPLE_PRODUCTION
from mount import DATA_DIR, dtfsctl


def run(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True)


def ok(cmd):
    p = run(cmd)
    assert p.returncode == 0, (cmd, p.stderr.decode(errors="replace"))
    return p.stdout


def route(emu, name):
    return emu.stats()["by_route"].get(name, 0)


def writes(emu):
    """Every request that could change something, by route."""
    return {k: v for k, v in emu.stats()["by_route"].items()
            if k in ("schema_put", "rows_upsert", "row_delete",
                     "flows_table", "flows_list", "flows_row_post",
                     "flows_row_put", "flows_row_delete", "import_job")
            and not k.startswith("flows_list")}


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def write_schema(path, doc, tmp_path):
    src = tmp_path / "new-schema.json"
    src.write_text(json.dumps(doc, indent=2) + "\n")
    return run(f"cp '{src}' '{path}'")


@pytest.fixture
def cursor(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu, opts="revalidate=600").start()


@pytest.fixture
def flows(emu_factory, mount_factory):
    emu = emu_factory("--data", SAMPLE_PRODUCTION)
    return emu, mount_factory(emu, opts="api=flows").start()


# ---- cursor dialect ----------------------------------------------------------

def test_adding_a_column_lands_and_the_views_follow(cursor, tmp_path):
    emu, m = cursor
    path = m.file("Customers", "schema.json")
    doc = read_json(path)
    ok(f"cat '{m.file('Customers', 'rows.csv')}' > /dev/null")
    doc["columns"].append({"name": "segment", "type": "string",
                           "isPrimaryKey": False})
    s0 = route(emu, "schema_put")
    p = write_schema(path, doc, tmp_path)
    assert p.returncode == 0, p.stderr
    assert route(emu, "schema_put") == s0 + 1
    names = [c["name"] for c in emu.schema("Customers")["columns"]]
    assert names == ["customer_id", "last_interaction", "loyalty_tier",
                     "segment"]
    # the file shows the new schema at once, and rows.csv its column
    assert [c["name"] for c in read_json(path)["columns"]] == names
    with open(m.file("Customers", "rows.csv"), "rb") as f:
        assert f.readline() == b"customer_id,last_interaction,loyalty_tier," \
                               b"segment\r\n"
        assert f.readline().endswith(b",\r\n")  # no value yet
    # and the new column can be imported into
    src = tmp_path / "seg.csv"
    src.write_text("customer_id,segment\nCUST-00001,gold\n")
    ok(f"cp '{src}' '{m.file('Customers', 'rows.csv')}'")
    got = {r["customer_id"]: r for r in emu.rows("Customers")}
    assert got["CUST-00001"]["segment"] == "gold"


def test_the_same_schema_again_sends_nothing(cursor, tmp_path):
    emu, m = cursor
    path = m.file("Customers", "schema.json")
    before = writes(emu)
    ok(f"cp '{path}' '{tmp_path}/x.json' && cp '{tmp_path}/x.json' '{path}'")
    assert writes(emu) == before


def _forbidden(doc):
    """(what, changed schema, the column the message must name)"""
    cols = doc["columns"]
    out = []
    d = copy.deepcopy(doc)
    del d["columns"][2]
    out.append(("remove", d, "loyalty_tier"))
    d = copy.deepcopy(doc)
    d["columns"][2]["name"] = "tier"
    out.append(("rename", d, "loyalty_tier"))
    d = copy.deepcopy(doc)
    d["columns"][2]["type"] = "string"
    out.append(("retype", d, "loyalty_tier"))
    d = copy.deepcopy(doc)
    d["columns"][1]["isPrimaryKey"] = True
    out.append(("key", d, "last_interaction"))
    d = copy.deepcopy(doc)
    d["columns"].append({"name": "region", "type": "string",
                         "isPrimaryKey": True})
    out.append(("new key", d, "region"))
    assert len(cols) == 3
    return out


def test_each_forbidden_change_is_refused_with_nothing_sent(cursor,
                                                             tmp_path):
    emu, m = cursor
    path = m.file("Customers", "schema.json")
    doc = read_json(path)
    before = writes(emu)
    for what, changed, column in _forbidden(doc):
        p = write_schema(path, changed, tmp_path)
        assert p.returncode != 0, what
        assert b"Invalid argument" in p.stderr, (what, p.stderr)
        assert f"'{column}'" in m.stderr(), what
        assert writes(emu) == before, what
    # not a schema at all (shells ignore close() errors: ask close itself)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"[1, 2]\n")
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    assert writes(emu) == before
    # the table is as it was, and schema.json shows it
    assert emu.schema("Customers")["columns"] == doc["columns"]
    assert read_json(path) == doc
    # dtfsctl refuses the same, with the same message
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(_forbidden(doc)[2][1]))
    rc, _, err = dtfsctl(emu, m.cache_dir, "schema", "Customers", str(src))
    assert rc != 0 and "'loyalty_tier'" in err and "type" in err
    assert writes(emu) == before


def test_a_412_is_a_conflict_and_shows_the_servers_schema(cursor, tmp_path):
    emu, m = cursor
    path = m.file("Customers", "schema.json")
    mine = read_json(path)          # cached with its version
    # someone else adds a column meanwhile
    tid = emu.table_id("Customers")
    _, hdrs, theirs = emu.api("GET", f"/api/v2/datatables/{tid}/schema")
    theirs["columns"].append({"name": "theirs", "type": "number",
                              "isPrimaryKey": False})
    emu.api("PUT", f"/api/v2/datatables/{tid}/schema", body=theirs,
            headers={"If-Match": hdrs["ETag"]})
    mine["columns"].append({"name": "mine", "type": "string",
                            "isPrimaryKey": False})
    s0 = route(emu, "schema_put")
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, json.dumps(mine).encode())
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EAGAIN
    assert route(emu, "schema_put") == s0 + 1   # sent, answered 412
    assert "412" in m.stderr() and "conflict" in m.stderr()
    names = [c["name"] for c in read_json(path)["columns"]]
    assert "theirs" in names and "mine" not in names


def test_dtfsctl_schema_adds_a_column(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    cache = str(tmp_path / "cache")
    rc, out, err = dtfsctl(emu, cache, "schema", "Holidays/2025")
    assert rc == 0, err
    doc = json.loads(out)
    doc["columns"].append({"name": "note", "type": "string",
                           "isPrimaryKey": False})
    src = tmp_path / "s.json"
    src.write_text(json.dumps(doc))
    rc, _, err = dtfsctl(emu, cache, "schema", "Holidays/2025", str(src))
    assert rc == 0, err
    assert emu.schema("Holidays/2025")["columns"][-1]["name"] == "note"


# ---- new tables and rmdir ----------------------------------------------------

def test_mkdir_is_refused_by_the_cursor_api(cursor):
    emu, m = cursor
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(m.path, "NewTable"))
    assert e.value.errno == errno.EPERM
    assert "cursor API has no table creation" in m.stderr()
    assert not os.path.exists(os.path.join(m.path, "NewTable"))


def test_rmdir_of_a_table_is_refused_without_the_option(cursor):
    emu, m = cursor
    before = writes(emu)
    with pytest.raises(OSError) as e:
        os.rmdir(m.table("Customers"))
    assert e.value.errno == errno.EPERM
    assert "allow_delete" in m.stderr()
    assert "Customers" in [t["name"] for t in emu.tables()]
    assert writes(emu) == before


NEW_SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object", "required": ["key"], "additionalProperties": False,
    "properties": {
        "key": {"$id": "/properties/key", "type": "string",
                "title": "Queue", "displayOrder": 0},
        "open": {"$id": "/properties/open", "type": "boolean",
                 "displayOrder": 1},
        "weight": {"$id": "/properties/weight", "type": "integer",
                   "displayOrder": 2},
    },
}


def test_mkdir_schema_then_cp_creates_and_fills_a_table(flows, tmp_path):
    emu, m = flows
    d = os.path.join(m.path, "Queues")
    s0 = route(emu, "flows_list")
    os.mkdir(d)
    # pending: only in this mount, nothing sent
    assert "Queues" in os.listdir(m.path)
    assert os.listdir(d) == ["schema.json"]
    assert route(emu, "flows_list") == s0
    assert "Queues" not in [t["name"] for t in emu.flows_tables()]
    # rmdir of a pending directory removes it, still nothing sent
    os.rmdir(d)
    assert "Queues" not in os.listdir(m.path)
    os.mkdir(d)
    p = write_schema(os.path.join(d, "schema.json"), NEW_SCHEMA, tmp_path)
    assert p.returncode == 0, p.stderr
    tables = {t["name"]: t for t in emu.flows_tables(expand=True)}
    assert set(tables["Queues"]["schema"]["properties"]) == {
        "key", "open", "weight"}
    assert set(os.listdir(d)) >= {"schema.json", "rows.jsonl", "rows.csv"}
    src = tmp_path / "q.csv"
    src.write_text("key,open,weight\nsupport,true,3\nsales,false,1\n")
    ok(f"cp '{src}' '{d}/rows.csv'")
    got = emu.flows_rows(tables["Queues"]["id"])
    assert sorted((r["key"], r["open"], r["weight"]) for r in got) == [
        ("sales", False, 1), ("support", True, 3)]
    with open(os.path.join(d, "rows.csv"), "rb") as f:
        assert f.read().splitlines()[0] == b"key,open,weight"


def test_flows_schema_addition_puts_the_whole_table(flows, tmp_path):
    emu, m = flows
    path = m.file("PriceList", "schema.json")
    doc = read_json(path)
    doc["properties"]["color"] = {"$id": "/properties/color",
                                  "type": "string", "displayOrder": 5}
    s0 = route(emu, "flows_table")
    p = write_schema(path, doc, tmp_path)
    assert p.returncode == 0, p.stderr
    assert route(emu, "flows_table") > s0
    tid = emu.flows_table_id("PriceList")
    _, _, t = emu.api("GET", f"{FLOWS}/{tid}?expand=schema")
    assert "color" in t["schema"]["properties"]
    assert t["name"] == "PriceList"
    # retyping is refused before anything is sent
    doc["properties"]["price"]["type"] = "string"
    s1 = route(emu, "flows_table")
    p = write_schema(path, doc, tmp_path)
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert route(emu, "flows_table") == s1
    assert "'price'" in m.stderr()


def test_rmdir_deletes_with_allow_delete(emu_factory, mount_factory):
    emu = emu_factory("--data", SAMPLE_PRODUCTION)
    m = mount_factory(emu, opts="api=flows,allow_delete").start()
    os.rmdir(m.table("PriceList"))
    assert "PriceList" not in [t["name"] for t in emu.flows_tables()]
    assert "PriceList" not in os.listdir(m.path)


def test_dtfsctl_create_then_import(emu_factory, tmp_path):
    emu = emu_factory("--data", SAMPLE_PRODUCTION)
    cache = str(tmp_path / "cache")
    src = tmp_path / "s.json"
    src.write_text(json.dumps(NEW_SCHEMA))
    rc, _, err = dtfsctl(emu, cache, "create", "Queues", str(src),
                         opts="api=flows")
    assert rc == 0, err
    assert "Queues" in [t["name"] for t in emu.flows_tables()]
    # the name is taken now
    rc, _, err = dtfsctl(emu, cache, "create", "Queues", str(src),
                         opts="api=flows")
    assert rc != 0
    # the cursor API cannot create tables: refused, nothing sent
    emu2 = emu_factory("--data", DATA_DIR)
    rc, _, err = dtfsctl(emu2, str(tmp_path / "c2"), "create", "Queues",
                         str(src))
    assert rc != 0 and "cursor API has no table creation" in err


def test_in_place_edit_with_truncate_lands(cursor):
    # an editor's in-place save: read, rewrite from 0, ftruncate, close
    emu, m = cursor
    path = m.file("RoutingRules", "schema.json")
    with open(path, "r+") as f:
        doc = json.loads(f.read())
        doc["columns"].append({"name": "weight", "type": "integer",
                               "isPrimaryKey": False})
        f.seek(0)
        f.write(json.dumps(doc))
        f.truncate()
    assert emu.schema("RoutingRules")["columns"][-1]["name"] == "weight"


def test_cursor_rmdir_with_allow_delete_is_refused(emu_factory,
                                                   mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="allow_delete").start()
    with pytest.raises(OSError) as e:
        os.rmdir(m.table("Customers"))
    assert e.value.errno == errno.EPERM
    assert "cursor API cannot delete tables" in m.stderr()
    assert "Customers" in [t["name"] for t in emu.tables()]


def test_flows_removing_or_rekeying_is_refused(flows, tmp_path):
    emu, m = flows
    path = m.file("PriceList", "schema.json")
    doc = read_json(path)
    before = writes(emu)
    d = copy.deepcopy(doc)
    del d["properties"]["stock"]
    p = write_schema(path, d, tmp_path)
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert "'stock'" in m.stderr()
    d = copy.deepcopy(doc)
    d["properties"]["active"]["type"] = "integer"
    p = write_schema(path, d, tmp_path)
    assert p.returncode != 0 and "'active'" in m.stderr()
    assert writes(emu) == before


def test_save_through_a_scratch_file_and_rename(cursor):
    # editors and `jq … > tmp && mv tmp schema.json` write a temporary file
    # in the directory and rename it onto schema.json (and rows.csv)
    emu, m = cursor
    path = m.file("Customers", "schema.json")
    doc = read_json(path)
    bad = copy.deepcopy(doc)
    del bad["columns"][1]
    tmp = m.file("Customers", ".schema.json.swp")
    with open(tmp, "w") as f:
        json.dump(bad, f)
    before = writes(emu)
    with pytest.raises(OSError) as e:
        os.rename(tmp, path)
    assert e.value.errno == errno.EINVAL
    assert writes(emu) == before
    assert "'last_interaction'" in m.stderr()
    doc["columns"].append({"name": "via_rename", "type": "boolean",
                           "isPrimaryKey": False})
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.rename(tmp, path)
    assert emu.schema("Customers")["columns"][-1]["name"] == "via_rename"
    assert not os.path.exists(tmp)
    # a CSV renamed onto rows.csv imports as CSV
    tmp = m.file("Customers", "new.csv")
    with open(tmp, "w") as f:
        f.write("customer_id,via_rename\r\nCUST-00002,true\r\n")
    os.rename(tmp, m.file("Customers", "rows.csv"))
    got = {r["customer_id"]: r for r in emu.rows("Customers")}
    assert got["CUST-00002"]["via_rename"] is True
