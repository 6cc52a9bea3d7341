#!/usr/bin/python3
"""The references dtfs's production dialect is measured against: what the
tools users have today do (Terraform's provider, the gc CLI).

    flows_ref.py export API_URL TABLE_ID PAGE_SIZE OUT
        a sequential pageNumber loop (showbrief=false), one keep-alive
        connection, the rows written as JSONL: prints {"rows", "requests"}
    flows_ref.py import API_URL TABLE_ID IN BUDGET_N BUDGET_S
        one PUT per row of IN (JSONL of flat rows with "key"), in sequence,
        never more than BUDGET_N requests in any BUDGET_S seconds (a polite
        client); prints {"rows", "requests"}

Credentials from GENESYSCLOUD_OAUTHCLIENT_ID/SECRET; the token comes from
API_URL's /oauth/token (the emulator's). Standard library only.
"""
import base64
import collections
import http.client
import json
import os
import sys
import time
import urllib.parse


def token(u):
    cid = os.environ["GENESYSCLOUD_OAUTHCLIENT_ID"]
    sec = os.environ["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    conn = http.client.HTTPConnection(u.hostname, u.port)
    auth = base64.b64encode(("%s:%s" % (cid, sec)).encode()).decode()
    conn.request("POST", "/oauth/token", body="grant_type=client_credentials",
                 headers={"Authorization": "Basic " + auth,
                          "Content-Type":
                          "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        sys.exit("token: %d %r" % (r.status, body))
    conn.close()
    return json.loads(body)["access_token"]


def export(url, tid, size, out):
    u = urllib.parse.urlsplit(url)
    tok = token(u)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    rows = requests = 0
    page = 1
    with open(out, "w") as f:
        while True:
            conn.request("GET", "/api/v2/flows/datatables/%s/rows?pageNumber"
                         "=%d&pageSize=%d&showbrief=false" % (tid, page, size),
                         headers={"Authorization": "Bearer " + tok})
            r = conn.getresponse()
            body = r.read()
            requests += 1
            if r.status != 200:
                sys.exit("page %d: %d %r" % (page, r.status, body[:200]))
            doc = json.loads(body)
            for e in doc.get("entities", []):
                f.write(json.dumps(e, separators=(",", ":")) + "\n")
                rows += 1
            if page >= doc.get("pageCount", 0):
                break
            page += 1
    print(json.dumps({"rows": rows, "requests": requests}))


def import_(url, tid, path, n, window):
    u = urllib.parse.urlsplit(url)
    tok = token(u)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    sent = collections.deque()
    rows = requests = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            while len(sent) >= n:
                wait = sent[0] + window - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sent.popleft()
            sent.append(time.monotonic())
            conn.request("PUT", "/api/v2/flows/datatables/%s/rows/%s"
                         % (tid, urllib.parse.quote(row["key"], safe="")),
                         body=json.dumps(row),
                         headers={"Authorization": "Bearer " + tok,
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            requests += 1
            if r.status != 200:
                sys.exit("row %s: %d %r" % (row["key"], r.status, body[:200]))
            rows += 1
    print(json.dumps({"rows": rows, "requests": requests}))


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "export":
        export(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 7 and sys.argv[1] == "import":
        import_(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
                float(sys.argv[6]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
