"""A full cache file system (issue 11 item 6, docs/cache.md "A full disk"):
reads go on, served from the API through memory, and the cache recovers
without a remount once the disk has room again.

The cache directory is a 2 MiB tmpfs (root mounts it; the suite skips
without root), so "full" is real ENOSPC and short writes from the kernel,
not a simulation."""
import json
import os
import subprocess

import pytest

from mount import dtfsctl, expected_jsonl

ORDER = ["customer_id", "last_interaction", "loyalty_tier"]
ROW = {"customer_id": "CHANGED-1", "last_interaction": "2024-01-01T00:00:00Z",
       "loyalty_tier": 1}


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs; yields its path, unmounted at the end."""
    path = tmp_path / "cachefs"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                        str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    yield str(path)
    subprocess.run(["umount", "-l", str(path)])


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path, leave):
    """Take all but `leave` bytes of the file system with a file."""
    name = os.path.join(path, "filler")
    size = max(free_bytes(path) - leave, 0)
    with open(name, "wb") as f:
        f.write(b"\0" * size)
    return name


def cat(path):
    r = subprocess.run(["cat", path], capture_output=True)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def status(m, table):
    with open(m.file(table, "status.json")) as f:
        return json.load(f)["cache"]


def test_reads_go_on_when_the_cache_fs_is_full(emu_factory, mount_factory,
                                               small_fs):
    """The issue's case: once the tmpfs is full, a table bigger than the
    room left, and then smaller ones, are still read whole with exit 0,
    also by dtfsctl on the same cache and after SIGHUP."""
    emu = emu_factory("--generate", "Big:20000", "--generate", "Mid:8000",
                      "--generate", "Small:2000")
    cache = os.path.join(small_fs, "c")
    m = mount_factory(emu, cache_dir=cache).start()
    want = {t: expected_jsonl(emu, t, ORDER) for t in ("Big", "Mid",
                                                       "Small")}
    assert len(want["Big"]) > 1_500_000  # more than the tmpfs can hold
    for t in ("Mid", "Big", "Small", "Mid", "Small", "Big"):
        rc, out, err = cat(m.file(t, "rows.jsonl"))
        assert rc == 0, (t, err, m.stderr()[-2000:])
        assert out == want[t], t
    assert free_bytes(small_fs) < 256 * 1024  # it did fill up
    assert status(m, "Big")["in_memory"] is True
    assert "holding them in memory" in m.stderr()
    # dtfsctl on the same full cache
    rc, out, err = dtfsctl(emu, cache, "export", "Big")
    assert rc == 0, err
    assert out == want["Big"]
    # SIGHUP: every table revalidates on its next open
    m.proc.send_signal(1)
    for t in ("Small", "Big"):
        rc, out, err = cat(m.file(t, "rows.jsonl"))
        assert rc == 0, (t, err)
        assert out == want[t]
    assert m.proc.poll() is None


def test_full_cache_fs_recovers_without_remount(emu_factory, mount_factory,
                                                small_fs):
    """Filled by something else: a table is read whole from memory while
    the disk is full; once room is made, the next version of it goes to
    the disk again, where another process (dtfsctl) finds it cached."""
    emu = emu_factory("--generate", "Small:4000")
    cache = os.path.join(small_fs, "c")
    m = mount_factory(emu, cache_dir=cache, opts="revalidate=0").start()
    rows = m.file("Small", "rows.jsonl")
    filler = fill(small_fs, 64 * 1024)
    want = expected_jsonl(emu, "Small", ORDER)
    assert len(want) > 300_000  # the 350 KB table
    rc, out, err = cat(rows)
    assert rc == 0, (err, m.stderr()[-2000:])
    assert out == want
    assert os.stat(rows).st_size == len(want)
    assert status(m, "Small")["in_memory"] is True
    # an import on a full cache: its spool cannot be written either; the
    # writer gets ENOSPC and nothing is sent
    src = os.path.join(os.path.dirname(small_fs), "in.jsonl")
    with open(src, "w") as f:
        for i in range(20000):
            f.write(json.dumps(dict(ROW, customer_id=f"NEW-{i}")) + "\n")
    before = emu.rows("Small")
    r = subprocess.run(["cp", src, rows], capture_output=True)
    assert r.returncode != 0
    assert b"No space left on device" in r.stderr, r.stderr
    assert emu.rows("Small") == before
    # room again
    os.unlink(filler)
    emu.upsert("Small", [dict(ROW, loyalty_tier=2)])
    want = expected_jsonl(emu, "Small", ORDER)
    rc, out, err = cat(rows)
    assert rc == 0, err
    assert out == want
    assert status(m, "Small")["in_memory"] is False
    emu.reset_stats()
    rc, out, err = dtfsctl(emu, cache, "export", "Small",
                           opts="revalidate=3600")
    assert rc == 0, err
    assert out == want
    assert emu.route_count("rows_get") == 0  # served by the disk cache


def test_flows_tables_read_whole_on_a_full_cache_fs(emu_factory,
                                                    mount_factory, small_fs):
    """The production dialect (numbered pages, no ETag) on a full disk."""
    emu = emu_factory("--generate", "Big:5000")
    cache = os.path.join(small_fs, "c")
    m = mount_factory(emu, cache_dir=cache, opts="api=flows").start()
    fill(small_fs, 32 * 1024)
    rows = m.file("Big", "rows.jsonl")
    rc, out, err = cat(rows)
    assert rc == 0, (err, m.stderr()[-2000:])
    got = [json.loads(line) for line in out.decode().splitlines()]
    keys = sorted(r["key"] for r in got)
    assert keys == sorted(r["customer_id"] for r in emu.rows("Big"))
    assert os.stat(rows).st_size == len(out)
    rc, again, err = cat(rows)
    assert rc == 0 and again == out


def test_concurrent_readers_while_a_table_moves_to_memory(
        emu_factory, mount_factory, small_fs):
    """Readers in flight when the table's version moves off the full disk
    keep reading it (from memory), with every byte and exit 0: the move
    holds the version in memory before it drops it from disk."""
    emu = emu_factory("--generate", "Big:20000")
    cache = os.path.join(small_fs, "c")
    m = mount_factory(emu, cache_dir=cache,
                      opts="revalidate=0,lazy_size").start()
    rows = m.file("Big", "rows.jsonl")
    for rnd in range(3):
        emu.upsert("Big", [dict(ROW, loyalty_tier=rnd)])
        want = expected_jsonl(emu, "Big", ORDER)
        procs = [subprocess.Popen(["cat", rows], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for _ in range(4)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (rnd, err, m.stderr()[-2000:])
            assert out == want, rnd
    assert "holding" in m.stderr()


def test_a_cache_that_cannot_be_created_is_a_clear_error(
        emu_factory, mount_factory, small_fs):
    """A full disk before the cache exists: LMDB mapped its lock file
    sparse and the first touch killed dtfs and dtfsctl with SIGBUS. Now
    both stop with ENOSPC and say where."""
    emu = emu_factory("--generate", "Small:200")
    fill(small_fs, 0)
    cache = os.path.join(small_fs, "c")
    rc, out, err = dtfsctl(emu, cache, "export", "Small")
    assert rc == 73, (rc, err)  # EX_CANTCREAT, not -7 (SIGBUS)
    assert "No space left on device" in err and cache in err
    assert out == b""
    code, err = mount_factory(emu, cache_dir=cache).start(expect_fail=True)
    assert code == 1, (code, err)
    assert "No space left on device" in err


def test_a_budget_file_on_a_full_disk_is_not_shared_but_works(
        emu_factory, small_fs):
    """The production dialect's shared budget file is mapped like LMDB's
    lock file: made on a full disk it was sparse, and the first write to
    it was SIGBUS. Now such a process keeps its own budget and says so."""
    emu = emu_factory("--generate", "Small:300",
                      "--client", "dtfs-demo:dtfs-demo-secret",
                      "--client", "second:second-secret")
    cache = os.path.join(small_fs, "c")
    rc, first, err = dtfsctl(emu, cache, "export", "Small", opts="api=flows")
    assert rc == 0, err
    fill(small_fs, 0)
    # another client id: another budget file, made now
    rc, out, err = dtfsctl(emu, cache, "export", "Small", opts="api=flows",
                           client=("second", "second-secret"))
    assert rc == 0, (rc, err)  # not -7 (SIGBUS)
    assert out == first
    assert "budget is not shared" in err
