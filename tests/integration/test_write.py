"""The write side of the mount (filesystem.md, "Writing rows.jsonl"):
writing rows.jsonl imports the lines written, validated, quarantined,
spooled and upserted in chunks; close() tells the program the truth.

Every test runs real tools (cp, sh redirections, tee, dd, truncate) or
plain system calls and checks what a user would: the table's rows through
the API, rejects.jsonl, status.json, exit codes and errno, and the
emulator's request counters."""
import errno
import json
import math
import os
import re
import subprocess
import threading
import time

import pytest

from mount import DATA_DIR, dtfsctl, expected_jsonl

CUSTOMERS = ["customer_id", "last_interaction", "loyalty_tier"]
GENERATED = ["customer_id", "last_interaction", "loyalty_tier", "visits",
             "active"]
ROUTING = ["region", "queue", "priority", "enabled", "note"]


# ---- helpers -------------------------------------------------------------

def run(cmd, **kw):
    """A shell command; returns the CompletedProcess (never raises)."""
    return subprocess.run(cmd, shell=True, capture_output=True, **kw)


def ok(cmd, **kw):
    p = run(cmd, **kw)
    assert p.returncode == 0, (cmd, p.stderr.decode(errors="replace"))
    return p.stdout


def cust(i, tier=1, day="2024-05-01T10:00:00Z", prefix="NEW"):
    """One Customers line, compact and in schema order (the way rows.jsonl
    shows it), so bytes can be compared after the import."""
    return ('{"customer_id":"%s-%05d","last_interaction":"%s",'
            '"loyalty_tier":%s}' % (prefix, i, day, tier))


def gen_line(i, tier="1", visits=1, active="true"):
    return ('{"customer_id":"IMP-%07d","last_interaction":'
            '"2024-01-02T03:04:05Z","loyalty_tier":%s,"visits":%d,'
            '"active":%s}' % (i, tier, visits, active))


def write_file(path, lines, end="\n"):
    data = "".join(line + end for line in lines)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return str(path)


def by_key(rows, key=("customer_id",)):
    out = {}
    for r in rows:
        k = tuple(r.get(c) for c in key)
        assert k not in out, f"duplicate key {k} in the table"
        out[k] = r
    return out


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def status(m, table):
    with open(m.file(table, "status.json")) as f:
        return json.load(f)


def rejects(m, table):
    with open(m.file(table, "rejects.jsonl"), "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data.splitlines()]


def route(emu, name):
    return emu.stats()["by_route"].get(name, 0)


def wait_for(cond, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sample(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu).start()


# ---- cp lands exactly; a re-run changes nothing ----------------------------

def test_cp_new_and_changed_rows_land_exactly(sample, tmp_path):
    emu, m = sample
    before = emu.rows("Customers")
    changed = [('{"customer_id":"%s","last_interaction":'
                '"2025-01-01T00:00:00Z","loyalty_tier":9.50}'
                % before[i]["customer_id"]) for i in (0, 7, 2999)]
    new = [cust(i, tier=f"{i}.25") for i in range(1, 6)]
    src = write_file(tmp_path / "in.jsonl", changed + new)

    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")

    want = by_key(before)
    for line in changed + new:
        r = json.loads(line)
        want[(r["customer_id"],)] = r
    after = emu.rows("Customers")
    assert len(after) == len(before) + len(new)
    assert by_key(after) == want
    assert rejects(m, "Customers") == []
    # values keep their text through the import: 9.50 stays 9.50
    got = expected_jsonl(emu, "Customers", CUSTOMERS).decode()
    for line in changed + new:
        assert line + "\n" in got


def test_rerunning_the_same_import_changes_nothing(sample, tmp_path):
    emu, m = sample
    before = emu.rows("Customers")
    lines = [cust(i) for i in range(20)] + [
        '{"customer_id":"%s","last_interaction":"2020-02-02T02:02:02Z",'
        '"loyalty_tier":3}' % before[1]["customer_id"]]
    src = write_file(tmp_path / "in.jsonl", lines)
    rows = m.file("Customers", "rows.jsonl")

    ok(f"cp '{src}' '{rows}'")
    first = emu.row_entries("Customers")
    assert len(first) == len(before) + 20
    s0 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    s1 = emu.stats()
    # only what changed is sent: the table already holds every row, so
    # the re-run sends no write request at all
    assert emu.row_entries("Customers") == first
    assert s1["rows_written"] - s0["rows_written"] == 0
    assert s1["by_route"]["rows_upsert"] - s0["by_route"]["rows_upsert"] == 0
    st = status(m, "Customers")["import"]
    assert st["state"] == "done" and st["rows_unchanged"] == len(lines)
    assert st["rows_to_send"] == 0 and st["chunks_sent"] == 0


def test_editing_one_row_of_3000_sends_one_row(sample, tmp_path):
    """The whole table read out, one line edited, written back (what an
    editor's save does): one row goes out, in one request."""
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    assert len(lines) == 3000
    edited = json.loads(lines[1234])
    edited["loyalty_tier"] = 77
    lines[1234] = json.dumps(edited, separators=(",", ":"))
    src = write_file(tmp_path / "edit.jsonl", lines)
    s0 = emu.stats()

    ok(f"cp '{src}' '{rows}'")

    s1 = emu.stats()
    assert s1["rows_written"] - s0["rows_written"] == 1
    assert s1["by_route"]["rows_upsert"] - s0["by_route"]["rows_upsert"] == 1
    got = by_key(emu.rows("Customers"))[(edited["customer_id"],)]
    assert got["loyalty_tier"] == 77
    st = status(m, "Customers")["import"]
    assert st["rows_unchanged"] == 2999 and st["rows_to_send"] == 1
    # and what reads back is the file written
    assert slurp(rows).decode().splitlines() == lines


# ---- shell redirections and the fork/flush rule ---------------------------

def test_shell_redirections_and_tee_import(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    src = write_file(tmp_path / "a.jsonl", [cust(i) for i in range(1, 4)])

    ok(f"sh -c 'cat \"{src}\" > \"{rows}\"'")
    st = status(m, "Customers")["import"]
    assert (st["state"], st["lines_read"], st["chunks_sent"]) == \
        ("done", 3, 1)

    # a subshell's builtins, appended
    ok(f"(echo '{cust(4)}'; echo '{cust(5)}') >> '{rows}'")
    assert status(m, "Customers")["import"]["lines_read"] == 2

    ok(f"printf '%s\\n' '{cust(6)}' '{cust(7)}' | tee '{rows}' > /dev/null")
    ok(f"printf '%s\\n' '{cust(8)}' | tee -a '{rows}' > /dev/null")

    keys = by_key(emu.rows("Customers"))
    for i in range(1, 9):
        assert (f"NEW-{i:05d}",) in keys, i


def test_forked_child_closing_does_not_upload_a_partial_line(sample,
                                                            tmp_path):
    """The shell opens the file; a forked child writes the first half of a
    line and exits (its close flushes); the shell writes the rest. Only
    the opener's flush may upload, so the line arrives whole."""
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    script = tmp_path / "w.sh"
    script.write_text(
        "{ /usr/bin/printf '%s' '{\"customer_id\":\"FORK-1\",'\n"
        "  printf '%s\\n' '\"loyalty_tier\":2}'\n"
        "} > \"$1\"\n")
    ok(f"sh '{script}' '{rows}'")
    assert rejects(m, "Customers") == []
    got = [r for r in emu.rows("Customers")
           if r["customer_id"] == "FORK-1"]
    assert got == [{"customer_id": "FORK-1", "loyalty_tier": 2}]
    st = status(m, "Customers")["import"]
    assert st["chunks_sent"] == 1 and st["lines_read"] == 1


def test_dd_small_blocks_and_unterminated_last_line(sample, tmp_path):
    emu, m = sample
    lines = [cust(i) for i in range(1, 30)]
    src = tmp_path / "in.jsonl"
    src.write_bytes(("\n".join(lines)).encode())  # no final newline
    ok(f"dd if='{src}' of='{m.file('Customers', 'rows.jsonl')}' bs=7 "
       f"status=none")
    keys = by_key(emu.rows("Customers"))
    assert all((f"NEW-{i:05d}",) in keys for i in range(1, 30))
    assert rejects(m, "Customers") == []


# ---- quarantine, drift, duplicates ----------------------------------------

def test_bad_lines_fail_cp_valid_ones_land(sample, tmp_path):
    emu, m = sample
    bad_json = '{"customer_id": "BAD-1", "loyalty_tier": '
    wrong_type = '{"customer_id":"BAD-2","loyalty_tier":"four"}'
    missing_key = '{"last_interaction":"2024-01-01T00:00:00Z"}'
    lines = [cust(1), bad_json, cust(2), wrong_type, missing_key, cust(3)]
    src = write_file(tmp_path / "in.jsonl", lines)
    before = len(emu.rows("Customers"))

    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0
    assert b"Invalid argument" in p.stderr

    keys = by_key(emu.rows("Customers"))
    assert len(keys) == before + 3
    assert all((f"NEW-{i:05d}",) in keys for i in (1, 2, 3))
    assert not any(k[0].startswith("BAD-") for k in keys)
    rej = rejects(m, "Customers")
    assert [r["line"] for r in rej] == [2, 4, 5]
    assert [r["text"] for r in rej] == [bad_json, wrong_type, missing_key]
    assert all(r["error"] for r in rej)
    assert "loyalty_tier" in rej[1]["error"]
    assert "customer_id" in rej[2]["error"]
    st = status(m, "Customers")["import"]
    assert (st["lines_read"], st["rows_valid"], st["quarantined"]) == \
        (6, 3, 3)
    assert st["state"] == "done" and "quarantined" in st["error"]


def test_schema_drift_fails_the_write_and_sends_nothing(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    s0 = route(emu, "rows_upsert")
    fd = os.open(rows, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, ("\n".join(cust(i) for i in range(1, 50)) + "\n")
                 .encode())
        drift = '{"customer_id":"NEW-00050","segment":"gold"}'
        with pytest.raises(OSError) as e:
            os.write(fd, (cust(60) + "\n" + drift + "\n").encode())
        assert e.value.errno == errno.EINVAL
        # the handle stays failed
        with pytest.raises(OSError) as e:
            os.write(fd, (cust(70) + "\n").encode())
        assert e.value.errno == errno.EINVAL
    finally:
        with pytest.raises(OSError) as e:
            os.close(fd)
        assert e.value.errno == errno.EINVAL
    assert route(emu, "rows_upsert") == s0
    assert not any(r["customer_id"].startswith("NEW-")
                   for r in emu.rows("Customers"))
    rej = rejects(m, "Customers")
    assert len(rej) == 1 and rej[0]["line"] == 51
    assert "segment" in rej[0]["error"] and rej[0]["text"] == drift
    st = status(m, "Customers")["import"]
    assert st["state"] == "failed" and "segment" in st["error"]
    assert st["chunks_sent"] == 0
    assert "segment" in m.stderr()

    # cp says so too
    src = write_file(tmp_path / "d.jsonl", [cust(1), drift])
    p = run(f"cp '{src}' '{rows}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert route(emu, "rows_upsert") == s0
    # drift on a last line with no newline is only known at close
    src = tmp_path / "e.jsonl"
    src.write_bytes((cust(1) + "\n" + drift).encode())
    p = run(f"cp '{src}' '{rows}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert route(emu, "rows_upsert") == s0
    assert [r["line"] for r in rejects(m, "Customers")] == [2]


def test_duplicate_keys_last_line_wins(sample, tmp_path):
    emu, m = sample
    lines = [cust(1, tier=1), cust(2, tier=1), cust(1, tier=2),
             cust(3, tier=1), cust(1, tier=3), cust(2, tier=7)]
    src = write_file(tmp_path / "in.jsonl", lines)
    before = len(emu.rows("Customers"))
    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    keys = by_key(emu.rows("Customers"))
    assert len(keys) == before + 3
    assert keys[("NEW-00001",)]["loyalty_tier"] == 3
    assert keys[("NEW-00002",)]["loyalty_tier"] == 7
    assert keys[("NEW-00003",)]["loyalty_tier"] == 1
    st = status(m, "Customers")["import"]
    assert (st["lines_read"], st["rows_valid"], st["quarantined"]) == \
        (6, 6, 0)


def test_composite_key_table_imports(sample, tmp_path):
    emu, m = sample
    before = emu.rows("RoutingRules")
    first = before[0]
    lines = [
        # changed: same (region, queue)
        json.dumps({"region": first["region"], "queue": first["queue"],
                    "priority": 99, "enabled": False, "note": "changed"},
                   separators=(",", ":")),
        # new: a known region with a new queue, and a known queue elsewhere
        '{"region":"mars","queue":"billing","priority":1,"enabled":true,'
        '"note":"new"}',
        '{"region":"mars","queue":"vip","priority":2,"enabled":true,'
        '"note":"first"}',
        '{"queue":"vip","region":"mars","priority":3,"enabled":true,'
        '"note":"last wins"}',
        # half a key is quarantined
        '{"region":"mars","priority":1}',
    ]
    src = write_file(tmp_path / "in.jsonl", lines)
    p = run(f"cp '{src}' '{m.file('RoutingRules', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    after = by_key(emu.rows("RoutingRules"), ("region", "queue"))
    assert len(after) == len(before) + 2
    assert after[(first["region"], first["queue"])]["priority"] == 99
    assert after[("mars", "billing")]["note"] == "new"
    assert after[("mars", "vip")]["priority"] == 3
    assert [r["line"] for r in rejects(m, "RoutingRules")] == [5]


def test_table_with_a_slash_and_a_date_key_imports(sample):
    emu, m = sample
    rows = m.file("Holidays/2025", "rows.jsonl")
    assert rows.endswith("Holidays%2F2025/rows.jsonl")
    before = len(emu.rows("Holidays/2025"))
    ok(f"echo '{{\"day\":\"2025-10-03T00:00:00Z\",\"name\":\"Unity\","
       f"\"closed\":false}}' >> '{rows}'")
    ok(f"echo '{{\"day\":\"2025-01-01T00:00:00Z\",\"name\":\"New Year\","
       f"\"closed\":false}}' >> '{rows}'")
    days = by_key(emu.rows("Holidays/2025"), ("day",))
    assert len(days) == before + 1
    assert days[("2025-10-03T00:00:00Z",)]["name"] == "Unity"
    assert days[("2025-01-01T00:00:00Z",)] == {
        "day": "2025-01-01T00:00:00Z", "name": "New Year", "closed": False}


# ---- size, chunks, faults, rate limits --------------------------------------

def test_20k_rows_land_whole_in_chunks_of_250(emu_factory, mount_factory,
                                              tmp_path):
    emu = emu_factory("--generate", "Big:0")
    m = mount_factory(emu).start()
    n = 20000
    src = write_file(tmp_path / "big.jsonl",
                     [gen_line(i, visits=i) for i in range(n)])
    s0 = emu.stats()
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s1 = emu.stats()
    chunks = s1["by_route"]["rows_upsert"] - s0["by_route"]["rows_upsert"]
    written = s1["rows_written"] - s0["rows_written"]
    assert written == n
    assert chunks == math.ceil(n / 250)
    # chunks are at most chunk_rows: with ceil(n/250) of them summing to n,
    # every chunk but the last holds 200..300 rows
    assert 200 <= (written - 250) / (chunks - 1) <= 300
    rows = emu.rows("Big")
    assert len(rows) == n
    assert len(by_key(rows)) == n
    st = status(m, "Big")["import"]
    assert st["chunks_sent"] == st["chunks_acknowledged"] == chunks
    assert (st["lines_read"], st["rows_valid"]) == (n, n)


def test_import_under_5xx_lands_whole_and_counts_retries(
        emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:0")
    # a fresh schema for the whole test: the import's only requests are
    # its upserts
    m = mount_factory(emu, opts="revalidate=600,lazy_size").start()
    slurp(m.file("Big", "schema.json"))
    n = 10000
    src = write_file(tmp_path / "big.jsonl", [gen_line(i) for i in range(n)])
    s0 = emu.stats()
    emu.config(fail_rate=0.15, fail_next=2)
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    emu.config(fail_rate=0.0)
    s1 = emu.stats()
    assert len(by_key(emu.rows("Big"))) == n
    assert s1["rows_written"] - s0["rows_written"] == n
    st = status(m, "Big")["import"]
    fails = sum(s1["by_status"].get(c, 0) - s0["by_status"].get(c, 0)
                for c in ("500", "502", "503"))
    upserts = s1["by_route"]["rows_upsert"] - s0["by_route"]["rows_upsert"]
    # the import reads the (empty) table once before sending, to send only
    # what differs: that one page and its retries are the other requests
    reads = s1["by_route"]["rows_get"] - s0["by_route"]["rows_get"]
    assert fails >= 2 and reads >= 1
    assert st["retries"] == fails - (reads - 1)
    assert st["chunks_sent"] == st["chunks_acknowledged"] == n // 250
    assert upserts == st["chunks_sent"] + st["retries"]
    assert st["state"] == "done" and st["error"] is None


def test_import_under_tight_rate_limit_lands_whole(emu_factory,
                                                   mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:0",
                      "--client", "dtfs-demo:dtfs-demo-secret",
                      "--client", "w:w-secret")
    m = mount_factory(emu, opts="revalidate=600", client=("w", "w-secret"))
    m.start()
    slurp(m.file("Big", "schema.json"))
    n = 1500
    src = write_file(tmp_path / "big.jsonl", [gen_line(i) for i in range(n)])
    emu.config(rate_limit=20, rate_window_s=2)
    s0 = emu.stats()
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s1 = emu.stats()
    emu.config(rate_limit=1000, rate_window_s=60)
    assert s1["rows_written"] - s0["rows_written"] == n
    assert len(by_key(emu.rows("Big"))) == n
    st = status(m, "Big")["import"]
    throttled = s1["by_status"].get("429", 0) - s0["by_status"].get("429", 0)
    upserts = s1["by_route"]["rows_upsert"] - s0["by_route"]["rows_upsert"]
    assert st["throttled_429"] == throttled
    assert upserts == st["chunks_sent"] + st["retries"]
    # a low budget shrinks chunks to 50 rows
    assert st["chunks_acknowledged"] > n // 250
    assert st["state"] == "done"


# ---- truncation never empties a table --------------------------------------

def test_truncate_and_empty_redirect_leave_the_table(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    before = emu.row_entries("Customers")
    data = slurp(rows)
    s0 = emu.stats()
    ok(f"truncate -s 0 '{rows}'")
    ok(f"sh -c ': > \"{rows}\"'")
    ok(f"cp /dev/null '{rows}'")
    open(rows, "w").close()
    os.truncate(rows, 0)
    s1 = emu.stats()
    assert emu.row_entries("Customers") == before
    for r in ("rows_upsert", "row_delete"):
        assert s1["by_route"].get(r, 0) == s0["by_route"].get(r, 0)
    assert slurp(rows) == data
    # an open that wrote nothing is no import: status.json shows none
    assert "import" not in status(m, "Customers")


# ---- one writer per table -------------------------------------------------

def test_second_writer_gets_ebusy(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    fd = os.open(rows, os.O_WRONLY)
    try:
        os.write(fd, (cust(1) + "\n").encode())
        with pytest.raises(OSError) as e:
            os.open(rows, os.O_WRONLY | os.O_APPEND)
        assert e.value.errno == errno.EBUSY
        p = run(f"echo '{cust(2)}' > '{rows}'")
        assert p.returncode != 0 and b"busy" in p.stderr.lower()
        # dtfsctl on the same cache knows too
        code, _, err = dtfsctl(emu, m.cache_dir, "import", "Customers",
                               input=(cust(3) + "\n").encode())
        assert code == 75, err
        # another table is free
        ok(f"echo '{{\"region\":\"x\",\"queue\":\"y\"}}' >> "
           f"'{m.file('RoutingRules', 'rows.jsonl')}'")
    finally:
        os.close(fd)
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys
    assert ("NEW-00002",) not in keys and ("NEW-00003",) not in keys
    # once close() has returned, the next writer is welcome at once
    for i in range(4, 9):
        ok(f"echo '{cust(i)}' > '{rows}'")
    keys = by_key(emu.rows("Customers"))
    assert all((f"NEW-{i:05d}",) in keys for i in range(4, 9))


# ---- permissions ----------------------------------------------------------

def test_read_only_credentials_permission_denied(emu_factory, mount_factory,
                                                 tmp_path):
    emu = emu_factory("--data", DATA_DIR,
                      "--client", "ro:ro-secret:data-table:read")
    m = mount_factory(emu, client=("ro", "ro-secret")).start()
    before = emu.row_entries("Customers")
    src = write_file(tmp_path / "in.jsonl", [cust(i) for i in range(1, 600)])
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0
    assert b"Permission denied" in p.stderr
    assert emu.row_entries("Customers") == before
    assert emu.stats()["rows_written"] == 0
    upserts = emu.stats()["by_route"]["rows_upsert"]
    st = status(m, "Customers")["import"]
    assert st["state"] == "failed" and st["error"]
    # the mount still reads
    assert slurp(m.file("Customers", "rows.jsonl")).count(
        b"\n") == len(before)
    # once refused, later imports fail at open, where a shell sees it
    p = run(f"echo '{{\"customer_id\": \"X\"}}' > "
            f"'{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Permission denied" in p.stderr
    assert emu.stats()["by_route"]["rows_upsert"] == upserts
    # and dtfsctl with the same credentials says 77
    code, _, err = dtfsctl(emu, str(tmp_path / "ctl"), "import", "Customers",
                           str(src), client=("ro", "ro-secret"))
    assert code == 77, err
    assert emu.row_entries("Customers") == before


def test_ro_mount_refuses_writes_with_erofs(emu_factory, mount_factory,
                                            tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="ro").start()
    rows = m.file("Customers", "rows.jsonl")
    before = emu.row_entries("Customers")
    with pytest.raises(OSError) as e:
        os.open(rows, os.O_WRONLY)
    assert e.value.errno == errno.EROFS
    src = write_file(tmp_path / "in.jsonl", [cust(1)])
    p = run(f"cp '{src}' '{rows}'")
    assert p.returncode != 0 and b"Read-only file system" in p.stderr
    p = run(f"truncate -s 0 '{rows}'")
    assert p.returncode != 0
    assert emu.row_entries("Customers") == before
    assert route(emu, "rows_upsert") == 0


# ---- crash in the middle ----------------------------------------------------

def test_kill9_mid_import_then_rerun_converges(emu_factory, mount_factory,
                                               tmp_path):
    emu = emu_factory("--generate", "Big:3000")
    cache = str(tmp_path / "kcache")
    m = mount_factory(emu, cache_dir=cache, opts="upload_workers=1").start()
    rows = m.file("Big", "rows.jsonl")
    slurp(rows)
    # updates of the first 3000 rows and 3000 new ones
    lines = [('{"customer_id":"CUST-%07d","last_interaction":'
              '"2030-01-01T00:00:00Z","loyalty_tier":7}' % i)
             for i in range(1, 3001)]
    lines += [gen_line(i) for i in range(3000)]
    src = write_file(tmp_path / "in.jsonl", lines)
    emu.config(latency_ms=40)
    cp = subprocess.Popen(["cp", src, rows], stderr=subprocess.PIPE)
    try:
        wait_for(lambda: route(emu, "rows_upsert") >= 3, what="upserts")
        # status.json shows the import live
        st = status(m, "Big")["import"]
        assert st["state"] == "uploading"
        assert 0 < st["chunks_acknowledged"] < 24
        m.kill9()
    finally:
        cp.wait(timeout=30)
    assert cp.returncode != 0
    # the chunk that was in flight may still land: wait until the table
    # stops changing, then compare what the next mount reads with the API
    last = None
    while emu.stats()["rows_written"] != last:
        last = emu.stats()["rows_written"]
        time.sleep(0.3)
    emu.config(latency_ms=0)
    partial = len(emu.rows("Big"))
    assert partial < 6000

    m2 = mount_factory(emu, cache_dir=cache).start()
    rows2 = m2.file("Big", "rows.jsonl")
    # the cache is usable: the mount reads the table as the API has it
    assert slurp(rows2) == expected_jsonl(emu, "Big", GENERATED)
    ok(f"cp '{src}' '{rows2}'")
    after = emu.rows("Big")
    assert len(after) == 6000
    keys = by_key(after)
    assert keys[("CUST-0000001",)]["loyalty_tier"] == 7
    assert ("IMP-0002999",) in keys
    assert slurp(rows2) == expected_jsonl(emu, "Big", GENERATED)


# ---- reading after writing, status.json -------------------------------------

def test_read_after_import_shows_new_rows(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    old = slurp(rows)
    os.listdir(m.table("Customers"))
    assert os.stat(rows).st_size == len(old)  # complete: exact size
    src = write_file(tmp_path / "in.jsonl", [cust(i) for i in range(1, 4)])
    ok(f"cp '{src}' '{rows}'")
    new = slurp(rows)
    assert new == expected_jsonl(emu, "Customers", CUSTOMERS)
    assert new.startswith(old)
    assert new.endswith("".join(cust(i) + "\n" for i in range(1, 4))
                        .encode())
    assert ok(f"cat '{rows}'") == new
    assert int(ok(f"wc -l < '{rows}'")) == 3003


def test_status_json_shows_the_import(sample, tmp_path):
    emu, m = sample
    assert "import" not in status(m, "Customers")
    lines = [cust(i) for i in range(1, 300)] + ["not json"] + \
        [cust(i) for i in range(300, 601)]
    src = write_file(tmp_path / "in.jsonl", lines)
    run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    st = status(m, "Customers")["import"]
    assert st["state"] == "done"
    assert st["lines_read"] == 601
    assert st["rows_valid"] == 600
    assert st["quarantined"] == 1
    assert st["chunks_sent"] == st["chunks_acknowledged"] == 3
    assert st["retries"] == 0 and st["throttled_429"] == 0
    assert st["started"] and st["finished"]
    assert "1 lines quarantined" in st["error"] or "1 line" in st["error"]
    # the next import replaces the status; rejects.jsonl keeps the lines
    # of the last import that had any
    src = write_file(tmp_path / "ok.jsonl", [cust(1000)])
    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert [r["text"] for r in rejects(m, "Customers")] == ["not json"]
    st = status(m, "Customers")["import"]
    assert (st["lines_read"], st["quarantined"], st["error"]) == (1, 0, None)


# ---- line formats ---------------------------------------------------------

def test_blank_lines_and_crlf_accepted(sample, tmp_path):
    emu, m = sample
    data = ("\r\n" + cust(1) + "\r\n\r\n   \n" + cust(2) + "\r\n\t\n" +
            '{"customer_id": 5}\r\n' + cust(3) + "\r\n")
    src = tmp_path / "crlf.jsonl"
    src.write_bytes(data.encode())
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0  # only for the one bad line
    keys = by_key(emu.rows("Customers"))
    assert all((f"NEW-{i:05d}",) in keys for i in (1, 2, 3))
    rej = rejects(m, "Customers")
    # lines count from 1 in the written stream, blank ones included
    assert [(r["line"], r["text"]) for r in rej] == \
        [(7, '{"customer_id": 5}')]
    # a clean import leaves the rejects of the last one that had any
    src.write_bytes(data.replace('{"customer_id": 5}\r\n', "").encode())
    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert rejects(m, "Customers") == rej


def test_invalid_utf8_quarantined(sample, tmp_path):
    emu, m = sample
    bad = [b'{"customer_id":"NEW-\xff\xfe","loyalty_tier":1}',
           b'{"customer_id":"OVERLONG-\xc0\x80"}',        # overlong NUL
           b'{"customer_id":"SURROGATE-\xed\xa0\x80"}',  # U+D800
           b'{"customer_id":"BEYOND-\xf5\x80\x80\x80"}',  # > U+10FFFF
           b'{"customer_id":"CUT-\xe2\x82"}']             # truncated
    src = tmp_path / "u.jsonl"
    src.write_bytes(cust(1).encode() + b"\n" + b"\n".join(bad) + b"\n" +
                    cust(2).encode() + b"\n" +
                    '{"customer_id":"NEW-é✓😀"}'.encode() + b"\n")
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys and ("NEW-00002",) in keys
    assert ("NEW-é✓😀",) in keys
    # rejects.jsonl is valid UTF-8 JSON whatever was written (json.loads
    # of bytes decodes strictly)
    rej = rejects(m, "Customers")
    assert [r["line"] for r in rej] == [2, 3, 4, 5, 6]
    assert all("utf" in r["error"].lower() for r in rej)
    assert rej[0]["text"].startswith('{"customer_id":"NEW-')
    assert rej[1]["text"] == '{"customer_id":"OVERLONG-\ufffd\ufffd"}'
    assert ok(f"jq -c .line '{m.file('Customers', 'rejects.jsonl')}'") == \
        b"2\n3\n4\n5\n6\n"


def test_overlong_line_quarantined(emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="max_line=200").start()
    long_line = ('{"region":"r","queue":"q","priority":1,"enabled":true,'
                 '"note":"%s"}' % ("x" * 300))
    short = '{"region":"r","queue":"s","priority":1,"enabled":true,"note":"n"}'
    src = write_file(tmp_path / "l.jsonl", [short, long_line, short.replace(
        '"s"', '"t"')])
    rows = m.file("RoutingRules", "rows.jsonl")
    for how in (f"cp '{src}' '{rows}'",
                f"dd if='{src}' of='{rows}' bs=64 status=none"):
        p = run(how)
        assert p.returncode != 0, how
        rej = rejects(m, "RoutingRules")
        assert [r["line"] for r in rej] == [2], how
        assert "200" in rej[0]["error"]
        assert rej[0]["text"].startswith(long_line[:100])
        keys = by_key(emu.rows("RoutingRules"), ("region", "queue"))
        assert ("r", "s") in keys and ("r", "t") in keys
        assert ("r", "q") not in keys


# ---- a handle flushed more than once ---------------------------------------

def test_dup_close_flushes_and_later_writes_import(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    fd = os.open(rows, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, (cust(1) + "\n").encode())
    os.close(os.dup(fd))  # the opener's flush: what was written lands
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys
    assert status(m, "Customers")["import"]["state"] == "done"
    os.write(fd, (cust(2) + "\n").encode())
    st = status(m, "Customers")["import"]
    assert (st["state"], st["finished"]) == ("receiving", None)
    os.close(fd)
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00002",) in keys
    st = status(m, "Customers")["import"]
    assert st["lines_read"] == 2 and st["state"] == "done"


def test_failed_flush_latches_on_the_handle(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    fd = os.open(rows, os.O_WRONLY)
    os.write(fd, (cust(1) + "\nnot json\n").encode())
    with pytest.raises(OSError) as e:
        os.close(os.dup(fd))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.write(fd, (cust(2) + "\n").encode())
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys and ("NEW-00002",) not in keys


def test_forked_writer_without_opener_flush_still_lands(sample):
    """A forked child writes on an inherited descriptor and closes it (not
    the opener: no upload); the opener's close, with no write of its own,
    still uploads what the handle received."""
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    fd = os.open(rows, os.O_WRONLY)
    pid = os.fork()
    if pid == 0:  # the child writes; its close is not the opener's
        try:
            os.write(fd, (cust(1) + "\n").encode())
            os.close(fd)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(fd)  # the opener's flush: the bytes were written: upload
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys


# ---- dtfsctl import --------------------------------------------------------

def test_dtfsctl_import_same_rules_and_exit_codes(emu_factory,
                                                  mount_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    cache = str(tmp_path / "ctl")
    before = len(emu.rows("Customers"))

    # stdin
    code, _, err = dtfsctl(emu, cache, "import", "Customers",
                           input=(cust(1) + "\n" + cust(2)).encode())
    assert code == 0, err
    # a file, with quarantined lines: 65, valid ones land
    src = write_file(tmp_path / "q.jsonl", [cust(3), "{oops", cust(4)])
    code, _, err = dtfsctl(emu, cache, "import", "Customers", src)
    assert code == 65, err
    # it says where the rejects are, and they are this import's
    path = re.search(r"see '([^']+)'", err).group(1)
    with open(path, "rb") as f:
        assert [json.loads(x)["line"] for x in f] == [2]
    keys = by_key(emu.rows("Customers"))
    assert len(keys) == before + 4
    # the same again from stdin ("-")
    with open(src, "rb") as f:
        code, _, err = dtfsctl(emu, cache, "import", "Customers", "-",
                               input=f.read())
    assert code == 65, err
    # drift: 65 and nothing sent
    s0 = route(emu, "rows_upsert")
    code, _, err = dtfsctl(emu, cache, "import", "Customers",
                           input=(cust(5) + '\n{"customer_id":"x",'
                                  '"segment":1}\n').encode())
    assert code == 65 and "segment" in err, err
    assert route(emu, "rows_upsert") == s0
    # no such table: 66
    code, _, _ = dtfsctl(emu, cache, "import", "Nope", input=b"")
    assert code == 66
    # busy while a mount holds an import open on the same cache: 75
    m = mount_factory(emu, cache_dir=cache).start()
    rows = m.file("Customers", "rows.jsonl")
    with open(rows, "w") as f:
        f.write(cust(6) + "\n")
        f.flush()
        code, _, err = dtfsctl(emu, cache, "import", "Customers",
                               input=(cust(7) + "\n").encode())
        assert code == 75, err
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00006",) in keys and ("NEW-00007",) not in keys
    # once closed, dtfsctl may import at once
    code, _, err = dtfsctl(emu, cache, "import", "Customers",
                           input=(cust(7) + "\n").encode())
    assert code == 0, err
    assert len(emu.rows("Customers")) == before + 6  # 5 drifted


def test_dtfsctl_import_read_only_credentials(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR,
                      "--client", "ro:ro-secret:data-table:read")
    before = emu.row_entries("Customers")
    code, _, err = dtfsctl(emu, str(tmp_path / "c"), "import", "Customers",
                           input=(cust(1) + "\n").encode(),
                           client=("ro", "ro-secret"))
    assert code == 77, err
    assert emu.row_entries("Customers") == before


# ---- the schema an import validates against ---------------------------------

def test_column_added_remotely_is_not_drift(emu_factory, mount_factory,
                                            tmp_path):
    """Validation uses the cached schema, revalidated like schema.json (at
    most `revalidate` seconds old): a column added in the API since the
    schema was cached is a column, not drift."""
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="revalidate=1").start()
    rows = m.file("Customers", "rows.jsonl")
    ok(f"echo '{cust(1)}' > '{rows}'")  # schema cached, import ran
    tid = emu.table_id("Customers")
    _, h, schema = emu.api("GET", f"/api/v2/datatables/{tid}/schema")
    schema["columns"].append({"name": "segment", "type": "string",
                              "isPrimaryKey": False})
    emu.api("PUT", f"/api/v2/datatables/{tid}/schema", body=schema,
            headers={"If-Match": h["ETag"]})
    time.sleep(1.1)
    line = ('{"customer_id":"NEW-00002","loyalty_tier":1,'
            '"segment":"gold"}')
    ok(f"echo '{line}' > '{rows}'")
    keys = by_key(emu.rows("Customers"))
    assert keys[("NEW-00002",)]["segment"] == "gold"
    assert b'"segment"' in slurp(m.file("Customers", "schema.json"))


def test_close_then_reopen_never_busy(sample, tmp_path):
    """close() returns before the kernel's release reaches dtfs; a writer
    that opens right after must not see the previous, closed, import as
    busy."""
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    script = tmp_path / "loop.sh"
    script.write_text(
        'i=0\nwhile [ $i -lt 40 ]; do\n'
        '  echo "{\\"customer_id\\":\\"LOOP-$i\\"}" > "$1" || exit 1\n'
        '  i=$((i+1))\ndone\n')
    ok(f"sh '{script}' '{rows}'")
    for _ in range(20):
        fd = os.open(rows, os.O_WRONLY)
        os.write(fd, b'{"customer_id":"LOOP-X"}\n')
        os.close(fd)
    keys = by_key(emu.rows("Customers"))
    assert all((f"LOOP-{i}",) in keys for i in range(40))


def test_chunks_failing_after_retries_fail_close_with_eio(emu_factory,
                                                          mount_factory,
                                                          tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="revalidate=600,retries=2,retry_budget=5")
    m.start()
    slurp(m.file("Customers", "schema.json"))
    before = emu.row_entries("Customers")
    src = write_file(tmp_path / "in.jsonl", [cust(i) for i in range(1, 11)])
    emu.config(fail_next=1000)
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    emu.config(fail_next=0)
    assert p.returncode != 0
    assert b"Input/output error" in p.stderr
    assert emu.row_entries("Customers") == before
    st = status(m, "Customers")["import"]
    assert st["state"] == "failed" and st["error"]
    assert st["chunks_acknowledged"] == 0 and st["retries"] >= 1
    assert "upsert chunk" in m.stderr() and "503" in m.stderr()
    # the next import works
    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert len(emu.rows("Customers")) == len(before) + 10


def test_release_uploads_what_no_opener_flush_sent(sample):
    """The opener closes first (nothing written yet), a forked child then
    writes and exits: no flush of the opener saw the bytes, so release
    uploads them (its error would be thrown away: the log tells)."""
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    r, w = os.pipe()
    fd = os.open(rows, os.O_WRONLY)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)  # wait for the parent's close
            os.write(fd, (cust(1) + "\n").encode())
            os.close(fd)
        finally:
            os._exit(0)
    os.close(r)
    os.close(fd)
    os.close(w)
    os.waitpid(pid, 0)
    wait_for(lambda: ("NEW-00001",) in by_key(emu.rows("Customers")),
             what="the row uploaded at release")
    wait_for(lambda: status(m, "Customers")["import"]["state"] == "done",
             what="the import to end")
    assert "import into 'Customers': 1 line," in m.stderr()


def test_rows_the_api_refuses_are_quarantined(sample, tmp_path):
    """A row that passes dtfs's validation but that the API refuses (400
    invalid.row naming it) is quarantined under its line; the others of its
    chunk are sent again and land. (The emulator refuses a date followed
    by an escaped NUL; dtfs may learn to refuse it first: the outcome a
    user sees is the same.)"""
    emu, m = sample
    odd = ('{"customer_id":"ODD-1","last_interaction":'
           '"2024-01-01T00:00:00Z\\u0000"}')
    lines = [cust(1), odd, cust(2)]
    src = write_file(tmp_path / "in.jsonl", lines)
    p = run(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'", timeout=60)
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    keys = by_key(emu.rows("Customers"))
    assert ("NEW-00001",) in keys and ("NEW-00002",) in keys
    assert ("ODD-1",) not in keys
    rej = rejects(m, "Customers")
    assert [r["line"] for r in rej] == [2]
    assert "last_interaction" in rej[0]["error"]
    assert rej[0]["text"].startswith('{"customer_id":"ODD-1"')
    st = status(m, "Customers")["import"]
    assert (st["quarantined"], st["state"], st["chunks_acknowledged"]) == \
        (1, "done", 1)


def test_imports_into_different_tables_run_side_by_side(emu_factory,
                                                        mount_factory,
                                                        tmp_path):
    emu = emu_factory("--data", DATA_DIR, "--generate", "Big:0")
    m = mount_factory(emu).start()
    emu.config(latency_ms=5)
    big = write_file(tmp_path / "big.jsonl", [gen_line(i) for i in range(3000)])
    cus = write_file(tmp_path / "cus.jsonl", [cust(i) for i in range(1, 1001)])
    rr = write_file(tmp_path / "rr.jsonl", [
        '{"region":"r%d","queue":"q","priority":%d,"enabled":true,'
        '"note":"n"}' % (i, i) for i in range(500)])
    procs = [subprocess.Popen(["cp", src, m.file(table, "rows.jsonl")],
                              stderr=subprocess.PIPE)
             for src, table in ((big, "Big"), (cus, "Customers"),
                                (rr, "RoutingRules"))]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    emu.config(latency_ms=0)
    assert len(by_key(emu.rows("Big"))) == 3000
    assert len(by_key(emu.rows("Customers"))) == 4000
    assert len(by_key(emu.rows("RoutingRules"), ("region", "queue"))) == 528
    for table in ("Big", "Customers", "RoutingRules"):
        st = status(m, table)["import"]
        assert st["state"] == "done" and st["error"] is None, table


def test_writer_killed_while_close_waits(emu_factory, mount_factory,
                                         tmp_path):
    """cp is killed while its close() waits for the upload. FUSE flush
    cannot be interrupted once dtfs has it, so cp dies only when the
    upload is over: the whole import has landed by then, and the table
    takes the next import at once."""
    emu = emu_factory("--generate", "Big:0")
    m = mount_factory(emu, opts="upload_workers=1").start()
    rows = m.file("Big", "rows.jsonl")
    src = write_file(tmp_path / "in.jsonl", [gen_line(i) for i in range(3000)])
    emu.config(latency_ms=30)
    cp = subprocess.Popen(["cp", src, rows])
    wait_for(lambda: route(emu, "rows_upsert") >= 2, what="upserts")
    cp.kill()
    cp.wait()
    emu.config(latency_ms=0)
    assert status(m, "Big")["import"]["state"] == "done"
    assert len(by_key(emu.rows("Big"))) == 3000
    ok(f"echo '{gen_line(5000)}' > '{rows}'")
    assert len(emu.rows("Big")) == 3001


def test_read_racing_an_import_never_caches_the_old_rows(emu_factory,
                                                         mount_factory):
    """A revalidation whose GET was answered before the upsert landed must
    not store the old rows after the import invalidated the cache: the
    read after close() returns shows the import (revalidate left at its
    default, so a wrongly fresh copy would be served)."""
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu).start()
    rows = m.file("RoutingRules", "rows.jsonl")

    def imp(prio):
        fd = os.open(rows, os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b'{"region":"emea","queue":"billing","priority":%d}\n'
                 % prio)
        return fd

    def prio():
        for line in slurp(rows).splitlines():
            row = json.loads(line)
            if (row["region"], row["queue"]) == ("emea", "billing"):
                return row["priority"]

    os.close(imp(41))
    assert prio() == 41
    os.close(imp(42))          # the cache holds no version now
    emu.config(latency_ms=600)
    time.sleep(1.5)            # the schema is old: a new version refetches it
    fd = imp(43)               # the writer is open, not closed yet
    got = {}

    def read():
        try:
            got["p"] = prio()
        except OSError as e:
            got["p"] = errno.errorcode[e.errno]

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)            # the reader's GET is out before the upsert
    os.close(fd)
    reader.join()
    assert got["p"] in (42, 43)
    assert prio() == 43
