"""Reliability of the mount (docs/reliability.md): a reader gets every byte
of the version it opened or an error, never fewer bytes and success."""
import errno
import os
import subprocess
import time

import pytest

ROW = {"customer_id": "CHANGED-1", "last_interaction": "2024-01-01T00:00:00Z",
       "loyalty_tier": 1}


def read_rest(f, got):
    """Read f to EOF; (bytes, errno or None)."""
    try:
        while True:
            b = f.read(1 << 16)
            if not b:
                return got, None
            got += b
    except OSError as e:
        return got, e.errno


def test_cached_reader_is_never_cut_short_by_a_new_version(emu_factory,
                                                          mount_factory):
    """Issue 11 item 1: a reader of a complete cached version, a change in
    the API, another open (a new version begins) and a stat (size 0 for the
    incomplete new version) must not end the first reader early with
    success."""
    emu = emu_factory("--generate", "Big:20000")
    m = mount_factory(emu, opts="revalidate=0").start()
    rows = m.file("Big", "rows.jsonl")
    first = open(rows, "rb").read()
    assert os.stat(rows).st_size == len(first)  # complete: exact size
    with open(rows, "rb", buffering=0) as f:
        got = f.read(1000)  # through the page cache, size known
        emu.upsert("Big", [ROW])
        # another process opens: the revalidation begins a new version
        subprocess.run(["head", "-c", "10", rows], check=True,
                       capture_output=True)
        time.sleep(1.2)  # past attr_timeout: the stat reaches dtfs
        os.stat(rows)
        got, err = read_rest(f, got)
    if err is None:
        assert len(got) == len(first) and got == first
    else:
        assert err in (errno.ESTALE, errno.EIO)
        assert first.startswith(got)
    # the new version, whole, once the old reader is gone
    after = open(rows, "rb").read()
    assert after.count(b"\n") == 20001 and b"CHANGED-1" in after


def test_cat_during_change_exits_nonzero_or_copies_everything(
        emu_factory, mount_factory, tmp_path):
    """The issue's reproduction with real tools: `cat` whose output is
    drained late, a change, a new open, a stat."""
    emu = emu_factory("--generate", "Big:20000")
    m = mount_factory(emu, opts="revalidate=0").start()
    rows = m.file("Big", "rows.jsonl")
    first = open(rows, "rb").read()
    os.stat(rows)
    out = tmp_path / "out"
    # cat blocks on the pipe after ~64 KiB until the reader side drains
    p = subprocess.Popen(
        f"cat '{rows}'; echo $? > '{tmp_path}/rc'", shell=True,
        stdout=subprocess.PIPE)
    head = p.stdout.read(1000)
    emu.upsert("Big", [ROW])
    subprocess.run(["head", "-c", "10", rows], check=True,
                   capture_output=True)
    time.sleep(1.2)
    os.stat(rows)
    got = head + p.stdout.read()
    p.wait()
    out.write_bytes(got)
    rc = int((tmp_path / "rc").read_text())
    if rc == 0:
        assert got == first
    else:
        assert first.startswith(got)


# ---- a damaged cache is a cache miss ------------------------------------

def damage_page(cache_dir, needle):
    """Change one byte of a cached row inside data.mdb (still valid
    JSON, so only a checksum can tell)."""
    path = os.path.join(cache_dir, "data.mdb")
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(needle)
        assert at >= 0, "the row is not in data.mdb"
        f.seek(at + len(needle) - 1)
        f.write(b"9" if data[at + len(needle) - 1:at + len(needle)] != b"9"
                else b"8")


def truncate_half(cache_dir):
    path = os.path.join(cache_dir, "data.mdb")
    os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", ["truncate", "page"])
def test_damaged_cache_mount_reads_the_right_bytes(emu_factory,
                                                   mount_factory, tmp_path,
                                                   damage):
    emu = emu_factory("--generate", "Big:8000")
    cache = str(tmp_path / "dcache")
    m = mount_factory(emu, cache_dir=cache).start()
    rows = m.file("Big", "rows.jsonl")
    first = open(rows, "rb").read()
    m.stop()
    if damage == "truncate":
        truncate_half(cache)
    else:
        damage_page(cache, b'"customer_id":"CUST-0006000"')
    gets = emu.stats()["by_route"].get("rows_get", 0)
    m2 = mount_factory(emu, cache_dir=cache).start()
    rows = m2.file("Big", "rows.jsonl")
    assert subprocess.run(["cat", rows], capture_output=True,
                          check=True).stdout == first
    assert m2.proc.poll() is None  # alive: no SIGBUS
    # the damaged part came from the API again
    assert emu.stats()["by_route"].get("rows_get", 0) > gets
    assert open(rows, "rb").read() == first
    word = "truncated" if damage == "truncate" else "damaged"
    assert word in m2.stderr()


@pytest.mark.parametrize("damage", ["truncate", "page"])
def test_damaged_cache_dtfsctl_exports_the_right_bytes(emu_factory,
                                                       tmp_path, damage):
    from mount import dtfsctl
    emu = emu_factory("--generate", "Big:8000")
    cache = str(tmp_path / "dcache")
    rc, first, err = dtfsctl(emu, cache, "export", "Big")
    assert rc == 0, err
    if damage == "truncate":
        truncate_half(cache)
    else:
        damage_page(cache, b'"customer_id":"CUST-0006000"')
    rc, out, err = dtfsctl(emu, cache, "export", "Big")
    assert rc == 0, err  # not 135 (SIGBUS)
    assert out == first


def test_rejects_size_is_right_after_close(emu_factory, mount_factory,
                                           tmp_path):
    """Issue 11 item 7: rejects.jsonl showed the previous import's size
    until the kernel's attributes timed out."""
    from mount import DATA_DIR
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu).start()
    rej = m.file("Customers", "rejects.jsonl")
    assert os.stat(rej).st_size == 0  # the kernel caches this size
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"customer_id": 1}\n{"customer_id": "x", '
                    b'"loyalty_tier": "gold"}\nnot json\n')
    r = subprocess.run(["cp", str(bad), m.file("Customers", "rows.jsonl")],
                       capture_output=True)
    assert r.returncode != 0  # close() says lines were quarantined
    size = os.stat(rej).st_size
    data = open(rej, "rb").read()
    assert data.count(b"\n") == 3
    assert size == len(data)


def test_dtfsctl_import_on_the_mounts_cache_is_seen_on_the_next_read(
        emu_factory, mount_factory, tmp_path):
    """Issue 11 item 8: `dtfsctl import` in another process on the mount's
    cache_dir bumps the table's invalidation counter in the shared cache,
    so the mount's next read after the import returned revalidates and
    shows the new rows, although its revalidate window is an hour."""
    from mount import dtfsctl
    emu = emu_factory("--generate", "Big:300")
    cache = str(tmp_path / "cache")
    m = mount_factory(emu, cache_dir=cache,
                      opts="revalidate=3600").start()
    rows = m.file("Big", "rows.jsonl")
    before = open(rows, "rb").read()
    assert before.count(b"\n") == 300
    emu.reset_stats()
    assert open(rows, "rb").read() == before
    assert emu.route_count("rows_get") == 0  # fresh: served from the cache
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(before.splitlines(keepends=True)[:299]) +
                    b'{"customer_id":"CHANGED-1","last_interaction":'
                    b'"2024-01-01T00:00:00Z","loyalty_tier":1}\n')
    code, _, err = dtfsctl(emu, cache, "import", "Big", str(src))
    assert code == 0, err
    emu.reset_stats()
    after = open(rows, "rb").read()
    assert emu.route_count("rows_get") >= 1
    # an import merges: the 300 rows, then the new one
    assert after == before + (b'{"customer_id":"CHANGED-1",'
                              b'"last_interaction":"2024-01-01T00:00:00Z",'
                              b'"loyalty_tier":1}\n')


def keys_of(emu):
    return {r["customer_id"] for r in emu.rows("Big")}


WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
os.write(fd, b"".join(
    b'{"customer_id":"%s-%d","last_interaction":"2024-01-01T00:00:00Z",'
    b'"loyalty_tier":%d}\n' % (sys.argv[2].encode(), i, i) for i in range(3)))
if sys.argv[3] == "close":
    os.close(fd)
elif sys.argv[3] == "kill":
    os.write(fd, b'{"customer_id":"PARTIAL')  # killed mid-line
    print("ready", flush=True)
    time.sleep(600)
os._exit(0)  # "exit": ends without closing fd
"""


def test_status_says_the_writer_was_killed(emu_factory, mount_factory):
    """Issue 11 item 7: a writer killed mid-write (kill -9) still has its
    complete lines imported, and status.json says how the writer ended
    ("killed by signal 9"), as it does for one that exits without close();
    an explicit close() shows "closed"."""
    import json
    import signal
    import sys
    emu = emu_factory("--generate", "Big:50")
    m = mount_factory(emu).start()
    rows = m.file("Big", "rows.jsonl")

    def status():
        with open(m.file("Big", "status.json")) as f:
            return json.load(f)["import"]

    def run(tag, how):
        return subprocess.Popen([sys.executable, "-c", WRITER, rows, tag,
                                 how], stdout=subprocess.PIPE)

    p = run("CLOSED", "close")
    assert p.wait(timeout=60) == 0
    assert status()["writer"] == "closed"
    assert status()["state"] == "done"

    p = run("EXITED", "exit")
    assert p.wait(timeout=60) == 0
    st = status()
    assert st["writer"] == "exited without close"
    assert st["state"] == "done" and st["rows_landed"] == 3

    p = run("KILLED", "kill")
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGKILL)
    # the killed process's flush runs the import before it is reaped
    assert p.wait(timeout=60) == -signal.SIGKILL
    st = status()
    assert st["writer"] == "killed by signal 9", st
    assert st["state"] == "done" and "PARTIAL" not in keys_of(emu), st
    assert st["lines_read"] == 4 and st["quarantined"] == 1
    keys = {r["customer_id"] for r in emu.rows("Big")}
    assert {"KILLED-0", "KILLED-1", "KILLED-2"} <= keys
    assert {"EXITED-0", "CLOSED-2"} <= keys


def test_writes_go_on_after_a_cleanup_removed_the_cache_dir(
        emu_factory, mount_factory, tmp_path):
    """A housekeeping job (tmpfiles, a cron rm of ~/.cache) removes
    cache_dir while the mount runs: reads go on from the open cache, and
    the directories writes need (rejects/, scratch/) are made again, so
    `>>`, cp and sed -i still import instead of failing with ENOENT."""
    import shutil
    from mount import DATA_DIR
    emu = emu_factory("--data", DATA_DIR)
    cache = str(tmp_path / "cache")
    m = mount_factory(emu, cache_dir=cache).start()
    rows = m.file("Customers", "rows.jsonl")
    first = open(rows, "rb").read()
    shutil.rmtree(cache)
    assert open(rows, "rb").read() == first
    line = (b'{"customer_id":"CLEANED-1","last_interaction":'
            b'"2024-01-01T00:00:00Z","loyalty_tier":1}\n')
    with open(rows, "ab") as f:
        f.write(line)
    src = tmp_path / "in.jsonl"
    src.write_bytes(line.replace(b"CLEANED-1", b"CLEANED-2"))
    r = subprocess.run(["cp", str(src), rows], capture_output=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["sed", "-i", "s/CLEANED-2/CLEANED-3/", rows],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    got = {r["customer_id"] for r in emu.rows("Customers")}
    assert {"CLEANED-1", "CLEANED-2", "CLEANED-3"} <= got
    assert os.path.isdir(os.path.join(cache, "rejects"))
