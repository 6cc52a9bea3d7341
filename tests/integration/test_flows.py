"""The production dialect (api=flows) end to end: real FUSE mounts and
dtfsctl against dtfs-emu's /api/v2/flows/datatables, checked through the
emulator's other dialect (the cursor API reads the same store), its
request counters and its in-flight high-water mark."""
import errno
import json
import os
import subprocess
import threading

import pytest

from emu import SAMPLE_PRODUCTION
from mount import dtfsctl

BIG_KEY = "customer_id"	# the key column's name in the cursor dialect


def run(cmd, **kw):
    return subprocess.run(cmd, shell=True, capture_output=True, **kw)


def ok(cmd, **kw):
    p = run(cmd, **kw)
    assert p.returncode == 0, (cmd, p.stderr.decode(errors="replace"))
    return p.stdout


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def route(stats, name):
    return stats["by_route"].get(name, 0)


def delta(s0, s1, name):
    return route(s1, name) - route(s0, name)


def writes(s0, s1):
    return sum(delta(s0, s1, r) for r in (
        "flows_row_post", "flows_row_put", "flows_row_delete", "import_job",
        "upload", "rows_upsert"))


def flows_rows(data, key=BIG_KEY):
    """rows.jsonl of the flows dialect as cursor-dialect columns dicts."""
    out = {}
    for line in data.decode().splitlines():
        r = json.loads(line)
        k = r.pop("key")
        assert k not in out, f"key {k} twice"
        out[k] = {key: k, **r}
    return out


def cursor_rows(emu, table, key=BIG_KEY):
    return {r[key]: r for r in emu.rows(table)}


def status(m, table):
    with open(m.file(table, "status.json")) as f:
        return json.load(f)


def rejects(m, table):
    return [json.loads(x) for x in slurp(m.file(table,
                                                "rejects.jsonl")).splitlines()]


def big_line(i, visits, prefix="CUST"):
    return ('{"key":"%s-%07d","last_interaction":"2024-01-02T03:04:05Z",'
            '"loyalty_tier":1,"visits":%d,"active":true}' % (prefix, i,
                                                            visits))


@pytest.fixture
def big(emu_factory, mount_factory):
    emu = emu_factory("--generate", "Big:3000", "--latency", "5")
    m = mount_factory(emu, opts="api=flows").start()
    return emu, m


# ---- export ------------------------------------------------------------------

def test_export_equals_the_rows_of_the_other_dialect(big, tmp_path):
    emu, m = big
    data = slurp(m.file("Big", "rows.jsonl"))
    assert flows_rows(data) == cursor_rows(emu, "Big")
    # each line: key first, then the properties in displayOrder
    first = json.loads(data.splitlines()[0])
    assert list(first) == ["key", "last_interaction", "loyalty_tier",
                           "visits", "active"]
    # the same version gives the same bytes, through dtfsctl too
    code, out, err = dtfsctl(emu, tmp_path / "c", "export", "Big",
                             opts="api=flows")
    assert code == 0, err
    assert out == data
    # and the size is exact once read
    assert os.stat(m.file("Big", "rows.jsonl")).st_size == len(data)


def test_pages_are_fetched_in_parallel(emu_factory, mount_factory):
    emu = emu_factory("--generate", "Big:3000", "--latency", "30")
    m = mount_factory(emu, opts="api=flows,page_size=100,page_workers=4")
    m.start()
    emu.reset_stats()
    data = slurp(m.file("Big", "rows.jsonl"))
    s = emu.stats()
    assert len(data.splitlines()) == 3000
    # 30 pages of 100, each fetched once, several in flight at a time
    assert route(s, "flows_rows_get") == 30
    assert s["max_in_flight"] >= 3


def test_page_size_falls_to_what_the_server_accepts(emu_factory,
                                                    mount_factory):
    """A server that refuses 500-row pages: the size is halved until it
    is accepted, kept for the pass, and the export is whole and exact."""
    emu = emu_factory("--generate", "Big:1000", "--max-flows-page-size",
                      "200")
    m = mount_factory(emu, opts="api=flows").start()
    data = slurp(m.file("Big", "rows.jsonl"))
    assert flows_rows(data) == cursor_rows(emu, "Big")
    assert len(data.splitlines()) == 1000
    assert emu.stats()["by_status"].get("400", 0) >= 1


def test_head_costs_one_page_and_at_most_one_prefetch(emu_factory,
                                                      mount_factory):
    # lazy_size: with exact sizes (the default) the lookup before the
    # open reads the table whole, so that tar and rsync copy every byte
    emu = emu_factory("--generate", "Big:3000", "--latency", "5")
    m = mount_factory(emu, opts="api=flows,lazy_size").start()
    ok(f"ls '{m.table('Big')}'")
    s0 = emu.stats()
    out = ok(f"head -n 10 '{m.file('Big', 'rows.jsonl')}'")
    s1 = emu.stats()
    assert len(out.splitlines()) == 10
    assert 1 <= delta(s0, s1, "flows_rows_get") <= 2


def test_revalidation_keeps_an_unchanged_version(emu_factory,
                                                  mount_factory):
    emu = emu_factory("--generate", "Big:1200")
    # lazy_size: with exact sizes the lookup's stat revalidates too, and
    # revalidate=0 makes the open re-read the table again
    m = mount_factory(emu, opts="api=flows,revalidate=0,lazy_size").start()
    rows = m.file("Big", "rows.jsonl")
    first = slurp(rows)
    v1 = status(m, "Big")["cache"]["version"]
    s0 = emu.stats()
    assert slurp(rows) == first
    s1 = emu.stats()
    # re-read whole (3 pages), the digest unchanged: the same generation
    assert delta(s0, s1, "flows_rows_get") == 3
    assert status(m, "Big")["cache"]["version"] == v1
    assert os.stat(rows).st_size == len(first)
    # a change is a new version with the new bytes
    emu.upsert("Big", [{BIG_KEY: "CUST-0000005", "visits": 1,
                        "last_interaction": "2024-01-01T00:00:00Z",
                        "loyalty_tier": 2, "active": True}])
    again = slurp(rows)
    assert again != first
    assert flows_rows(again) == cursor_rows(emu, "Big")


def test_an_unreachable_api_serves_the_cached_version(emu_factory,
                                                      mount_factory):
    emu = emu_factory("--generate", "Big:1200")
    m = mount_factory(emu, opts="api=flows,revalidate=0,retries=2,"
                      "retry_budget=2").start()
    rows = m.file("Big", "rows.jsonl")
    first = slurp(rows)
    emu.config(fail_rate=1.0)		# answers, all 5xx
    try:
        assert slurp(rows) == first
    finally:
        emu.config(fail_rate=0.0)
    emu.stop()				# no answer at all
    assert slurp(rows) == first
    assert m.stderr().count("serving the cached version") >= 2


def test_a_change_between_pages_gives_one_version_or_estale(
        emu_factory, mount_factory):
    emu = emu_factory("--generate", "Big:1000")
    m = mount_factory(emu, opts="api=flows,page_size=50,page_workers=2,"
                      "revalidate=0,lazy_size").start()
    rows = m.file("Big", "rows.jsonl")
    before = cursor_rows(emu, "Big")
    with open(rows, "rb", buffering=0) as f:
        head = f.read(4096)		# pages 1 and 2 are fetched
        assert head
        # a row inserted at the front shifts every later page
        emu.upsert("Big", [{BIG_KEY: "AAA-first", "visits": 1,
                            "last_interaction": "2024-01-01T00:00:00Z",
                            "loyalty_tier": 2, "active": True}])
        try:
            rest = b""
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                rest += b
            got = flows_rows(head + rest)
            # no error: then it is exactly one version, whole
            assert got in (before, cursor_rows(emu, "Big"))
        except OSError as e:
            assert e.errno == errno.ESTALE
    # a new open reads the new version whole
    assert flows_rows(slurp(rows)) == cursor_rows(emu, "Big")
    assert "changed while it was read" in m.stderr()


# ---- import ------------------------------------------------------------------

def test_small_import_goes_row_by_row_and_lands(big, tmp_path):
    emu, m = big
    rows = m.file("Big", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    r = json.loads(lines[10])
    r["visits"] = 123456
    lines[10] = json.dumps(r, separators=(",", ":"))
    lines.append(big_line(1, 7, prefix="NEW"))
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    s0 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    s1 = emu.stats()
    # one update, one create; nothing else written
    assert delta(s0, s1, "flows_row_put") == 1
    assert delta(s0, s1, "flows_row_post") == 1
    assert delta(s0, s1, "import_job") == 0
    want = flows_rows(("\n".join(lines) + "\n").encode())
    assert cursor_rows(emu, "Big") == want
    st = status(m, "Big")["import"]
    assert st["route"] == "rows" and st["rows_unchanged"] == 2999
    # re-running it sends no write request
    s2 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    assert writes(s2, emu.stats()) == 0
    assert status(m, "Big")["import"]["rows_to_send"] == 0


def race_next(emu, name, s0, table="Big", **change):
    """Arm the emulator to change the table just before the next request
    of route `name` (after the comparison, before the send)."""
    emu.race(route=name, nth=route(s0, name) + 1,
             table=emu.flows_table_id(table), **change)


def cp_racing(emu, m, tmp_path, lines, name, **change):
    """cp the lines onto Big's rows.jsonl with a race armed before the
    next request of route `name`; checks that one PUT and one POST were
    the only writes and that the rows land exactly. Returns the rows."""
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    s0 = emu.stats()
    race_next(emu, name, s0, **change)
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s1 = emu.stats()
    assert emu.race_state()["fired"] == 1
    assert delta(s0, s1, "flows_row_put") == 1
    assert delta(s0, s1, "flows_row_post") == 1
    assert writes(s0, s1) == 2
    got = cursor_rows(emu, "Big")
    assert got == flows_rows(("\n".join(lines) + "\n").encode())
    assert rejects(m, "Big") == []
    return got, s0, s1


def test_an_update_of_a_row_deleted_meanwhile_becomes_a_create(big,
                                                               tmp_path):
    """PUT answered 404 (another client deleted the row after dtfs read
    the table): the row is created instead, and lands exactly."""
    emu, m = big
    lines = slurp(m.file("Big", "rows.jsonl")).decode().splitlines()
    r = json.loads(lines[20])
    r["visits"] = 424242
    lines[20] = json.dumps(r, separators=(",", ":"))
    _, s0, s1 = cp_racing(emu, m, tmp_path, lines, "flows_row_put",
                          delete=r["key"])
    # the PUT found no row (404), then one POST created it
    assert s1["by_status"].get("404", 0) - s0["by_status"].get("404", 0) == 1


def test_a_create_of_a_row_added_meanwhile_becomes_an_update(big,
                                                             tmp_path):
    """POST refused as existing (another client created the key after dtfs
    read the table): the row is updated instead, with our values."""
    emu, m = big
    lines = slurp(m.file("Big", "rows.jsonl")).decode().splitlines()
    lines.append(big_line(7, 31337, prefix="NEW"))
    got, s0, s1 = cp_racing(emu, m, tmp_path, lines, "flows_row_post",
                            insert=json.loads(big_line(7, 1, prefix="NEW")))
    assert got["NEW-0000007"]["visits"] == 31337
    assert s1["by_status"].get("409", 0) - s0["by_status"].get("409", 0) == 1


def test_dtfsctl_import_recovers_both_ways(emu_factory, tmp_path):
    """The same recoveries through dtfsctl: one import whose update finds
    the row deleted and whose create finds the key taken."""
    emu = emu_factory("--generate", "Big:200")
    cache = tmp_path / "c"
    code, data, err = dtfsctl(emu, cache, "export", "Big", opts="api=flows")
    assert code == 0, err
    lines = data.decode().splitlines()
    r = json.loads(lines[5])
    r["visits"] = 777
    lines[5] = json.dumps(r, separators=(",", ":"))
    lines.append(big_line(3, 888, prefix="NEW"))
    body = ("\n".join(lines) + "\n").encode()
    s0 = emu.stats()
    race_next(emu, "flows_row_put", s0, delete=r["key"])
    code, _, err = dtfsctl(emu, cache, "import", "Big", "-",
                           opts="api=flows,upload_workers=1", input=body)
    assert code == 0, err
    s1 = emu.stats()
    # the update became a create: PUT 404, POST; the new row a POST
    assert delta(s0, s1, "flows_row_put") == 1
    assert delta(s0, s1, "flows_row_post") == 2
    assert cursor_rows(emu, "Big") == flows_rows(body)
    # now the other way: a new key someone else creates first
    lines.append(big_line(4, 999, prefix="NEW"))
    body = ("\n".join(lines) + "\n").encode()
    race_next(emu, "flows_row_post", s1,
              insert=json.loads(big_line(4, 1, prefix="NEW")))
    code, _, err = dtfsctl(emu, cache, "import", "Big", "-",
                           opts="api=flows", input=body)
    assert code == 0, err
    s2 = emu.stats()
    assert emu.race_state()["fired"] == 2
    assert delta(s1, s2, "flows_row_post") == 1
    assert delta(s1, s2, "flows_row_put") == 1
    assert cursor_rows(emu, "Big") == flows_rows(body)
    code, out, err = dtfsctl(emu, cache, "status", "Big", opts="api=flows")
    assert code == 0, err
    st = json.loads(out)["import"]
    assert st["route"] == "rows" and st["rows_to_send"] == 1


def test_large_import_goes_as_one_job_and_lands(big, tmp_path):
    emu, m = big
    rows = m.file("Big", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    for i in range(0, 3000, 3):
        r = json.loads(lines[i])
        r["visits"] = 900000 + i
        lines[i] = json.dumps(r, separators=(",", ":"))
    lines += [big_line(i, i, prefix="NEW") for i in range(500)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    s0 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    s1 = emu.stats()
    assert delta(s0, s1, "upload") == 1
    assert delta(s0, s1, "flows_row_put") == 0
    assert delta(s0, s1, "flows_row_post") == 0
    assert cursor_rows(emu, "Big") == flows_rows(
        ("\n".join(lines) + "\n").encode())
    assert status(m, "Big")["import"]["route"] == "job"
    assert rejects(m, "Big") == []
    # and nothing is sent again
    s2 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    assert writes(s2, emu.stats()) == 0


def test_job_rows_option_sets_the_route(emu_factory, mount_factory,
                                        tmp_path):
    emu = emu_factory("--generate", "Big:100")
    m = mount_factory(emu, opts="api=flows,job_rows=3").start()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(big_line(i, 5, prefix="NEW") + "\n"
                           for i in range(3)))
    s0 = emu.stats()
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s1 = emu.stats()
    assert delta(s0, s1, "upload") == 1
    assert delta(s0, s1, "flows_row_post") == 0
    src.write_text("".join(big_line(i, 6, prefix="NEW") + "\n"
                           for i in range(2)))
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s2 = emu.stats()
    assert delta(s1, s2, "upload") == 0
    assert delta(s1, s2, "flows_row_put") == 2
    assert cursor_rows(emu, "Big")["NEW-0000001"]["visits"] == 6


def test_a_row_the_job_refuses_lands_in_rejects_under_its_line(
        emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:100")
    # the platform's key limit shorter than the one dtfs checks
    emu.config(max_name_length=20)
    m = mount_factory(emu, opts="api=flows,job_rows=2").start()
    lines = [big_line(i, 1, prefix="NEW") for i in range(5)]
    lines[3] = big_line(3, 1, prefix="A-KEY-LONGER-THAN-TWENTY")
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    p = run(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    rej = rejects(m, "Big")
    assert [r["line"] for r in rej] == [4]
    assert "import job" in rej[0]["error"]
    got = cursor_rows(emu, "Big")
    assert all(f"NEW-{i:07d}" in got for i in (0, 1, 2, 4))


def test_a_failed_job_is_eio_with_the_platform_message(
        emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:100")
    emu.config(max_name_length=5)	# every row of the job fails
    m = mount_factory(emu, opts="api=flows,job_rows=2").start()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(big_line(i, 1, prefix="NEW") + "\n"
                           for i in range(4)))
    p = run(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Input/output error" in p.stderr
    st = status(m, "Big")["import"]
    assert st["state"] == "failed"
    assert "job failed" in st["error"] and "row" in st["error"]
    assert "CSV import job failed" in m.stderr()


def test_schema_drift_fails_the_write_and_sends_nothing(big, tmp_path):
    emu, m = big
    src = tmp_path / "in.jsonl"
    src.write_text(big_line(1, 1, prefix="NEW") + "\n" +
                   '{"key":"NEW-2","segment":"x"}\n')
    s0 = emu.stats()
    p = run(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Invalid argument" in p.stderr
    assert writes(s0, emu.stats()) == 0
    assert "NEW-0000001" not in cursor_rows(emu, "Big")


def test_rows_past_max_rows_are_quarantined(emu_factory, mount_factory,
                                            tmp_path):
    emu = emu_factory("--generate", "Big:98")
    m = mount_factory(emu, opts="api=flows,max_rows=100").start()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(big_line(i, 1, prefix="NEW") + "\n"
                           for i in range(4)))
    p = run(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    assert p.returncode != 0
    rej = rejects(m, "Big")
    assert [r["line"] for r in rej] == [3, 4]
    assert all("max_rows" in r["error"] for r in rej)
    got = cursor_rows(emu, "Big")
    assert len(got) == 100 and "NEW-0000001" in got
    assert "NEW-0000002" not in got


# ---- the budget --------------------------------------------------------------

def test_429s_under_a_shared_budget_still_land(emu_factory, mount_factory,
                                               tmp_path):
    """The server's budget is tighter than ours: its 429s (Retry-After)
    pause us, and the import still lands whole."""
    emu = emu_factory("--generate", "Big:50", "--rate-limit", "12/2")
    m = mount_factory(emu, opts="api=flows,job_rows=1000,rate=100/2,"
                      "lazy_size")
    m.start()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(big_line(i, 3, prefix="NEW") + "\n"
                           for i in range(30)))
    ok(f"cp '{src}' '{m.file('Big', 'rows.jsonl')}'")
    s = emu.stats()
    assert s["by_status"].get("429", 0) > 0
    got = cursor_rows(emu, "Big")
    assert all(f"NEW-{i:07d}" in got for i in range(30))


def test_two_processes_sharing_one_budget_stay_under_it(emu_factory,
                                                        tmp_path):
    """Two dtfsctl at once, one client id, one cache directory: the
    server enforces the same budget as ours and never has to refuse."""
    emu = emu_factory("--generate", "Big:1500", "--rate-limit", "16/2")
    opts = "api=flows,page_size=50,rate=16/2,revalidate=0"
    outs = []

    def one(i):
        outs.append(dtfsctl(emu, tmp_path / "c", "export", "Big",
                            opts=opts))

    ts = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for code, out, err in outs:
        assert code == 0, err
        assert len(out.splitlines()) == 1500
    s = emu.stats()
    assert s["by_status"].get("429", 0) == 0
    # more requests than one window allows: pacing was needed
    assert s["requests_total"] > 16


# ---- dtfsctl ---------------------------------------------------------------

def test_dtfsctl_speaks_the_production_dialect(emu_factory, tmp_path):
    """ls, schema, export, import and status with the same options as the
    mount; import sends only what changed, status says how."""
    emu = emu_factory("--data", SAMPLE_PRODUCTION)
    cache = tmp_path / "c"
    code, out, err = dtfsctl(emu, cache, "ls", opts="api=flows")
    assert code == 0, err
    assert "PriceList" in out.decode().splitlines()
    code, out, err = dtfsctl(emu, cache, "schema", "PriceList",
                             opts="api=flows")
    assert code == 0, err
    schema = json.loads(out)
    assert schema["properties"]["key"]["type"] == "string"
    code, rows, err = dtfsctl(emu, cache, "export", "PriceList",
                              opts="api=flows")
    assert code == 0, err
    lines = rows.decode().splitlines()
    r = json.loads(lines[0])
    r["stock"] = 4242
    lines[0] = json.dumps(r, separators=(",", ":"), ensure_ascii=False)
    s0 = emu.stats()
    code, out, err = dtfsctl(emu, cache, "import", "PriceList", "-",
                             opts="api=flows",
                             input=("\n".join(lines) + "\n").encode())
    assert code == 0, err
    s1 = emu.stats()
    assert delta(s0, s1, "flows_row_put") == 1 and writes(s0, s1) == 1
    code, out, err = dtfsctl(emu, cache, "status", "PriceList",
                             opts="api=flows")
    assert code == 0, err
    # the import ran in another process: its status was kept for us
    doc = json.loads(out)
    assert doc["table"] == "PriceList"
    st = doc["import"]
    assert st["route"] == "rows" and st["rows_to_send"] == 1
    assert st["rows_unchanged"] == len(lines) - 1
    code, again, err = dtfsctl(emu, cache, "export", "PriceList",
                               opts="api=flows")
    assert code == 0, err
    assert again.decode().splitlines() == lines


@pytest.mark.parametrize("api", ["flows", "cursor"])
def test_concurrent_exports_on_one_cache_never_mix_or_repeat(emu_factory,
                                                             tmp_path, api):
    """Four dtfsctl exports at once on one cache directory, cold and then
    warm, a few rounds: each one writes the table exactly once, never a
    page twice nor a page of another pass. Small pages: many appends
    for the processes to meet at."""
    emu = emu_factory("--generate", "Big:1200", "--rate-limit", "1000000/1")
    opts = f"api={api},page_size=25,revalidate=0,rate=none,log_level=debug"
    want = None
    for rnd in range(10):
        cache = tmp_path / f"c{rnd // 2}"	# odd rounds: warm
        outs = [None] * 4

        def one(i):
            outs[i] = dtfsctl(emu, cache, "export", "Big", opts=opts)

        ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for code, out, err in outs:
            assert code == 0, err
            lines = out.decode().splitlines()
            assert len(lines) == 1200, err
            assert len(set(lines)) == 1200, err
            if want is None:
                want = out
            assert out == want, err
