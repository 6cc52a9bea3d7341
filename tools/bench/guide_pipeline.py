#!/usr/bin/python3
"""The guide's pipeline, as a user would script it: the reference dtfs is
measured against (../shared/seed/000_7e1c5b5223c1db7c.txt).

    guide_pipeline.py export URL TABLE OUT.jsonl   cursor loop, pageSize 1000,
                                                   ETag checked on every page
    guide_pipeline.py import URL TABLE IN.jsonl    chunks of 250, one at a time,
                                                   upsert=true, the guide's
                                                   retry_with_backoff

Credentials: GENESYSCLOUD_OAUTHCLIENT_ID / _SECRET (the emulator's demo client
by default). Prints one JSON line: {"rows", "requests", "seconds"}.
Only the standard library; one keep-alive connection, like a requests.Session.
"""
import base64
import http.client
import json
import os
import random
import sys
import time
import urllib.parse


class Client:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port)
        self.requests = 0
        cid = os.environ.get("GENESYSCLOUD_OAUTHCLIENT_ID", "dtfs-demo")
        sec = os.environ.get("GENESYSCLOUD_OAUTHCLIENT_SECRET",
                             "dtfs-demo-secret")
        basic = base64.b64encode(f"{cid}:{sec}".encode()).decode()
        st, _, body = self.call(
            "POST", "/oauth/token",
            b"grant_type=client_credentials&scope=data-table%3Aread+"
            b"data-table%3Awrite",
            {"Authorization": "Basic " + basic,
             "Content-Type": "application/x-www-form-urlencoded"})
        assert st == 200, body
        self.token = json.loads(body)["access_token"]

    def call(self, method, path, body=None, headers=None):
        self.requests += 1
        self.conn.request(method, path, body=body, headers=headers or {})
        r = self.conn.getresponse()
        return r.status, r.headers, r.read()

    def api(self, method, path, body=None):
        h = {"Authorization": "Bearer " + self.token}
        if body is not None:
            h["Content-Type"] = "application/json"
        return self.call(method, path, body, h)

    def table_id(self, name):
        cursor = None
        while True:
            q = "pageSize=100" + (f"&cursor={urllib.parse.quote(cursor)}"
                                  if cursor else "")
            st, _, body = self.api("GET", "/api/v2/datatables?" + q)
            assert st == 200, body
            page = json.loads(body)
            for e in page["entities"]:
                if e["name"] == name:
                    return e["id"]
            cursor = page.get("nextPageCursor")
            if not cursor:
                raise SystemExit(f"no table {name}")


def retry_with_backoff(make_api_call, max_retries=5):
    """The guide's retry loop, as written there."""
    status, headers, body = make_api_call()
    for attempt in range(max_retries):
        if status == 429:
            retry_after = float(headers.get("Retry-After", 2 ** attempt))
            time.sleep(retry_after + random.uniform(0, 1))
            status, headers, body = make_api_call()
        elif status >= 500:
            time.sleep(2 ** attempt)
            status, headers, body = make_api_call()
        else:
            break
    return status, headers, body


def export(c, tid, out):
    rows = 0
    etag = None
    cursor = None
    with open(out, "w") as f:
        while True:
            q = "pageSize=1000" + (f"&cursor={urllib.parse.quote(cursor)}"
                                   if cursor else "")
            st, h, body = retry_with_backoff(
                lambda: c.api("GET", f"/api/v2/datatables/{tid}/rows?{q}"))
            assert st == 200, body
            if etag is None:
                etag = h.get("ETag")
            elif h.get("ETag") != etag:
                raise SystemExit("table changed during export")
            page = json.loads(body)
            for r in page["rows"]:
                f.write(json.dumps(r["columns"], separators=(",", ":")))
                f.write("\n")
            rows += len(page["rows"])
            cursor = page.get("nextPageCursor")
            if not cursor:
                return rows


def import_(c, tid, path):
    rows = 0
    chunk = []

    def send():
        body = json.dumps([{"columns": r} for r in chunk]).encode()
        st, _, resp = retry_with_backoff(
            lambda: c.api("POST", f"/api/v2/datatables/{tid}/rows?upsert=true",
                          body))
        assert st == 200, resp

    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            chunk.append(json.loads(line))
            rows += 1
            if len(chunk) == 250:
                send()
                chunk = []
    if chunk:
        send()
    return rows


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("export", "import"):
        raise SystemExit(__doc__)
    verb, url, table, path = sys.argv[1:]
    t0 = time.monotonic()
    c = Client(url)
    tid = c.table_id(table)
    rows = export(c, tid, path) if verb == "export" else import_(c, tid, path)
    print(json.dumps({"rows": rows, "requests": c.requests,
                      "seconds": round(time.monotonic() - t0, 4)}))


if __name__ == "__main__":
    main()
