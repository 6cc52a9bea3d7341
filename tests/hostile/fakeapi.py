"""A small fake of the cursor API that misbehaves on purpose (loopback only).

    api = FakeApi(rows_mode="self_loop")   # starts on 127.0.0.1, port 0
    api.url                                # http://127.0.0.1:PORT
    api.count("rows")                      # requests seen per route
    api.stop()

One table, "T" (id "t1"), with a one-column string key. Modes:
  token_mode:   "ok", "hang" (never answers), "crlf" (a token with CR/LF)
  list_mode:    "ok", "loop" (cursor A → B → A → …), "same_page" (the
                production listing, /api/v2/flows/datatables, sends the
                same full page whatever pageNumber asks, with no
                pageCount)
  rows_mode:    "ok" (2 pages), "self_loop" (a page's next cursor is its
                own), "loop" (c1 → c2 → c1), "endless" (a body that never
                ends), "trickle" (1 byte a second), "bad_utf8" (a string
                with an invalid UTF-8 byte)
  names:        the table names of the listing (ids t0, t1, …)
Standard library only; handlers run in daemon threads, so a hanging
handler never keeps the test process alive.
"""
import http.server
import json
import threading
import time

TABLE_ID = "t1"
SCHEMA = {"columns": [{"name": "k", "type": "string", "isPrimaryKey": True},
                      {"name": "v", "type": "integer",
                       "isPrimaryKey": False}]}


def page(rows, cursor=None):
    body = {"rows": [{"id": "r-" + k, "columns": {"k": k, "v": v}}
                     for k, v in rows]}
    if cursor:
        body["nextPageCursor"] = cursor
    return json.dumps(body).encode()


class FakeApi:
    def __init__(self, token_mode="ok", list_mode="ok", rows_mode="ok",
                 names=("T",)):
        self.token_mode = token_mode
        self.list_mode = list_mode
        self.rows_mode = rows_mode
        self.names = list(names)
        self.counts = {}
        self.headers_seen = []
        self.closed_early = threading.Event()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(n)
                api.route(self)

            def do_GET(self):
                api.route(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def count(self, route):
        with self.lock:
            return self.counts.get(route, 0)

    def _seen(self, route, h):
        with self.lock:
            self.counts[route] = self.counts.get(route, 0) + 1
            self.headers_seen.append(dict(h.headers))

    def reply(self, h, body, status=200, etag='"v1"'):
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if etag:
            h.send_header("ETag", etag)
        h.end_headers()
        h.wfile.write(body)

    def hang(self):
        self.stopping.wait(600)

    def route(self, h):
        path, _, query = h.path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/oauth/token":
            self._seen("token", h)
            if self.token_mode == "hang":
                return self.hang()
            tok = "tok-1" if self.token_mode == "ok" else \
                "tok\r\nX-Injected: 1"
            return self.reply(h, json.dumps(
                {"access_token": tok, "token_type": "bearer",
                 "expires_in": 3600}).encode(), etag=None)
        if path == "/api/v2/datatables":
            self._seen("list", h)
            cur = params.get("cursor")
            ents = [{"id": "t%d" % i, "name": n}
                    for i, n in enumerate(self.names)]
            if self.names == ["T"]:
                ents = [{"id": TABLE_ID, "name": "T"}]
            if self.list_mode == "loop":
                nxt = "B" if cur in (None, "A") else "A"
                body = {"entities": ents if cur is None else [],
                        "nextPageCursor": nxt}
            else:
                body = {"entities": ents}
            return self.reply(h, json.dumps(body).encode(), etag=None)
        if path == "/api/v2/flows/datatables":
            self._seen("list", h)
            assert self.list_mode == "same_page"
            ents = [{"id": "t%03d" % i, "name": "T%03d" % i}
                    for i in range(int(params.get("pageSize", "100")))]
            return self.reply(h, json.dumps({"entities": ents}).encode(),
                              etag=None)
        if path.endswith("/schema"):
            self._seen("schema", h)
            return self.reply(h, json.dumps(SCHEMA).encode(), etag='"s1"')
        if path.endswith("/rows"):
            self._seen("rows", h)
            return self.rows(h, params.get("cursor"))
        self.reply(h, b'{"code":"not.found"}', status=404, etag=None)

    def rows(self, h, cursor):
        mode = self.rows_mode
        if mode == "ok":
            if cursor is None:
                return self.reply(h, page([("a", 1), ("b", 2)], "c1"))
            return self.reply(h, page([("c", 3)]))
        if mode == "self_loop":
            return self.reply(h, page([("a", 1)], cursor or "c1"))
        if mode == "loop":
            nxt = {None: "c1", "c1": "c2", "c2": "c1"}[cursor]
            return self.reply(h, page([("a", 1)], nxt))
        if mode == "bad_utf8":
            body = b'{"rows":[{"id":"r1","columns":{"k":"a\xff","v":1}}]}'
            return self.reply(h, body)
        if mode == "endless":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("ETag", '"v1"')
            h.end_headers()
            chunk = b'{"rows":[' + b'{"id":"r","columns":{"k":"x"}},' * 4096
            try:
                while not self.stopping.is_set():
                    h.wfile.write(chunk)
                    chunk = b'{"id":"r","columns":{"k":"x"}},' * 4096
            except OSError:
                self.closed_early.set()
            return None
        if mode == "trickle":
            body = page([("a", 1)] * 1 + [("b", 2)])
            body = body + b" " * 400  # 400 s at a byte a second
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.send_header("ETag", '"v1"')
            h.end_headers()
            try:
                for i in range(len(body)):
                    if self.stopping.is_set():
                        return None
                    h.wfile.write(body[i:i + 1])
                    h.wfile.flush()
                    time.sleep(1)
            except OSError:
                self.closed_early.set()
            return None
        raise AssertionError("unknown rows mode " + mode)
