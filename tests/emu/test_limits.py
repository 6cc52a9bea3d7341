"""Rate limits, fault injection, latency and the control endpoints."""
import threading
import time

from emu import SAMPLE_DATA

LIST = "/api/v2/datatables"


def rl(headers):
    return int(headers["X-RateLimit-Remaining"]), int(headers["X-RateLimit-Reset"])


def test_remaining_counts_down(emu_factory):
    e = emu_factory("--data", SAMPLE_DATA, "--rate-limit", "10/60")
    tok = e.token()
    seen = []
    for _ in range(5):
        status, headers, _ = e.request("GET", LIST, token=tok)
        assert status == 200
        remaining, reset = rl(headers)
        assert 1 <= reset <= 60
        seen.append(remaining)
    assert seen == [9, 8, 7, 6, 5]


def test_token_and_control_requests_are_not_counted(emu_factory):
    e = emu_factory("--rate-limit", "10/60")
    tok = e.token()
    _, headers, _ = e.request("GET", LIST, token=tok)
    assert rl(headers)[0] == 9
    for _ in range(3):
        e.token()
        e.stats()
    _, headers, _ = e.request("GET", LIST, token=tok)
    assert rl(headers)[0] == 8
    status, headers, _ = e.token_response()
    assert "X-RateLimit-Remaining" not in headers


def test_rate_limit_headers_on_every_api_response(emu, tok):
    tid = emu.table_id("Customers")
    for method, path, t, body in (
            ("GET", LIST, tok, None),
            ("GET", LIST, None, None),
            ("GET", "/api/v2/datatables/nope/rows", tok, None),
            ("GET", "/api/v2/datatables/%s/rows?pageSize=0" % tid, tok, None),
            ("POST", "/api/v2/datatables/%s/rows" % tid, tok, b"junk"),
            ("GET", "/api/v2/elsewhere", tok, None)):
        status, headers, _ = emu.request(method, path, token=t, body=body)
        remaining, reset = rl(headers)
        assert remaining >= 0 and reset >= 1, (method, path, status)


def test_429_after_the_budget(emu_factory):
    e = emu_factory("--data", SAMPLE_DATA, "--rate-limit", "3/30")
    tok = e.token()
    for i in range(3):
        status, headers, _ = e.request("GET", LIST, token=tok)
        assert status == 200
    assert rl(headers)[0] == 0
    for _ in range(2):
        status, headers, body = e.request("GET", LIST, token=tok)
        assert status == 429
        assert body["code"] == "too.many.requests.retry.after"
        assert body["status"] == 429
        assert body["contextId"] == headers["ININ-Correlation-Id"]
        retry = headers["Retry-After"]
        assert retry.isdigit() and 1 <= int(retry) <= 30
        remaining, reset = rl(headers)
        assert remaining == 0 and reset == int(retry)
    # writes are limited the same way
    status, _, _ = e.request("POST", "/api/v2/datatables/x/rows",
                             body=[{"columns": {"customer_id": "A"}}],
                             token=tok)
    assert status == 429


def test_budget_is_per_client(emu_factory):
    e = emu_factory("--rate-limit", "2/60", "--client", "a:pa",
                    "--client", "b:pb")
    ta, tb = e.token("a", "pa"), e.token("b", "pb")
    for _ in range(2):
        assert e.request("GET", LIST, token=ta)[0] == 200
    assert e.request("GET", LIST, token=ta)[0] == 429
    # a second token of the same client shares the budget
    assert e.request("GET", LIST, token=e.token("a", "pa"))[0] == 429
    assert e.request("GET", LIST, token=tb)[0] == 200


def test_window_resets(emu_factory):
    e = emu_factory("--rate-limit", "1/1")
    tok = e.token()
    assert e.request("GET", LIST, token=tok)[0] == 200
    status, headers, _ = e.request("GET", LIST, token=tok)
    assert status == 429 and headers["Retry-After"] == "1"
    time.sleep(1.05)
    status, headers, _ = e.request("GET", LIST, token=tok)
    assert status == 200


def test_rate_limit_through_config(emu):
    tok = emu.token()
    cfg = emu.config(rate_limit=2, rate_window_s=45)
    assert cfg["rate_limit"] == 2 and cfg["rate_window_s"] == 45
    assert emu.request("GET", LIST, token=tok)[0] == 200
    status, headers, _ = emu.request("GET", LIST, token=tok)
    assert status == 200 and rl(headers)[0] == 0
    status, headers, _ = emu.request("GET", LIST, token=tok)
    assert status == 429 and 1 <= int(headers["Retry-After"]) <= 45
    emu.config(rate_limit=300)
    assert emu.request("GET", LIST, token=tok)[0] == 200


def test_fault_injection(emu, tok):
    tid = emu.table_id("Customers")
    emu.config(fail_rate=1.0)
    seen = set()
    for _ in range(40):
        status, headers, body = emu.request(
            "GET", "/api/v2/datatables/%s/rows?pageSize=1" % tid, token=tok)
        assert status in (500, 502, 503)
        assert body["status"] == status
        assert body["contextId"] == headers["ININ-Correlation-Id"]
        assert "X-RateLimit-Remaining" in headers
        if status == 503:
            assert body["code"] == "server.too.busy"
        seen.add(status)
    assert seen == {500, 502, 503}
    # token requests are never failed
    assert emu.token_response()[0] == 200
    emu.config(fail_rate=0)
    status, _, _ = emu.request("GET", LIST, token=tok)
    assert status == 200


def test_fault_rate_is_a_share(emu, tok):
    emu.config(fail_rate=0.5)
    statuses = [emu.request("GET", LIST, token=tok)[0] for _ in range(200)]
    failed = sum(1 for s in statuses if s >= 500)
    assert set(statuses) <= {200, 500, 502, 503}
    assert 40 <= failed <= 160  # far outside any plausible binomial tail


def test_fail_next(emu, tok):
    emu.config(fail_next=2, fail_next_status=502)
    assert [emu.request("GET", LIST, token=tok)[0] for _ in range(3)] == [
        502, 502, 200]
    emu.config(fail_next=1)
    status, _, body = emu.request("GET", LIST, token=tok)
    assert status == 502
    emu.config(fail_next=1, fail_next_status=503)
    status, _, body = emu.request("GET", LIST, token=tok)
    assert status == 503 and body["code"] == "server.too.busy"


def test_fail_rate_option(emu_factory):
    e = emu_factory("--fail-rate", "1")
    tok = e.token()
    assert e.request("GET", LIST, token=tok)[0] in (500, 502, 503)


def test_latency(emu, tok):
    emu.config(latency_ms=300)
    t0 = time.monotonic()
    status, _, _ = emu.request("GET", LIST, token=tok)
    assert status == 200
    assert time.monotonic() - t0 >= 0.3
    t0 = time.monotonic()
    emu.token()
    assert time.monotonic() - t0 >= 0.3
    emu.config(latency_ms=0)


def test_latency_does_not_serialize_clients(emu, tok):
    # 16 clients at once with 400 ms each: the emulator must hold them all
    # in their latency at the same time (its high-water mark says so; no
    # clock is read).
    emu.config(latency_ms=400)
    emu.reset_stats()
    results = []

    def one():
        results.append(emu.request("GET", LIST, token=tok)[0])

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 16
    # serialized (or a small thread pool) would show 1 (or the pool's
    # size); the slack is for a thread that starts late on a busy machine
    assert emu.stats()["max_in_flight"] >= 8


def test_latency_option(emu_factory):
    e = emu_factory("--latency", "200")
    t0 = time.monotonic()
    e.token()
    assert time.monotonic() - t0 >= 0.2


def test_stats(emu, tok):
    tid = emu.table_id("Customers")
    emu.reset_stats()
    rows = "/api/v2/datatables/%s/rows" % tid
    emu.request("GET", LIST, token=tok)
    status, _, page = emu.request("GET", rows + "?pageSize=7", token=tok)
    status, h, _ = emu.request("GET", rows + "?pageSize=7", token=tok)
    emu.request("GET", rows + "?pageSize=7", token=tok,
                headers={"If-None-Match": h["ETag"]})
    emu.request("GET", "/api/v2/datatables/%s/schema" % tid, token=tok)
    emu.request("PUT", "/api/v2/datatables/%s/schema" % tid, token=tok,
                body={"columns": []})
    emu.request("POST", rows + "?upsert=true", token=tok,
                body=[{"columns": {"customer_id": "S1"}},
                      {"columns": {"customer_id": "CUST-00001"}}])
    emu.request("DELETE", rows + "/" + page["rows"][0]["id"], token=tok)
    emu.request("GET", LIST)
    emu.token_response(secret="bad")
    s = emu.stats()
    assert s["by_route"] == {"token": 1, "list": 2, "schema": 1,
                             "schema_put": 1, "rows_get": 3,
                             "rows_upsert": 1, "row_delete": 1}
    assert s["by_status"] == {"200": 5, "204": 1, "304": 1, "401": 2,
                              "428": 1}
    assert s["requests_total"] == 10
    assert s["rows_served"] == 14
    assert s["rows_written"] == 2
    assert s["config"]["rate_limit"] == 300
    assert s["config"]["latency_ms"] == 0
    emu.reset_stats()
    s = emu.stats()
    assert s["requests_total"] == 0 and s["by_status"] == {}
    assert s["rows_served"] == 0 and set(s["by_route"].values()) == {0}


def test_config_rejects_bad_values(emu):
    for body in ({"latency_ms": -1}, {"fail_rate": 2}, {"rate_limit": "x"},
                 {"rate_window_s": 0}, {"no_such_knob": 1},
                 {"max_page_size": 0}):
        status, _, reply = emu.request("POST", "/_emu/config", body=body)
        assert status == 400, body
    status, _, reply = emu.request("POST", "/_emu/config", body=b"[]")
    assert status == 400
    # nothing half-applied
    cfg = emu.config()
    assert cfg["latency_ms"] == 0 and cfg["fail_rate"] == 0


def test_sigterm_stops_cleanly(emu_factory):
    e = emu_factory("--generate", "G:10")
    conn = e.connection()
    conn.request("GET", "/_emu/stats")
    conn.getresponse().read()  # an idle keep-alive connection stays open
    e.stop()
    assert e.proc.returncode == 0
    conn.close()
