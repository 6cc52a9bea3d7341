"""Every common Unix tool on a table (issue 12): tar and rsync copy every
byte, `>>` fails in write() when its lines do not land, sed -i, perl -i,
rsync, vim and mv save through scratch files renamed onto rows.jsonl,
-o replace makes a table equal to a file, and opening for writing without
writing changes nothing.

Each test runs the real tool against a mount of dtfs-emu and checks what a
user would: the bytes copied, the rows in the emulator, the request counts
(/_emu/stats) and the tool's exit status."""
import errno
import json
import os
import subprocess
import tarfile

import pytest

from mount import DATA_DIR, dtfsctl, expected_jsonl

CUSTOMERS = ["customer_id", "last_interaction", "loyalty_tier"]


def run(cmd, **kw):
    """bash: its echo says `write error` when write() fails"""
    return subprocess.run(cmd, shell=True, capture_output=True,
                          executable="/bin/bash", **kw)


def ok(cmd, **kw):
    p = run(cmd, **kw)
    assert p.returncode == 0, (cmd, p.returncode,
                               p.stderr.decode(errors="replace"))
    return p.stdout


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def cust(i, tier=1, prefix="NEW"):
    return ('{"customer_id":"%s-%05d","last_interaction":'
            '"2024-05-01T10:00:00Z","loyalty_tier":%s}' % (prefix, i, tier))


def keys(emu, table="Customers"):
    return {r["customer_id"] for r in emu.rows(table)}


def route(emu, name, stats=None):
    return (stats or emu.stats())["by_route"].get(name, 0)


def writes(emu):
    s = emu.stats()
    return (s["rows_written"], s["rows_deleted"], route(emu, "rows_upsert",
                                                         s),
            route(emu, "row_delete", s))


def status(m, table="Customers"):
    with open(m.file(table, "status.json")) as f:
        return json.load(f)


@pytest.fixture
def sample(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu).start()


@pytest.fixture
def replacing(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    return emu, mount_factory(emu, opts="replace").start()


def edited_copy(m, tmp_path, n=1):
    """rows.jsonl of Customers with the loyalty tier of the first n lines
    changed to 123456789: (the lines, their file, the edited keys)."""
    lines = slurp(m.file("Customers", "rows.jsonl")).decode().splitlines()
    changed = []
    for i in range(n):
        r = json.loads(lines[i])
        r["loyalty_tier"] = 123456789
        lines[i] = json.dumps(r, separators=(",", ":"))
        changed.append(r["customer_id"])
    src = tmp_path / "edited.jsonl"
    src.write_text("".join(line + "\n" for line in lines))
    return lines, str(src), changed


def tier_of(emu, key):
    for r in emu.rows("Customers"):
        if r["customer_id"] == key:
            return r["loyalty_tier"]
    raise KeyError(key)


def table_entries(m, table="Customers"):
    return sorted(os.listdir(m.table(table)))


OWN = ["rejects.jsonl", "rows.csv", "rows.jsonl", "schema.json",
       "status.json"]


# ---- sizes: tools that copy by st_size copy every byte ----------------------

def test_tar_of_a_cold_table_stores_every_byte(sample, tmp_path):
    emu, m = sample
    before = route(emu, "rows_get")
    ok(f"tar cf '{tmp_path}/t.tar' -C '{m.path}' Customers")
    # the stat fetched the 3 pages of the 3000 rows; the open read them
    # from the cache (at most one revalidation more)
    assert 3 <= route(emu, "rows_get") - before <= 4
    with tarfile.open(tmp_path / "t.tar") as tar:
        got = {os.path.basename(i.name): tar.extractfile(i).read()
               for i in tar.getmembers() if i.isfile()}
    assert got["rows.jsonl"] == expected_jsonl(emu, "Customers", CUSTOMERS)
    assert got["schema.json"] == slurp(m.file("Customers", "schema.json"))
    assert json.loads(got["status.json"])["table"] == "Customers" or \
        json.loads(got["status.json"])
    # rows.csv too: its size was 0 until a reader had converted it, and
    # tar stored an empty file with exit status 0
    csv = slurp(m.file("Customers", "rows.csv"))
    assert csv.count(b"\r\n") == 3001
    assert got["rows.csv"] == csv


def test_rsync_quick_check_sees_a_same_size_change(emu_factory,
                                                   mount_factory, tmp_path):
    """rsync's quick check compares size and mtime: rows.jsonl's mtime is
    when its version began, so a change that keeps the size is copied by
    the next scheduled rsync, and an unchanged table keeps its mtime (the
    next rsync copies nothing) across revalidations and remounts. With
    the mount time as mtime the changed table was skipped silently."""
    import time
    emu = emu_factory("--data", DATA_DIR)
    cache = str(tmp_path / "cache")
    m = mount_factory(emu, opts="revalidate=0", cache_dir=cache).start()
    rows = m.file("Customers", "rows.jsonl")
    dst = tmp_path / "backup.jsonl"
    ok(f"rsync -a '{rows}' '{dst}'")
    assert slurp(dst) == expected_jsonl(emu, "Customers", CUSTOMERS)
    first = os.stat(rows).st_mtime
    # unchanged: revalidated (304), same mtime, rsync copies nothing
    time.sleep(1.2)  # past attr_timeout: the kernel asks dtfs again
    assert os.stat(rows).st_mtime == first
    assert ok(f"rsync -ai '{rows}' '{dst}'") == b""
    # one value changed for another of the same length
    row = emu.rows("Customers")[0]
    tier = row["loyalty_tier"]
    row["loyalty_tier"] = tier + 1 if tier % 10 != 9 else tier - 1
    emu.upsert("Customers", [row])
    want = expected_jsonl(emu, "Customers", CUSTOMERS)
    assert len(want) == len(slurp(dst)) and want != slurp(dst)
    time.sleep(1.2)
    ok(f"rsync -a '{rows}' '{dst}'")
    assert slurp(dst) == want
    changed = os.stat(rows).st_mtime
    assert changed > first
    # a remount keeps the time of an unchanged version
    m.stop()
    m = mount_factory(emu, opts="revalidate=0", cache_dir=cache).start()
    rows = m.file("Customers", "rows.jsonl")
    assert os.stat(rows).st_mtime == changed
    assert ok(f"rsync -ai '{rows}' '{dst}'") == b""
    assert os.stat(m.file("Customers", "rows.csv")).st_mtime == \
        os.stat(rows).st_mtime


def test_rsync_and_cp_sparse_copy_every_byte(sample, tmp_path):
    emu, m = sample
    want = expected_jsonl(emu, "Customers", CUSTOMERS)
    ok(f"rsync -a '{m.table('Customers')}/' '{tmp_path}/r/'")
    assert slurp(tmp_path / "r" / "rows.jsonl") == want
    assert slurp(tmp_path / "r" / "schema.json") == \
        slurp(m.file("Customers", "schema.json"))
    json.loads(slurp(tmp_path / "r" / "status.json"))
    assert slurp(tmp_path / "r" / "rows.csv") == \
        slurp(m.file("Customers", "rows.csv"))
    assert len(slurp(tmp_path / "r" / "rows.csv")) > 100_000
    ok(f"cp --sparse=always '{m.file('RoutingRules', 'rows.jsonl')}' "
       f"'{tmp_path}/s.jsonl'")
    assert slurp(tmp_path / "s.jsonl") == \
        expected_jsonl(emu, "RoutingRules",
                       ["region", "queue", "priority", "enabled", "note"])


def test_schema_and_status_sizes_are_exact(sample):
    emu, m = sample
    for f in ("schema.json", "status.json"):
        p = m.file("Holidays/2025", f)
        assert os.stat(p).st_size == len(slurp(p)) > 0


def test_lazy_size_keeps_stat_free(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="lazy_size").start()
    before = route(emu, "rows_get")
    assert os.stat(m.file("Customers", "rows.jsonl")).st_size == 0
    assert route(emu, "rows_get") == before
    # readers still read to the end
    assert slurp(m.file("Customers", "rows.jsonl")) == \
        expected_jsonl(emu, "Customers", CUSTOMERS)


# ---- `>>`: write() tells the truth -------------------------------------------

def test_append_of_a_refused_line_fails_the_write(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    bad = '{"customer_id":"X","loyalty_tier":"four"}'
    p = run(f"echo '{bad}' >> '{rows}'; echo rc=$?")
    assert b"write error" in p.stderr
    assert b"rc=1" in p.stdout
    # set -e stops at it
    p = run(f"set -e; echo '{bad}' >> '{rows}'; echo after")
    assert p.returncode != 0 and b"after" not in p.stdout
    # a good line lands before echo returns
    ok(f"echo '{cust(1)}' >> '{rows}'")
    assert "NEW-00001" in keys(emu)


def test_append_with_the_api_down_fails_the_write(emu_factory,
                                                  mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="retries=2,retry_budget=5").start()
    rows = m.file("Customers", "rows.jsonl")
    slurp(rows)		# cached: the lookup needs no API
    emu.config(fail_rate=1.0)
    p = run(f"echo '{cust(2)}' >> '{rows}'")
    assert p.returncode != 0 and b"write error" in p.stderr
    emu.config(fail_rate=0.0)
    assert "NEW-00002" not in keys(emu)


def test_append_with_the_api_unreachable_fails_the_write(emu_factory,
                                                         mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu).start()
    rows = m.file("Customers", "rows.jsonl")
    slurp(rows)
    emu.stop()		# connections refused from now on
    p = run(f"set -e; echo '{cust(4)}' >> '{rows}'; echo after")
    assert p.returncode != 0 and b"after" not in p.stdout
    assert b"write error" in p.stderr


def test_append_into_a_table_deleted_server_side_fails(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    slurp(rows)
    emu.api("DELETE", "/api/v2/flows/datatables/%s"
            % emu.table_id("Customers"), expect=None)
    p = run(f"echo '{cust(3)}' >> '{rows}'")
    assert p.returncode != 0, p
    assert "Customers" not in {t["name"] for t in emu.tables()}


# ---- edit in place and rename --------------------------------------------------

def test_sed_i_edits_one_row(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    first = json.loads(slurp(rows).decode().splitlines()[0])
    k = first["customer_id"]
    w0 = writes(emu)
    ok(f"sed -i 's/\"customer_id\":\"{k}\",\\(.*\\)\"loyalty_tier\":[^}}]*}}"
       f"/\"customer_id\":\"{k}\",\\1\"loyalty_tier\":42}}/' '{rows}'")
    w1 = writes(emu)
    assert tier_of(emu, k) == 42
    assert w1[0] - w0[0] == 1 and w1[2] - w0[2] == 1
    assert table_entries(m) == OWN	# sed's temporary file is gone


def test_perl_i_edits_rows(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    ok(f"perl -i -pe 's/\"loyalty_tier\":1\\b/\"loyalty_tier\":101/ "
       f"if $. <= 5' '{rows}'")
    changed = [json.loads(line) for line in
               slurp(rows).decode().splitlines()[:5]]
    for r in changed:
        assert tier_of(emu, r["customer_id"]) == r["loyalty_tier"]
    assert table_entries(m) == OWN


@pytest.mark.parametrize("inplace", [False, True])
def test_rsync_into_a_table(sample, tmp_path, inplace):
    emu, m = sample
    lines, src, changed = edited_copy(m, tmp_path, n=3)
    w0 = writes(emu)
    flag = "--inplace " if inplace else ""
    ok(f"rsync {flag}'{src}' '{m.file('Customers', 'rows.jsonl')}'")
    w1 = writes(emu)
    assert w1[0] - w0[0] == 3
    for k in changed:
        assert tier_of(emu, k) == 123456789
    assert table_entries(m) == OWN


def test_mv_onto_rows_from_outside_and_inside(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    out = tmp_path / "out.jsonl"
    out.write_text(cust(10) + "\n")
    ok(f"mv '{out}' '{rows}'")
    assert not out.exists() and "NEW-00010" in keys(emu)

    inside = m.file("Customers", "new.jsonl")
    ok(f"printf '%s\\n' '{cust(11)}' > '{inside}'")
    assert "new.jsonl" in table_entries(m)
    assert "NEW-00011" not in keys(emu)	# a scratch file is not an import
    ok(f"mv '{inside}' '{rows}'")
    assert "NEW-00011" in keys(emu)
    assert table_entries(m) == OWN
    # the size right after an import is the new version's
    assert os.stat(rows).st_size == len(slurp(rows)) == \
        len(expected_jsonl(emu, "Customers", CUSTOMERS))


def test_tar_extract_and_install_onto_rows(sample, tmp_path):
    """GNU tar unlinks the file it extracts over, then creates it with
    O_EXCL (as mv does; so does install): restoring rows.jsonl from a
    backup imports it (before, `Cannot open: File exists`, exit 2), as
    does `install FILE rows.jsonl`; rm still gets EPERM."""
    emu, m = sample
    ok(f"tar cf '{tmp_path}/b.tar' -C '{m.path}' Customers/rows.jsonl")
    backup = expected_jsonl(emu, "Customers", CUSTOMERS)
    row = emu.rows("Customers")[0]
    was = row["loyalty_tier"]
    row["loyalty_tier"] = was + 1
    emu.upsert("Customers", [row])
    emu.reset_stats()
    ok(f"tar xf '{tmp_path}/b.tar' -C '{m.path}' Customers/rows.jsonl")
    assert tier_of(emu, row["customer_id"]) == was
    assert emu.stats()["rows_written"] == 1  # only the changed row
    assert slurp(m.file("Customers", "rows.jsonl")) == backup
    assert table_entries(m) == OWN
    # install(1) removes the target first too
    new = tmp_path / "new.jsonl"
    new.write_text(cust(20) + "\n")
    ok(f"install -m 644 '{new}' '{m.file('Customers', 'rows.jsonl')}'")
    assert "NEW-00020" in keys(emu)
    # the writer's chmod is accepted (cp -p exited 1 after the import)
    new.write_text(cust(21) + "\n")
    new.chmod(0o600)
    ok(f"cp -p '{new}' '{m.file('Customers', 'rows.jsonl')}'")
    assert "NEW-00021" in keys(emu)
    assert os.stat(m.file("Customers", "rows.jsonl")).st_mode & 0o777 == \
        0o644
    assert table_entries(m) == OWN
    p = run(f"rm '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0 and b"Operation not permitted" in p.stderr


def test_size_follows_a_change_on_the_server(emu_factory, mount_factory,
                                             tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="revalidate=0").start()
    rows = m.file("Customers", "rows.jsonl")
    first = slurp(rows)
    assert os.stat(rows).st_size == len(first)
    emu.upsert("Customers", [{"customer_id": "SRV-1", "loyalty_tier": 1}])
    want = expected_jsonl(emu, "Customers", CUSTOMERS)
    assert len(want) > len(first)
    # tar, which copies st_size bytes, gets the new version whole, or (the
    # kernel keeps attributes up to a second) says the file changed: never
    # a short copy with exit status 0
    p = run(f"tar cf '{tmp_path}/t.tar' -C '{m.table('Customers')}' "
            "rows.jsonl")
    if p.returncode == 0:
        with tarfile.open(tmp_path / "t.tar") as tar:
            assert tar.extractfile("rows.jsonl").read() == want
    else:
        assert b"changed as we read it" in p.stderr


def test_mv_of_a_refused_file_fails_and_keeps_it(sample):
    emu, m = sample
    inside = m.file("Customers", "bad.jsonl")
    ok(f"echo '{{\"customer_id\":\"B\",\"loyalty_tier\":\"x\"}}' "
       f"> '{inside}'")
    p = run(f"mv '{inside}' '{m.file('Customers', 'rows.jsonl')}'")
    assert p.returncode != 0
    assert "bad.jsonl" in table_entries(m)
    ok(f"rm '{inside}'")
    assert table_entries(m) == OWN


def test_vim_saving_one_changed_row_sends_one_row(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    k = json.loads(slurp(rows).decode().splitlines()[2])["customer_id"]
    w0 = writes(emu)
    ok(f"vim -u NONE -i NONE -n -e -s "
       f"-c '3s/\"loyalty_tier\":[^}}]*}}/\"loyalty_tier\":55}}/' "
       f"-c 'wq' '{rows}' < /dev/null", timeout=120)
    w1 = writes(emu)
    assert tier_of(emu, k) == 55
    assert w1[0] - w0[0] == 1 and w1[2] - w0[2] == 1
    assert table_entries(m) == OWN


def test_cp_tee_dd_and_redirection(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    src = tmp_path / "in.jsonl"
    src.write_text(cust(20) + "\n" + cust(21) + "\n")
    ok(f"cp '{src}' '{rows}'")
    ok(f"echo '{cust(22)}' > '{rows}'")
    ok(f"echo '{cust(23)}' | tee '{rows}' >/dev/null")
    ok(f"echo '{cust(24)}' | dd of='{rows}' status=none")
    ok(f"echo '{cust(25)}' | dd of='{rows}' conv=notrunc status=none")
    assert {"NEW-%05d" % i for i in range(20, 26)} <= keys(emu)


# ---- replace mode --------------------------------------------------------------

def test_default_mode_never_deletes(sample, tmp_path):
    emu, m = sample
    src = tmp_path / "few.jsonl"
    src.write_text(cust(30) + "\n")
    ok(f"cp '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    ok(f"mv '{src}' '{m.file('Customers', 'rows.jsonl')}'")
    assert len(emu.rows("Customers")) == 3001
    assert emu.stats()["rows_deleted"] == 0


def test_replace_deletes_exactly_the_missing_rows(replacing, tmp_path):
    emu, m = replacing
    rows = m.file("Customers", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    gone = {json.loads(line)["customer_id"] for line in lines[100:110]}
    keep = lines[:100] + lines[110:] + [cust(40)]
    src = tmp_path / "keep.jsonl"
    src.write_text("".join(line + "\n" for line in keep))
    s0 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    s1 = emu.stats()
    got = keys(emu)
    assert len(got) == 2991 and not (got & gone) and "NEW-00040" in got
    assert s1["rows_deleted"] - s0["rows_deleted"] == 10
    assert route(emu, "row_delete", s1) - route(emu, "row_delete", s0) == 10
    assert s1["rows_written"] - s0["rows_written"] == 1
    st = status(m)["import"]
    assert st["rows_deleted"] == 10 and st["replace"] is True
    # the table now reads back as the file
    assert sorted(slurp(rows).decode().splitlines()) == sorted(keep)


def test_replace_by_rename_and_nothing_on_quarantine(replacing, tmp_path):
    emu, m = replacing
    rows = m.file("Customers", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    # a quarantined line: nothing is deleted, the valid rows land
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(line + "\n" for line in lines[:10]) +
                   '{"customer_id":"Q","loyalty_tier":"x"}\n' +
                   cust(50) + "\n")
    p = run(f"cp '{src}' '{rows}'")
    assert p.returncode != 0
    assert len(emu.rows("Customers")) == 3001
    assert emu.stats()["rows_deleted"] == 0
    # a rename onto rows.jsonl replaces too
    inside = m.file("Customers", "all.jsonl")
    ok(f"head -n 2990 '{rows}' > '{inside}'")
    ok(f"mv '{inside}' '{rows}'")
    assert len(emu.rows("Customers")) == 2990
    # and `>>` never deletes
    ok(f"echo '{cust(51)}' >> '{rows}'")
    assert len(emu.rows("Customers")) == 2991


@pytest.mark.parametrize("opts,deleted", [("", 0), ("replace", 1)])
def test_vim_deleting_a_line(emu_factory, mount_factory, opts, deleted):
    """vim's :2d then :wq deletes that row with -o replace, and nothing
    without it."""
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts=opts).start()
    rows = m.file("Customers", "rows.jsonl")
    k = json.loads(slurp(rows).decode().splitlines()[1])["customer_id"]
    w0 = writes(emu)
    ok(f"vim -u NONE -i NONE -n -e -s -c '2d' -c 'wq' '{rows}' < /dev/null",
       timeout=120)
    w1 = writes(emu)
    assert (k in keys(emu)) == (deleted == 0)
    assert w1[1] - w0[1] == deleted and w1[0] == w0[0]
    assert table_entries(m) == OWN


def test_dtfsctl_import_replaces_with_the_same_option(emu_factory,
                                                     tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    cache = tmp_path / "c"
    code, out, err = dtfsctl(emu, cache, "export", "Customers")
    assert code == 0, err
    src = tmp_path / "few.jsonl"
    src.write_bytes(b"".join(out.splitlines(keepends=True)[:2990]))
    code, _, err = dtfsctl(emu, cache, "import", "Customers", str(src))
    assert code == 0, err
    assert len(emu.rows("Customers")) == 3000	# upserts only
    code, _, err = dtfsctl(emu, cache, "import", "Customers", str(src),
                           opts="replace")
    assert code == 0, err
    assert len(emu.rows("Customers")) == 2990
    assert emu.stats()["rows_deleted"] == 10


def test_replace_by_rsync_inplace_and_by_a_blank_line(replacing, tmp_path):
    emu, m = replacing
    rows = m.file("Holidays/2025", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    assert len(lines) == 12
    src = tmp_path / "h.jsonl"
    src.write_text("".join(line + "\n" for line in lines[:9]))
    ok(f"rsync --inplace '{src}' '{rows}'")
    assert len(emu.rows("Holidays/2025")) == 9
    # a whole file of one blank line: no row, so the table is emptied
    ok(f"echo > '{rows}'")
    assert emu.rows("Holidays/2025") == []
    assert slurp(rows) == b""


# ---- no side effects without writes -------------------------------------------

def test_open_without_writing_changes_nothing(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    run(f"echo '{{\"customer_id\":\"R\",\"loyalty_tier\":\"x\"}}' "
        f">> '{rows}'")
    rejects = slurp(m.file("Customers", "rejects.jsonl"))
    assert len(rejects.splitlines()) == 1
    st = status(m)["import"]
    w0 = writes(emu)
    ok(f"touch '{rows}'")
    ok(f"truncate -s 0 '{rows}'")
    ok(f": > '{rows}'")
    ok(f"vim -u NONE -i NONE -n -e -s -c 'q' '{rows}' < /dev/null",
       timeout=120)
    with open(rows, "w"):
        pass
    # a tool that opens for writing and exits without closing or writing
    # (fallocate is refused): nothing happens, nothing to warn about
    assert run(f"fallocate -l 1M '{rows}'").returncode != 0
    assert slurp(m.file("Customers", "rejects.jsonl")) == rejects
    assert status(m)["import"] == st
    assert writes(emu) == w0
    assert "exited without close" not in m.stderr()
    # a clean import later keeps the rejects of the last import with any
    ok(f"echo '{cust(60)}' > '{rows}'")
    assert slurp(m.file("Customers", "rejects.jsonl")) == rejects


# ---- errors that mean something ------------------------------------------------

def test_unsupported_operations_fail_with_conventional_errnos(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    for f in OWN:
        with pytest.raises(OSError) as e:
            os.unlink(m.file("Customers", f))
        assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.chmod(rows, 0o600)
    assert e.value.errno == errno.EPERM
    os.chmod(rows, 0o644)	# the mode it has: fine
    with pytest.raises(OSError) as e:
        os.rename(rows, m.file("Customers", "old.jsonl"))
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        open(os.path.join(m.path, "new-table.jsonl"), "w")
    assert e.value.errno == errno.EPERM
    for f in ("status.json", "rejects.jsonl"):
        with pytest.raises(OSError) as e:
            open(m.file("Customers", f), "a")
        assert e.value.errno == errno.EROFS
    tmp = m.file("Customers", "x.json")
    open(tmp, "w").close()
    # a rename onto schema.json is a schema change (issue 14): an empty
    # file is no schema
    with pytest.raises(OSError) as e:
        os.rename(tmp, m.file("Customers", "schema.json"))
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.rename(tmp, m.file("RoutingRules", "rows.jsonl"))
    assert e.value.errno == errno.EXDEV
    os.unlink(tmp)
    # links, symlinks and special files: EPERM, not ENOSYS ("Function not
    # implemented" read as a broken mount)
    for make in (lambda p: os.link(rows, p),
                 lambda p: os.symlink("rows.jsonl", p),
                 lambda p: os.mkfifo(p)):
        with pytest.raises(OSError) as e:
            make(m.file("Customers", "other"))
        assert e.value.errno == errno.EPERM
    assert table_entries(m) == OWN


# ---- replace in the production dialect -----------------------------------------

@pytest.mark.parametrize("job_rows", ["1000", "5"])
def test_replace_in_the_flows_dialect(emu_factory, mount_factory, tmp_path,
                                      job_rows):
    """Deletes go by key, one request each, whether the changed rows go
    one by one or as one CSV job (job_rows=5): a ReplaceAll job would
    re-send every row through CSV and change rows with absent values."""
    emu = emu_factory("--generate", "Big:600")
    m = mount_factory(emu, opts=f"api=flows,replace,job_rows={job_rows}")
    m.start()
    rows = m.file("Big", "rows.jsonl")
    lines = slurp(rows).decode().splitlines()
    before = {r["customer_id"]: r for r in emu.rows("Big")}
    gone = {json.loads(line)["key"] for line in lines[10:18]}
    new = [json.loads(line) for line in lines[:10]]
    for r in new:
        r["visits"] = 424242
    keep = [json.dumps(r, separators=(",", ":")) for r in new] + lines[18:]
    src = tmp_path / "keep.jsonl"
    src.write_text("".join(line + "\n" for line in keep))
    s0 = emu.stats()
    ok(f"cp '{src}' '{rows}'")
    s1 = emu.stats()
    after = {r["customer_id"]: r for r in emu.rows("Big")}
    assert len(after) == 592 and not (set(after) & gone)
    assert route(emu, "flows_row_delete", s1) - \
        route(emu, "flows_row_delete", s0) == 8
    for r in new:
        assert after[r["key"]]["visits"] == 424242
    # the rows the file did not change are as they were
    for k, r in after.items():
        if r.get("visits") != 424242:
            assert r == before[k]
    st = status(m, "Big")["import"]
    assert st["rows_deleted"] == 8
    assert st["route"] == ("job" if job_rows == "5" else "rows")


# ---- more tools ------------------------------------------------------------------

def test_pv_and_tee_a(sample, tmp_path):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    ok(f"pv -q '{rows}' > '{tmp_path}/pv.jsonl'")
    assert slurp(tmp_path / "pv.jsonl") == \
        expected_jsonl(emu, "Customers", CUSTOMERS)
    ok(f"echo '{cust(70)}' | tee -a '{rows}' >/dev/null")
    assert "NEW-00070" in keys(emu)
    p = run(f"echo '{{\"customer_id\":\"T\",\"loyalty_tier\":\"x\"}}' | "
            f"tee -a '{rows}' >/dev/null")
    assert p.returncode != 0


def test_chown_to_the_owner_only(sample):
    emu, m = sample
    rows = m.file("Customers", "rows.jsonl")
    os.chown(rows, os.getuid(), os.getgid())
    if os.getuid() == 0:
        with pytest.raises(OSError) as e:
            os.chown(rows, 12345, -1)
        assert e.value.errno == errno.EPERM


def test_tools_in_the_flows_dialect(emu_factory, mount_factory):
    """The same routes in the production dialect: `>>` commits at write(),
    sed -i imports through a scratch file, one changed row is one PUT."""
    emu = emu_factory("--generate", "Big:300")
    m = mount_factory(emu, opts="api=flows").start()
    rows = m.file("Big", "rows.jsonl")
    p = run(f"echo '{{\"key\":\"X\",\"loyalty_tier\":\"four\"}}' >> '{rows}'")
    assert p.returncode != 0 and b"write error" in p.stderr
    ok(f"echo '{{\"key\":\"APP-1\",\"loyalty_tier\":3}}' >> '{rows}'")
    assert "APP-1" in {r["customer_id"] for r in emu.rows("Big")}
    k = json.loads(slurp(rows).decode().splitlines()[5])["key"]
    s0 = emu.stats()
    ok(f"sed -i '6s/\"loyalty_tier\":[^,}}]*/\"loyalty_tier\":9999/' "
       f"'{rows}'")
    s1 = emu.stats()
    got = {r["customer_id"]: r for r in emu.rows("Big")}
    assert got[k]["loyalty_tier"] == 9999
    assert route(emu, "flows_row_put", s1) - \
        route(emu, "flows_row_put", s0) == 1
    assert route(emu, "flows_row_post", s1) == route(emu, "flows_row_post",
                                                     s0)
    assert table_entries(m, "Big") == OWN


def test_flows_stat_costs_nothing_until_an_import(emu_factory,
                                                  mount_factory):
    """In the production dialect a revalidation re-reads the table: a stat
    trusts the cached copy, until an import voids it."""
    emu = emu_factory("--generate", "Big:1200")
    # every stat reaches dtfs: no attributes kept by the kernel
    m = mount_factory(emu, opts="api=flows,revalidate=0,attr_timeout=0,"
                      "entry_timeout=0").start()
    rows = m.file("Big", "rows.jsonl")
    data = slurp(rows)
    s0 = emu.stats()
    for _ in range(3):
        assert os.stat(rows).st_size == len(data)
    assert route(emu, "flows_rows_get") == route(emu, "flows_rows_get", s0)
    ok(f"echo '{{\"key\":\"ADD-1\",\"loyalty_tier\":3}}' >> '{rows}'")
    assert os.stat(rows).st_size == len(slurp(rows)) > len(data)


def test_rsync_of_a_whole_directory_back(sample, tmp_path):
    """A copy of the table's directory goes back whole: rows.jsonl lands,
    the unchanged read-only files are skipped; a schema.json that drops a
    column is refused (exit 23, said so)."""
    emu, m = sample
    d = tmp_path / "t"
    ok(f"rsync -a '{m.table('Holidays/2025')}/' '{d}/'")
    lines = slurp(d / "rows.jsonl").decode().splitlines()
    r = json.loads(lines[0])
    key = list(r)[0]
    r[list(r)[1]] = "edited by rsync"
    lines[0] = json.dumps(r, separators=(",", ":"))
    (d / "rows.jsonl").write_text("".join(x + "\n" for x in lines))
    ok(f"rsync -a '{d}/' '{m.table('Holidays/2025')}/'")
    got = {x[key]: x for x in emu.rows("Holidays/2025")}
    assert got[r[key]][list(r)[1]] == "edited by rsync"
    # schema.json goes back as a schema change (issue 14): the same
    # schema with a blank more changes nothing; one without a column is
    # refused
    with open(d / "schema.json", "a") as f:
        f.write(" ")
    ok(f"rsync -a '{d}/' '{m.table('Holidays/2025')}/'")
    doc = json.loads(slurp(d / "schema.json"))
    del doc["columns"][-1]
    (d / "schema.json").write_text(json.dumps(doc))
    p = run(f"rsync -a '{d}/' '{m.table('Holidays/2025')}/'")
    assert p.returncode == 23 and b"schema.json" in p.stderr, p
    assert table_entries(m, "Holidays/2025") == OWN
