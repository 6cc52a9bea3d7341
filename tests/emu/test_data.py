"""--data folders, --generate tables and the sample data."""
import json
import os
import subprocess

import pytest

from emu import SAMPLE_DATA, Emu, EmuError, emu_binary


def write_table(root, folder, columns, lines):
    d = root / folder
    d.mkdir()
    (d / "schema.json").write_text(json.dumps({"columns": columns}))
    (d / "rows.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def test_data_round_trip_with_percent_decoded_names(emu_factory, tmp_path):
    cols = [{"name": "k", "type": "string", "isPrimaryKey": True},
            {"name": "n", "type": "number", "isPrimaryKey": False},
            {"name": "i", "type": "integer", "isPrimaryKey": False}]
    lines = [b'{"k":"a","n":1.10,"i":3}', b'{"k":"b","n":2.50}',
             b'{"i":-7,"k":"c/d","n":1e-3}', b'', b'{"k":"e","n":null}']
    write_table(tmp_path, "Holidays%2F2025", cols, lines)
    write_table(tmp_path, "50%25 off", cols, lines[:1])
    write_table(tmp_path, "Plain", cols, [])
    (tmp_path / "not-a-table.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    e = emu_factory("--data", str(tmp_path))
    names = [t["name"] for t in e.tables()]
    assert names == ["50% off", "Holidays/2025", "Plain"]
    assert e.schema("Holidays/2025") == {"columns": cols}
    tok = e.token()
    conn = e.connection()
    conn.request("GET", "/api/v2/datatables/%s/rows"
                 % e.table_id("Holidays/2025"),
                 headers={"Authorization": "Bearer " + tok})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    assert b'"columns":{"k":"a","n":1.10,"i":3}' in body
    assert b'"columns":{"k":"b","n":2.50}' in body
    assert b'"columns":{"k":"c/d","n":1e-3,"i":-7}' in body
    assert b'"columns":{"k":"e"}' in body
    assert [r["k"] for r in e.rows("Holidays/2025")] == ["a", "b", "c/d", "e"]
    assert e.rows("Plain") == []


@pytest.mark.parametrize("lines, why", [
    ([b'{"k": 1}'], "type.mismatch"),
    ([b'{"k": "a"}', b'{"k": "a"}'], "duplicate key"),
    ([b'{"x": "a"}'], "unknown.column"),
    ([b'not json'], "not JSON"),
])
def test_bad_data_is_refused(tmp_path, lines, why):
    write_table(tmp_path, "T", [{"name": "k", "type": "string",
                                 "isPrimaryKey": True}], lines)
    proc = subprocess.run([emu_binary(), "--listen", "127.0.0.1:0",
                           "--data", str(tmp_path)],
                          capture_output=True, timeout=60)
    assert proc.returncode != 0
    assert why in proc.stderr.decode()
    assert b"listening" not in proc.stdout


def test_bad_schema_is_refused(tmp_path):
    d = tmp_path / "T"
    d.mkdir()
    (d / "schema.json").write_text(
        '{"columns": [{"name": "k", "type": "string"}]}')  # no key
    with pytest.raises(EmuError):
        Emu.start("--data", str(tmp_path))


@pytest.mark.parametrize("args", [
    ["--generate", "nocount"], ["--generate", "X:many"],
    ["--client", "justid"], ["--client", "id:secret:data-table:admin"],
    ["--rate-limit", "ten"], ["--rate-limit", "10/0"],
    ["--fail-rate", "1.5"], ["--latency", "-1"], ["--max-page-size", "0"],
    ["--token-ttl", "x"], ["--listen", "nowhere"], ["--bogus"],
    ["--generate", "A:1", "--generate", "A:2"],
])
def test_bad_command_lines_are_refused(args):
    proc = subprocess.run([emu_binary(), *args], capture_output=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0, args
    assert b"listening" not in proc.stdout


def test_help():
    proc = subprocess.run([emu_binary(), "--help"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0
    for opt in (b"--listen", b"--data", b"--generate", b"--client",
                b"--rate-limit", b"--latency", b"--fail-rate",
                b"--token-ttl", b"--max-page-size"):
        assert opt in proc.stdout


def test_generate_is_deterministic(emu_factory):
    a = emu_factory("--generate", "Big:3000", "--generate", "Small:3")
    b = emu_factory("--generate", "Big:3000")
    ra, rb = a.row_entries("Big"), b.row_entries("Big")
    assert ra == rb
    assert len(ra) == 3000
    assert a.table_id("Big") == b.table_id("Big")
    assert [c["name"] for c in a.schema("Big")["columns"]][:3] == [
        "customer_id", "last_interaction", "loyalty_tier"]
    types = {c["name"]: c["type"] for c in a.schema("Big")["columns"]}
    assert types["customer_id"] == "string"
    assert types["last_interaction"] == "date"
    assert types["loyalty_tier"] == "number"
    assert len({r["columns"]["customer_id"] for r in ra}) == 3000
    assert len(a.rows("Small")) == 3


def test_sample_tables(emu):
    customers = emu.rows("Customers")
    assert len(customers) == 3000
    assert emu.schema("Customers")["columns"][0] == {
        "name": "customer_id", "type": "string", "isPrimaryKey": True}
    rules = emu.rows("RoutingRules")
    assert any("note" not in r for r in rules)
    assert any("priority" not in r for r in rules)
    assert len({(r["region"], r["queue"]) for r in rules}) == len(rules)
    assert len(emu.rows("Holidays/2025")) == 12
    # the sample files hold fractional text that must survive
    with open(os.path.join(SAMPLE_DATA, "Customers", "rows.jsonl"),
              "rb") as f:
        sample = f.read()
    assert b'"loyalty_tier":2.50}' in sample
    assert b'"loyalty_tier":1.10}' in sample


def test_multiple_data_and_generate(emu_factory):
    e = emu_factory("--data", SAMPLE_DATA, "--generate", "Big:10")
    assert [t["name"] for t in e.tables()] == [
        "Big", "Customers", "Holidays/2025", "RoutingRules"]
