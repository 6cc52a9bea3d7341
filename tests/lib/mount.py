"""Mount dtfs (and run dtfsctl) against a dtfs-emu for the integration suite.

A Mount runs `dtfs -f` on a temporary directory with its own cache, waits
until the mount appears, and on stop() unmounts, waits for the daemon and
fails if its stderr carries sanitizer reports.
"""
import os
import signal
import subprocess
import time

BUILD = os.environ.get("DTFS_BUILD_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..", "build"))
DTFS = os.path.join(BUILD, "fs", "dtfs")
DTFSCTL = os.path.join(BUILD, "tools", "dtfsctl")

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer")


def check_sanitizer(text, who):
    for mark in SANITIZER_MARKS:
        assert mark not in text, f"{who} reported: {text[-4000:]}"


def fuse_available():
    return os.path.exists("/dev/fuse") and subprocess.call(
        ["sh", "-c", "command -v fusermount3"],
        stdout=subprocess.DEVNULL) == 0


def creds_env(client_id, secret, base=None):
    env = dict(base if base is not None else os.environ)
    env["GENESYSCLOUD_OAUTHCLIENT_ID"] = client_id
    env["GENESYSCLOUD_OAUTHCLIENT_SECRET"] = secret
    env.pop("GENESYSCLOUD_REGION", None)
    # sanitizer builds: leaks are reported at exit, and a report fails
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    return env


class Mount:
    def __init__(self, emu, base, opts="", client=None, cache_dir=None,
                 name="mnt"):
        from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
        self.emu = emu
        self.base = str(base)
        self.path = os.path.join(self.base, name)
        self.cache_dir = cache_dir or os.path.join(self.base, "cache")
        self.opts = opts
        self.client = client or (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
        self.proc = None
        self.log_path = os.path.join(self.base, name + ".log")

    def options(self):
        o = f"api_url={self.emu.url},cache_dir={self.cache_dir}"
        return o + ("," + self.opts if self.opts else "")

    def start(self, expect_fail=False, timeout=20):
        os.makedirs(self.path, exist_ok=True)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [DTFS, "-f", "-o", self.options(), self.path],
            stdout=self.log, stderr=subprocess.STDOUT,
            env=creds_env(*self.client))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                if expect_fail:
                    return self.proc.returncode, self.stderr()
                raise AssertionError(
                    f"dtfs exited {self.proc.returncode}: {self.stderr()}")
            if os.path.ismount(self.path):
                if expect_fail:
                    raise AssertionError("dtfs mounted but should not")
                return self
            time.sleep(0.02)
        raise AssertionError(f"dtfs did not mount: {self.stderr()}")

    def stderr(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def table(self, name):
        return os.path.join(self.path, name.replace("%", "%25")
                            .replace("/", "%2F"))

    def file(self, table, fname):
        return os.path.join(self.table(table), fname)

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            if subprocess.call(["fusermount3", "-u", self.path]) != 0:
                # a failed test may still hold a file open: detach
                subprocess.call(["fusermount3", "-u", "-z", self.path])
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("dtfs did not exit after unmount")
        self.log.close()
        check_sanitizer(self.stderr(), "dtfs")
        self.proc = None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        subprocess.call(["fusermount3", "-u", "-z", self.path],
                        stderr=subprocess.DEVNULL)
        self.log.close()
        self.proc = None


def dtfsctl(emu, cache_dir, *args, opts="", client=None, input=None,
            timeout=300):
    """Run dtfsctl; returns (exit code, stdout bytes, stderr text)."""
    from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
    client = client or (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    o = f"api_url={emu.url},cache_dir={cache_dir}"
    if opts:
        o += "," + opts
    p = subprocess.run([DTFSCTL, "-o", o, *args], input=input,
                       capture_output=True, env=creds_env(*client),
                       timeout=timeout)
    err = p.stderr.decode("utf-8", "replace")
    check_sanitizer(err, "dtfsctl")
    return p.returncode, p.stdout, err


class RawNumber(str):
    """A JSON number kept as the text the server sent."""


def _dump(v):
    import json
    if isinstance(v, RawNumber):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(_dump(k) + ":" + _dump(x)
                              for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_dump(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def api_pages(emu, table, page_size=1000):
    """Every page of a table as the API sends it: (etag, parsed body) with
    numbers kept as RawNumber text and key order kept."""
    import http.client
    import json
    import urllib.parse
    from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
    token = emu.token(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    tid = emu.table_id(table)
    u = urllib.parse.urlsplit(emu.url)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    cursor, pages = None, []
    while True:
        q = f"pageSize={page_size}"
        if cursor:
            q += "&cursor=" + urllib.parse.quote(cursor, safe="")
        conn.request("GET", f"/api/v2/datatables/{tid}/rows?{q}",
                     headers={"Authorization": "Bearer " + token})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, body
        page = json.loads(body, parse_float=RawNumber, parse_int=RawNumber)
        pages.append((r.headers.get("ETag"), page))
        cursor = page.get("nextPageCursor")
        if not cursor:
            conn.close()
            return pages


def expected_jsonl(emu, table, schema_order):
    """rows.jsonl's bytes as the contract defines them, built independently
    of dtfs from the API's pages: columns objects, keys in schema order,
    numbers' text kept, compact, one per line."""
    out = []
    for _, page in api_pages(emu, table):
        for row in page["rows"]:
            cols = row["columns"]
            ordered = {k: cols[k] for k in schema_order if k in cols}
            ordered.update({k: v for k, v in cols.items()
                            if k not in ordered})
            out.append(_dump(ordered) + "\n")
    return "".join(out).encode()


DATA_DIR = os.path.join(os.environ.get(
    "DTFS_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")),
    "tools", "sample-data")
