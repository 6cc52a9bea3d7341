"""Start and talk to dtfs-emu from Python tests and scripts.

Standard library only (urllib.parse, http.client). Run under /usr/bin/python3.

    from emu import Emu
    e = Emu.start("--data", SAMPLE_DATA)
    tok = e.token()
    status, headers, body = e.request("GET", "/api/v2/datatables", token=tok)
    e.stop()          # SIGTERM; asserts exit 0 and no sanitizer report

Pytest: `from emu import emu, emu_factory` in a conftest.py (or a test
module) makes the fixtures available. `emu` is an emulator on the sample
tables of tools/sample-data; `emu_factory(*args)` starts one with any
arguments. Both are stopped (and checked) at the end of the test.
"""
import base64
import http.client
import json
import os
import select
import signal
import subprocess
import tempfile
import time
import urllib.parse

DEMO_CLIENT_ID = "dtfs-demo"
DEMO_CLIENT_SECRET = "dtfs-demo-secret"
SCOPE_READ = "data-table:read"
SCOPE_WRITE = "data-table:write"
SCOPE_ARCHITECT = "architect"
SCOPE_ARCHITECT_READONLY = "architect:readonly"
FLOWS = "/api/v2/flows/datatables"

SOURCE_DIR = os.environ.get(
    "DTFS_SOURCE_DIR",
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD_DIR = os.environ.get("DTFS_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
SAMPLE_DATA = os.path.join(SOURCE_DIR, "tools", "sample-data")
# the production-shaped sample tables (PriceList), loaded with their own
# --data: `--data SAMPLE_DATA` alone serves the three cursor tables
SAMPLE_PRODUCTION = os.path.join(SAMPLE_DATA, "production")

# Lines that mean a sanitizer found something.
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer",
                   "SUMMARY: AddressSanitizer", "SUMMARY: UndefinedBehavior")


def emu_binary():
    return os.path.join(BUILD_DIR, "tools", "emu", "dtfs-emu")


def sanitizer_report(text):
    """The first line of `text` that looks like a sanitizer report, or None."""
    for line in text.splitlines():
        if any(m in line for m in SANITIZER_MARKS):
            return line
    return None


class EmuError(AssertionError):
    pass


class Emu:
    """A running dtfs-emu process on 127.0.0.1 with a free port."""

    def __init__(self, proc, url, stderr_file,
                 client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET):
        self.proc = proc
        # the client the conveniences (tables, rows, upsert...) use: the
        # first --client given, else the demo client
        self.client_id = client_id
        self.client_secret = client_secret
        self.url = url
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname
        self.port = parsed.port
        self.pid = proc.pid
        self._stderr = stderr_file
        self._token = None
        self._stopped = False

    # ---- life cycle ----

    @classmethod
    def start(cls, *args, binary=None, timeout=120):
        """Start dtfs-emu with `--listen 127.0.0.1:0` plus `args`; wait for
        the `listening on` line. Raises EmuError if it does not come."""
        binary = binary or emu_binary()
        stderr_file = tempfile.TemporaryFile(mode="w+b")
        env = dict(os.environ)
        # leaks make a sanitized build exit non-zero; keep reports readable
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", *map(str, args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=stderr_file, env=env)
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
        text = line.decode(errors="replace").strip()
        if not text.startswith("listening on http://"):
            proc.kill()
            proc.wait()
            stderr_file.seek(0)
            raise EmuError("dtfs-emu did not start (stdout %r): %s" % (
                text, stderr_file.read().decode(errors="replace")))
        client = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
        args = list(map(str, args))
        for i, a in enumerate(args[:-1]):
            if a == "--client":
                parts = args[i + 1].split(":", 2)
                client = (parts[0], parts[1])
                break
        return cls(proc, text[len("listening on "):], stderr_file, *client)

    def stderr(self):
        """Everything the emulator wrote on stderr so far."""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout=60):
        """SIGTERM, wait; assert exit status 0 and no sanitizer report.
        A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise EmuError("dtfs-emu did not stop on SIGTERM:\n"
                               + self.stderr())
        self.proc.stdout.close()
        err = self.stderr()
        self._stderr.close()
        rc = self.proc.returncode
        if rc != 0:
            raise EmuError("dtfs-emu exited with %s:\n%s" % (rc, err))
        bad = sanitizer_report(err)
        if bad:
            raise EmuError("sanitizer report from dtfs-emu: %s\n%s"
                           % (bad, err))

    def peak_rss_kib(self):
        """VmHWM of the running process, in KiB."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    # ---- HTTP ----

    def connection(self, timeout=120):
        """A new keep-alive connection to the emulator."""
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=timeout)

    def request(self, method, path, body=None, token=None, headers=None,
                conn=None):
        """One request. `body`: dict/list (sent as JSON), str or bytes.
        `token`: a bearer token. Returns (status, headers, body) where
        headers is an http.client.HTTPMessage (case-insensitive) and body
        the parsed JSON, or the raw bytes when it is not JSON."""
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            if isinstance(body, (dict, list)):
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = body
        if token is not None:
            hdrs["Authorization"] = "Bearer " + token
        own = conn is None
        c = conn or self.connection()
        try:
            c.request(method, path, body=data, headers=hdrs)
            resp = c.getresponse()
            raw = resp.read()
            ctype = resp.getheader("Content-Type", "")
            parsed = raw
            if raw and "json" in ctype:
                parsed = json.loads(raw)
            return resp.status, resp.headers, parsed
        finally:
            if own:
                c.close()

    def token_response(self, client_id=DEMO_CLIENT_ID,
                       secret=DEMO_CLIENT_SECRET, scopes=None,
                       grant_type="client_credentials"):
        """POST /oauth/token; returns (status, headers, body)."""
        form = {"grant_type": grant_type}
        if scopes is not None:
            form["scope"] = " ".join(scopes) if not isinstance(
                scopes, str) else scopes
        basic = base64.b64encode(
            ("%s:%s" % (client_id, secret)).encode()).decode()
        return self.request(
            "POST", "/oauth/token", body=urllib.parse.urlencode(form),
            headers={"Authorization": "Basic " + basic,
                     "Content-Type": "application/x-www-form-urlencoded"})

    def token(self, client_id=DEMO_CLIENT_ID, secret=DEMO_CLIENT_SECRET,
              scopes=None):
        """A new access token; asserts the grant succeeds."""
        status, _, body = self.token_response(client_id, secret, scopes)
        if status != 200:
            raise EmuError("token grant failed: %s %r" % (status, body))
        return body["access_token"]

    def _default_token(self):
        if self._token is None:
            self._token = self.token(self.client_id, self.client_secret)
        return self._token

    def api(self, method, path, body=None, headers=None, expect=200):
        """A request with the demo client's token; asserts `expect`."""
        status, hdrs, data = self.request(method, path, body,
                                          self._default_token(), headers)
        if expect is not None and status != expect:
            raise EmuError("%s %s: %s %r" % (method, path, status, data))
        return status, hdrs, data

    # ---- control endpoints ----

    def stats(self):
        status, _, body = self.request("GET", "/_emu/stats")
        assert status == 200, body
        return body

    def reset_stats(self):
        status, _, body = self.request("POST", "/_emu/stats/reset")
        assert status == 200, body
        return body

    def config(self, **kw):
        """POST /_emu/config; returns the configuration now in force."""
        status, _, body = self.request("POST", "/_emu/config", body=kw)
        if status != 200:
            raise EmuError("config %r failed: %s %r" % (kw, status, body))
        return body

    def race(self, **kw):
        """POST /_emu/race: one row change (delete=KEY or insert=ROW) in
        table just before the nth request of route is served."""
        status, _, body = self.request("POST", "/_emu/race", body=kw)
        if status != 200:
            raise EmuError("race %r failed: %s %r" % (kw, status, body))
        return body

    def race_state(self):
        status, _, body = self.request("GET", "/_emu/race")
        assert status == 200, body
        return body

    def expire_tokens(self):
        status, _, body = self.request("POST", "/_emu/tokens/expire")
        assert status == 200, body
        return body["expired"]

    # ---- conveniences over the API (demo client) ----

    def tables(self):
        """Every table entity, following the listing's cursors."""
        out, cursor = [], None
        while True:
            q = {"pageSize": 100}
            if cursor:
                q["cursor"] = cursor
            _, _, body = self.api(
                "GET", "/api/v2/datatables?" + urllib.parse.urlencode(q))
            out.extend(body["entities"])
            cursor = body.get("nextPageCursor")
            if not cursor:
                return out

    def table_id(self, name):
        for t in self.tables():
            if t["name"] == name:
                return t["id"]
        raise KeyError(name)

    def schema(self, name):
        _, _, body = self.api(
            "GET", "/api/v2/datatables/%s/schema" % self.table_id(name))
        return body

    def row_entries(self, table_name, page_size=1000):
        """Every row as {"id", "columns"} in API order."""
        tid = self.table_id(table_name)
        out, cursor = [], None
        conn = self.connection()
        try:
            while True:
                q = {"pageSize": page_size}
                if cursor:
                    q["cursor"] = cursor
                status, _, body = self.request(
                    "GET", "/api/v2/datatables/%s/rows?%s"
                    % (tid, urllib.parse.urlencode(q)),
                    token=self._default_token(), conn=conn)
                if status != 200:
                    raise EmuError("rows of %r: %s %r"
                                   % (table_name, status, body))
                out.extend(body["rows"])
                cursor = body.get("nextPageCursor")
                if not cursor:
                    return out
        finally:
            conn.close()

    def rows(self, table_name):
        """Every row's columns dict, in API order."""
        return [r["columns"] for r in self.row_entries(table_name)]

    def upsert(self, table_name, rows, upsert=True):
        """Upsert a list of columns dicts (≤ 1000); returns the reply body
        ({"inserted", "updated"})."""
        path = "/api/v2/datatables/%s/rows" % self.table_id(table_name)
        if upsert:
            path += "?upsert=true"
        _, _, body = self.api("POST", path,
                              body=[{"columns": r} for r in rows])
        return body

    # ---- the production dialect (/api/v2/flows/datatables) ----

    def route_count(self, name, stats=None):
        """by_route[name] of /_emu/stats; production routes appear there
        only once counted, so a missing one is 0."""
        return (stats or self.stats())["by_route"].get(name, 0)

    def flows_tables(self, expand=False):
        """Every production table entity, paging by pageNumber."""
        out, number = [], 1
        while True:
            q = {"pageSize": 100, "pageNumber": number}
            if expand:
                q["expand"] = "schema"
            _, _, body = self.api("GET", FLOWS + "?" + urllib.parse.urlencode(q))
            out.extend(body["entities"])
            if number >= body["pageCount"]:
                return out
            number += 1

    def flows_table_id(self, name):
        for t in self.flows_tables():
            if t["name"] == name:
                return t["id"]
        raise KeyError(name)

    def flows_rows(self, table_id, page_size=500):
        """Every row of a production table (showbrief=false), in order."""
        out, number = [], 1
        while True:
            _, _, body = self.api(
                "GET", "%s/%s/rows?pageNumber=%d&pageSize=%d&showbrief=false"
                % (FLOWS, table_id, number, page_size))
            out.extend(body["entities"])
            if number >= body["pageCount"]:
                return out
            number += 1

    def wait_job(self, path, timeout=60):
        """Poll a job until it leaves WaitingForUpload/Processing."""
        deadline = time.monotonic() + timeout
        while True:
            _, _, job = self.api("GET", path)
            if job["status"] in ("Succeeded", "Failed"):
                return job
            if time.monotonic() > deadline:
                raise EmuError("job %s still %s" % (path, job["status"]))
            time.sleep(0.01)

    def upload(self, job, data, headers=None):
        """PUT data to a job's uploadURI with its uploadHeaders (or
        `headers`); returns (status, headers, body)."""
        path = urllib.parse.urlsplit(job["uploadURI"]).path
        hdrs = job["uploadHeaders"] if headers is None else headers
        return self.request("PUT", path, body=data, headers=hdrs)

    def import_csv(self, table_id, data, mode="Append"):
        """Run a CSV import job to its end; returns the final job."""
        _, _, job = self.api("POST", "%s/%s/import/csv/jobs"
                             % (FLOWS, table_id), body={"importMode": mode})
        status, _, body = self.upload(job, data)
        if status != 200:
            raise EmuError("upload failed: %s %r" % (status, body))
        return self.wait_job("%s/%s/import/jobs/%s"
                             % (FLOWS, table_id, job["id"]))

    def export_csv(self, table_id):
        """Run an export job and download its CSV through the redirect
        (the signed URL is fetched without the token); returns bytes."""
        _, _, job = self.api("POST", "%s/%s/export/jobs" % (FLOWS, table_id))
        job = self.wait_job("%s/%s/export/jobs/%s"
                            % (FLOWS, table_id, job["id"]))
        if job["status"] != "Succeeded":
            raise EmuError("export failed: %r" % job)
        uri = urllib.parse.urlsplit(job["downloadURI"])
        status, hdrs, _ = self.api("GET", uri.path, expect=None)
        if status not in (302, 303):
            raise EmuError("download gave %s, not a redirect" % status)
        loc = urllib.parse.urlsplit(hdrs["Location"])
        status, _, body = self.request("GET", loc.path + "?" + loc.query)
        if status != 200:
            raise EmuError("signed download gave %s" % status)
        return body


try:
    import pytest
except ImportError:  # scripts (tools/bench) use Emu without pytest
    pytest = None

if pytest is not None:
    @pytest.fixture
    def emu_factory():
        """Start emulators with any arguments; all stopped and checked at
        the end of the test."""
        started = []

        def start(*args):
            e = Emu.start(*args)
            started.append(e)
            return e

        yield start
        errors = []
        for e in started:
            try:
                e.stop()
            except AssertionError as exc:
                errors.append(str(exc))
        if errors:
            raise EmuError("\n".join(errors))

    @pytest.fixture
    def emu(emu_factory):
        """An emulator on the sample tables of tools/sample-data."""
        return emu_factory("--data", SAMPLE_DATA)
