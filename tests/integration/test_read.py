"""The read side of the mount (filesystem.md): layout, names, schema.json,
rows.jsonl bytes, laziness, revalidation, snapshots, errors."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from mount import DATA_DIR, expected_jsonl

CUSTOMERS = ["customer_id", "last_interaction", "loyalty_tier"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True,
                          **kw).stdout


def schema_order(m, table):
    with open(m.file(table, "schema.json")) as f:
        return [c["name"] for c in json.load(f)["columns"]]


@pytest.fixture
def sample(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu).start()


def test_ls_lists_tables_with_encoded_names(sample):
    emu, m = sample
    names = sorted(os.listdir(m.path))
    assert "Customers" in names
    assert "Holidays%2F2025" in names
    assert "RoutingRules" in names
    assert sorted(os.listdir(m.table("Customers"))) == [
        "rejects.jsonl", "rows.csv", "rows.jsonl", "schema.json",
        "status.json"]
    assert os.path.isdir(os.path.join(m.path, "Holidays%2F2025"))


def test_listing_costs_no_row_requests(sample):
    emu, m = sample
    before = emu.stats()["by_route"]
    for _ in range(5):
        os.listdir(m.path)
        os.stat(m.table("Customers"))
    after = emu.stats()["by_route"]
    assert after.get("rows_get", 0) == before.get("rows_get", 0)
    # one listing walk per list_ttl at most (the start-up walk is fresh)
    assert after.get("list", 0) == before.get("list", 0)


def test_schema_json_is_the_api_schema_pretty(sample):
    emu, m = sample
    out = sh(f"jq -c '[.columns[] | [.name, .type, .isPrimaryKey]]' "
             f"'{m.file('Customers', 'schema.json')}'")
    assert json.loads(out) == [["customer_id", "string", True],
                               ["last_interaction", "date", False],
                               ["loyalty_tier", "number", False]]
    with open(m.file("Customers", "schema.json"), "rb") as f:
        data = f.read()
    assert data.endswith(b"}\n") and b"\n  " in data


def test_cat_equals_api_rows_in_order(sample):
    emu, m = sample
    want = expected_jsonl(emu, "Customers", CUSTOMERS)
    rows = m.file("Customers", "rows.jsonl")
    assert sh(f"cat '{rows}'") == want
    # numbers keep their text: the sample has fractional tiers like 2.50
    assert b'"loyalty_tier":' in want
    assert int(sh(f"wc -l < '{rows}'")) == want.count(b"\n")
    assert sh(f"jq -c . '{rows}'") == sh("jq -c .", input=want)
    assert sh(f"tail -n 7 '{rows}'") == b"".join(
        want.splitlines(keepends=True)[-7:])


def test_cp_and_dd_odd_blocks_equal(sample, tmp_path):
    emu, m = sample
    table = "RoutingRules"
    want = expected_jsonl(emu, table, schema_order(m, table))
    rows = m.file(table, "rows.jsonl")
    sh(f"cp '{rows}' '{tmp_path}/copy.jsonl'")
    assert (tmp_path / "copy.jsonl").read_bytes() == want
    for bs in (1, 7, 4093, 65537):
        assert sh(f"dd if='{rows}' bs={bs} status=none") == want


def test_rereads_identical_and_size_exact_once_complete(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    first = open(rows, "rb").read()
    for _ in range(3):
        assert open(rows, "rb").read() == first
    # after a full read the version is cached whole: exact size
    os.listdir(m.table("Customers"))
    st = os.stat(rows)
    assert st.st_size == len(first)
    assert sh(f"wc -c < '{rows}'").strip() == str(len(first)).encode()


def test_random_and_backward_reads_are_local(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    data = open(rows, "rb").read()
    gets = emu.stats()["by_route"].get("rows_get", 0)
    with open(rows, "rb") as f:
        for off in (len(data) - 10, 0, len(data) // 2, 12345, 1):
            f.seek(off)
            assert f.read(100) == data[off:off + 100]
    # at most the open's revalidation
    assert emu.stats()["by_route"].get("rows_get", 0) <= gets + 1


def test_head_on_cold_30_page_table_costs_two_requests(emu_factory,
                                                        mount_factory):
    emu = emu_factory("--generate", "Big:30000")
    # lazy_size: by default the lookup reads the table whole for an exact
    # st_size (test_tools.py measures that)
    m = mount_factory(emu, opts="lazy_size").start()
    before = emu.stats()["by_route"].get("rows_get", 0)
    out = sh(f"head -n 10 '{m.file('Big', 'rows.jsonl')}'")
    assert out.count(b"\n") == 10
    spent = emu.stats()["by_route"].get("rows_get", 0) - before
    assert 1 <= spent <= 2


def test_remount_same_cache_costs_one_304(emu_factory, mount_factory,
                                          tmp_path):
    emu = emu_factory("--generate", "Big:5000")
    cache = str(tmp_path / "shared-cache")
    m = mount_factory(emu, cache_dir=cache).start()
    first = open(m.file("Big", "rows.jsonl"), "rb").read()
    m.stop()
    s0 = emu.stats()
    # revalidate=0: the open must revalidate, whatever the clock says
    # lazy_size: with exact sizes the lookup's stat revalidates too, and
    # revalidate=0 makes the open do it again (two 304s)
    m2 = mount_factory(emu, cache_dir=cache,
                       opts="revalidate=0,lazy_size").start()
    assert open(m2.file("Big", "rows.jsonl"), "rb").read() == first
    s1 = emu.stats()
    assert s1["by_route"].get("rows_get", 0) - \
        s0["by_route"].get("rows_get", 0) == 1
    assert s1["by_status"].get("304", 0) - s0["by_status"].get("304", 0) == 1
    assert s1["rows_served"] == s0["rows_served"]


def test_change_during_cold_read_is_estale_never_mixed(emu_factory,
                                                       mount_factory):
    emu = emu_factory("--generate", "Big:20000")
    m = mount_factory(emu, opts="revalidate=0,lazy_size").start()
    rows = m.file("Big", "rows.jsonl")
    got = b""
    with open(rows, "rb", buffering=0) as f:
        got += f.read(1000)  # first page cached, one prefetched at most
        emu.upsert("Big", [{"customer_id": "CHANGED-1",
                            "last_interaction": "2024-01-01T00:00:00Z",
                            "loyalty_tier": 1}])
        with pytest.raises(OSError) as e:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                got += b
        assert e.value.errno == errno.ESTALE
    assert "changed during export" in m.stderr()
    # the next open takes a fresh snapshot: the new version, whole
    after = open(rows, "rb").read()
    assert b"CHANGED-1" in after
    assert after.count(b"\n") == 20001


def test_concurrent_readers_agree(emu_factory, mount_factory):
    emu = emu_factory("--generate", "Big:8000")
    m = mount_factory(emu).start()
    rows = m.file("Big", "rows.jsonl")
    digests = []

    def read():
        with open(rows, "rb") as f:
            digests.append(hashlib.sha256(f.read()).hexdigest())

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(digests) == 6 and len(set(digests)) == 1
    # one fetch per page despite six readers
    assert emu.stats()["by_route"]["rows_get"] <= 8 + 2


def test_empty_table(emu_factory, mount_factory):
    emu = emu_factory("--generate", "Empty:0")
    m = mount_factory(emu).start()
    rows = m.file("Empty", "rows.jsonl")
    assert open(rows, "rb").read() == b""
    assert os.stat(rows).st_size == 0


def test_missing_table_is_enoent(sample):
    emu, m = sample
    for p in (m.table("Nope"), m.file("Nope", "rows.jsonl"),
              m.file("Customers", "nope.json")):
        with pytest.raises(OSError) as e:
            os.stat(p)
        assert e.value.errno == errno.ENOENT


def test_bad_credentials_refuse_to_mount(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, client=("dtfs-demo", "wrong-secret"))
    code, err = m.start(expect_fail=True)
    assert code != 0
    assert "wrong-secret" not in err
    assert "credential" in err.lower() or "denied" in err.lower()
    assert not os.path.ismount(m.path)


def test_unreachable_api_refuses_to_mount(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu)
    emu.stop()
    code, err = m.start(expect_fail=True)
    assert code != 0 and "cannot be reached" in err


def test_cache_survives_kill_9(emu_factory, mount_factory, tmp_path):
    emu = emu_factory("--generate", "Big:5000")
    cache = str(tmp_path / "kcache")
    m = mount_factory(emu, cache_dir=cache).start()
    first = open(m.file("Big", "rows.jsonl"), "rb").read()
    m.kill9()
    s0 = emu.stats()["rows_served"]
    m2 = mount_factory(emu, cache_dir=cache).start()
    assert open(m2.file("Big", "rows.jsonl"), "rb").read() == first
    assert emu.stats()["rows_served"] == s0  # served from the cache


def test_status_json(sample):
    emu, m = sample
    open(m.file("Customers", "rows.jsonl"), "rb").read()
    st = json.load(open(m.file("Customers", "status.json")))
    assert st["table"] == "Customers"
    assert st["cache"]["complete"] is True
    assert st["cache"]["rows"] == len(emu.rows("Customers"))
    assert st["cache"]["version"]


def test_schema_json_write_refused_on_a_ro_mount(emu_factory,
                                                 mount_factory):
    # schema.json is written to change the schema (test_schema_write.py);
    # a read-only mount refuses it, as every write
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="ro").start()
    for f in ("schema.json", "rows.csv"):
        with pytest.raises(OSError) as e:
            open(m.file("Customers", f), "w")
        assert e.value.errno == errno.EROFS


def test_sighup_refreshes_listing_and_revalidates(emu_factory,
                                                  mount_factory):
    emu = emu_factory("--generate", "Big:3000")
    m = mount_factory(emu, opts="revalidate=3600,list_ttl=3600").start()
    rows = m.file("Big", "rows.jsonl")
    first = open(rows, "rb").read()
    emu.upsert("Big", [{"customer_id": "HUP-1",
                        "last_interaction": "2024-01-01T00:00:00Z",
                        "loyalty_tier": 1}])
    # within `revalidate`: the cached version, no request
    gets = emu.stats()["by_route"]["rows_get"]
    assert open(rows, "rb").read() == first
    assert emu.stats()["by_route"]["rows_get"] == gets
    lists = emu.stats()["by_route"]["list"]
    os.kill(m.proc.pid, signal.SIGHUP)
    # the signal arrives asynchronously: wait for its effect, a new walk
    deadline = time.monotonic() + 10
    while emu.stats()["by_route"]["list"] == lists:
        assert time.monotonic() < deadline, "SIGHUP had no effect"
        os.listdir(m.path)
        time.sleep(0.01)
    assert emu.stats()["by_route"]["list"] == lists + 1
    after = open(rows, "rb").read()
    assert after.count(b"\n") == 3001 and b"HUP-1" in after
    assert m.proc.poll() is None  # SIGHUP does not end the mount


def test_api_down_serves_whole_cached_versions_and_fails_the_rest(
        emu_factory, mount_factory):
    emu = emu_factory("--generate", "Cached:3000", "--generate", "Cold:3000")
    m = mount_factory(emu, opts="revalidate=0,retries=2,retry_budget=3")
    m.start()
    cached = open(m.file("Cached", "rows.jsonl"), "rb").read()
    emu.stop()
    # a whole cached version is served, and the log says it was not
    # revalidated
    assert open(m.file("Cached", "rows.jsonl"), "rb").read() == cached
    assert "serving the cached version" in m.stderr()
    # what was never cached fails with an errno, within the retry budget
    with pytest.raises(OSError) as e:
        open(m.file("Cold", "rows.jsonl"), "rb").read()
    assert e.value.errno in (errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EIO)
    # the mount stays up: the listing and status.json still answer
    assert sorted(os.listdir(m.path)) == ["Cached", "Cold"]
    json.load(open(m.file("Cached", "status.json")))
    assert m.proc.poll() is None
