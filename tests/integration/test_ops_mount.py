"""Operating the mount (issue 13): FUSE options that are honoured or
refused, modes that tell the truth, allow_other with permission checks,
failures that read clearly while the API is down, the request log."""
import errno
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from mount import DATA_DIR, DTFS


def test_modes_tell_the_truth(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu).start()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(m.path) == 0o555
    # a table directory takes scratch files (issue 12)
    assert mode(m.table("Customers")) == 0o755
    # rows.csv imports, schema.json adds columns (issue 14)
    for f in ("rows.jsonl", "rows.csv", "schema.json"):
        assert mode(m.file("Customers", f)) == 0o644, f
    for f in ("status.json", "rejects.jsonl"):
        assert mode(m.file("Customers", f)) == 0o444, f
    # with the production API, mkdir makes tables at the root
    from emu import SAMPLE_PRODUCTION
    pe = emu_factory("--data", SAMPLE_PRODUCTION)
    fl = mount_factory(pe, opts="api=flows").start()
    assert mode(fl.path) == 0o755
    assert mode(fl.table("PriceList")) == 0o755
    flro = mount_factory(pe, opts="api=flows,ro").start()
    assert mode(flro.path) == 0o555

    ro = mount_factory(emu, opts="ro,umask=027").start()
    assert mode(ro.table("Customers")) == 0o550
    assert mode(ro.file("Customers", "rows.jsonl")) == 0o440
    assert mode(ro.file("Customers", "schema.json")) == 0o440

    u = mount_factory(emu, opts="umask=022").start()
    assert mode(u.file("Customers", "rows.jsonl")) == 0o644
    z = mount_factory(emu, opts="umask=000").start()
    # no x bit on data files, whatever the umask
    for f in os.listdir(z.table("Customers")):
        assert not os.stat(z.file("Customers", f)).st_mode & 0o111, f
    assert mode(z.file("Customers", "rows.jsonl")) == 0o644


@pytest.mark.parametrize("opt", ["kernel_cache", "auto_cache"])
def test_cache_options_refused_with_a_reason(emu_factory, mount_factory,
                                             opt):
    emu = emu_factory("--data", DATA_DIR)
    code, err = mount_factory(emu, opts=opt).start(expect_fail=True)
    assert code != 0
    assert f"option '{opt}' is refused" in err and "stale" in err


def test_bad_timeout_refused(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    code, err = mount_factory(emu, opts="attr_timeout=soon").start(
        expect_fail=True)
    assert code != 0 and "attr_timeout" in err and "soon" in err


def test_help_shows_the_values_used():
    out = subprocess.run([DTFS, "--help"], capture_output=True,
                         text=True).stdout
    assert re.search(r"negative_timeout=T .*\(1\.0\)", out), out
    assert re.search(r"attr_timeout=T .*\(1\.0\)", out)
    assert "0.0" not in out  # libfuse's defaults, which dtfs overrides
    out = subprocess.run([DTFS, "-o", "negative_timeout=7.5,attr_timeout=0",
                          "--help"], capture_output=True, text=True).stdout
    assert re.search(r"negative_timeout=T .*\(7\.5\)", out), out
    assert re.search(r"attr_timeout=T .*\(0\.0\)", out), out


def lookups(m, path):
    """How many times the kernel asked the daemon about path (LOOKUP and
    GETATTR lines of its FUSE debug log; a LOOKUP calls getattr too)."""
    text = m.stderr()
    return (text.count(f"LOOKUP {path}\n"),
            text.count(f"getattr[NULL] {path}\n"))


def test_timeouts_honoured(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    long = mount_factory(emu, opts="debug,attr_timeout=600,"
                         "entry_timeout=600,negative_timeout=600").start()
    short = mount_factory(emu, opts="debug,attr_timeout=0,entry_timeout=0,"
                          "negative_timeout=0").start()
    for m in (long, short):
        for _ in range(5):
            os.stat(m.file("Customers", "schema.json"))
            assert not os.path.exists(m.file("Customers", "nope"))
    # cached by the kernel: asked once; not cached: asked every time
    assert lookups(long, "/Customers/schema.json") == (1, 1)
    assert lookups(long, "/Customers/nope") == (1, 1)
    assert lookups(short, "/Customers/schema.json")[0] >= 5
    assert lookups(short, "/Customers/nope")[0] >= 5


@pytest.fixture
def open_dir():
    """A directory other users may enter (pytest's tmp is 0700)."""
    d = tempfile.mkdtemp(prefix="dtfs-ops-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(cmd):
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                           "--clear-groups", "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=60)


def test_allow_other_checks_permissions(open_dir, emu_factory,
                                        mount_factory):
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="allow_other", cache_dir=None)
    m.base = open_dir
    m.path = os.path.join(open_dir, "mnt")
    m.cache_dir = os.path.join(open_dir, "cache")
    m.log_path = os.path.join(open_dir, "mnt.log")
    m.start()
    rows = m.file("Customers", "rows.jsonl")
    # others may read what the modes let them read...
    p = as_nobody(f"wc -l < '{rows}'")
    assert p.returncode == 0 and p.stdout.strip() == "3000", p.stderr
    # ...but not import with the owner's credentials
    emu.reset_stats()
    p = as_nobody(f"echo '{{\"customer_id\":\"X\"}}' >> '{rows}'")
    assert p.returncode != 0 and "Permission denied" in p.stderr
    p = as_nobody(f"cat '{m.file('Customers', 'schema.json')}' > /dev/null")
    assert p.returncode == 0
    assert emu.stats()["by_route"]["rows_upsert"] == 0
    # the owner still writes
    with open(rows, "ab") as f:
        f.write(b'{"customer_id":"CUST-00001","loyalty_tier":1}\n')


def test_wrong_secret_says_so(emu_factory, mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    code, err = mount_factory(emu, client=(DEMO_CLIENT_ID, "hunter2")).start(
        expect_fail=True)
    assert code != 0
    assert "client id or secret is wrong" in err
    assert "cannot reach" not in err and "hunter2" not in err
    assert "not mounted: access refused" in err


def http_lines(text):
    return [l for l in text.splitlines() if ": http " in l]


def test_api_down_fails_fast_and_serves_the_cache(emu_factory,
                                                  mount_factory):
    emu = emu_factory("--generate", "Cached:3000", "--generate", "Cold:3000")
    host = emu.url
    m = mount_factory(emu, opts="log_level=debug,revalidate=0").start()
    cached = open(m.file("Cached", "rows.jsonl"), "rb").read()
    emu.stop()
    before = len(http_lines(m.stderr()))
    t0 = time.monotonic()
    # the first failure opens the breaker: one attempt, no retries
    with pytest.raises(OSError) as e:
        open(m.file("Cold", "rows.jsonl"), "rb").read()
    assert e.value.errno == errno.EHOSTUNREACH
    # a whole cached version is served, without waiting for retries
    for _ in range(10):
        assert open(m.file("Cached", "rows.jsonl"), "rb").read() == cached
    # the rest fail at once, never with ENOTCONN
    for _ in range(20):
        with pytest.raises(OSError) as e:
            open(m.file("Cold", "rows.jsonl"), "rb").read()
        assert e.value.errno == errno.EHOSTUNREACH
    elapsed = time.monotonic() - t0
    sent = http_lines(m.stderr())[before:]
    # at most one probe a second is sent while the API is down (31 opens
    # would send 31 requests, and 8 attempts each without the breaker)
    assert len(sent) <= 2 + int(elapsed), sent
    assert all("no answer" in l for l in sent), sent
    log = m.stderr()
    assert "serving the cached version" in log
    assert f"{host} cannot be reached" in log
    assert "get schema of 'Cold' failed" in log
    # 31 failed opens: the requests in flight when it went down (the
    # schema and the first page go together) fail once each, then one
    # error line per 10 s for the refusals; the rest at debug level
    errs = [l for l in log.splitlines() if "error:" in l]
    assert 1 <= len(errs) <= 4 + int(elapsed / 10), errs
    assert "requests failed at once so far" in log
    # writing: close() reports the failure with a clear errno
    f = open(m.file("Cached", "rows.jsonl"), "ab")
    f.write(cached.split(b"\n", 1)[0] + b"\n")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EHOSTUNREACH
    assert m.proc.poll() is None


def test_debug_log_has_every_request_and_no_secret(emu_factory,
                                                   mount_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    log = tmp_path / "dtfs.log"
    m = mount_factory(emu, opts=f"log_level=debug,log_file={log}").start()
    emu.reset_stats()
    open(m.file("Customers", "rows.jsonl"), "rb").read()
    text = log.read_text()
    lines = http_lines(text)
    st = emu.stats()
    assert len([l for l in lines if "/rows?" in l]) == \
        st["by_route"]["rows_get"], (lines, st)
    for l in lines:
        assert re.search(r": http (GET|POST|PUT|DELETE) /\S* -> (\d{3} in "
                         r"[\d.]+ ms \(correlation [0-9a-f-]+\)|no answer)",
                         l), l
    # a time stamp on each line of the file, the token request too
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z dtfs\[\d+\]: ",
                    text)
    assert any("POST /oauth/token -> 200" in l for l in lines)
    assert os.stat(log).st_mode & 0o077 == 0
    for bad in (DEMO_CLIENT_SECRET, "Bearer", "Authorization",
                emu.token()):
        assert bad not in text and bad not in m.stderr(), bad
