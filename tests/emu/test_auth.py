"""OAuth client credentials, scopes and bearer tokens."""
import base64
import time

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SAMPLE_DATA

LIST = "/api/v2/datatables"


def test_token_grant(emu):
    status, headers, body = emu.token_response()
    assert status == 200
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert headers["ININ-Correlation-Id"]
    status, _, _ = emu.request("GET", LIST, token=body["access_token"])
    assert status == 200


def test_token_with_form_credentials(emu):
    status, _, body = emu.request(
        "POST", "/oauth/token",
        body="grant_type=client_credentials&client_id=%s&client_secret=%s"
        % (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and body["access_token"]


def test_bad_secret(emu):
    status, _, body = emu.token_response(secret="wrong")
    assert status == 401
    assert body["error"] == "invalid_client"
    status, _, body = emu.token_response(client_id="nobody")
    assert status == 401
    assert body["error"] == "invalid_client"


def test_no_credentials(emu):
    status, _, body = emu.request(
        "POST", "/oauth/token", body="grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401
    assert body["error"] == "invalid_client"


def test_bad_grant(emu):
    status, _, body = emu.token_response(grant_type="password")
    assert status == 400
    assert body["error"] == "unsupported_grant_type"
    basic = base64.b64encode(b"dtfs-demo:dtfs-demo-secret").decode()
    status, _, body = emu.request(
        "POST", "/oauth/token", body="",
        headers={"Authorization": "Basic " + basic})
    assert status == 400
    assert body["error"] == "unsupported_grant_type"


def test_read_only_client_gets_403_on_writes(emu_factory):
    e = emu_factory("--data", SAMPLE_DATA,
                    "--client", "reader:rsecret:data-table:read",
                    "--client", "writer:wsecret:data-table:read,data-table:write")
    tid = e.table_id("Customers")
    tok = e.token("reader", "rsecret")
    status, _, _ = e.request("GET", LIST, token=tok)
    assert status == 200
    status, _, _ = e.request("GET", "/api/v2/datatables/%s/rows" % tid,
                             token=tok)
    assert status == 200
    writes = [
        ("POST", "/api/v2/datatables/%s/rows?upsert=true" % tid,
         [{"columns": {"customer_id": "X"}}], {}),
        ("PUT", "/api/v2/datatables/%s/schema" % tid, e.schema("Customers"),
         {"If-Match": "*"}),
        ("DELETE", "/api/v2/datatables/%s/rows/%s"
         % (tid, e.row_entries("Customers")[0]["id"]), None, {}),
    ]
    for method, path, body, hdrs in writes:
        status, _, err = e.request(method, path, body=body, token=tok,
                                   headers=hdrs)
        assert status == 403, (method, path, err)
        assert err["status"] == 403
    # the same writes are fine for a client with the write scope
    wtok = e.token("writer", "wsecret")
    status, _, _ = e.request("POST", writes[0][1], body=writes[0][2],
                             token=wtok)
    assert status == 200


def test_requested_scopes_narrow_the_token(emu):
    tid = emu.table_id("Customers")
    status, _, body = emu.token_response(scopes=["data-table:read"])
    assert status == 200
    assert body["scope"] == "data-table:read"
    tok = body["access_token"]
    status, _, _ = emu.request(
        "POST", "/api/v2/datatables/%s/rows?upsert=true" % tid,
        body=[{"columns": {"customer_id": "X"}}], token=tok)
    assert status == 403


def test_ungranted_scope_left_out(emu_factory):
    e = emu_factory("--data", SAMPLE_DATA,
                    "--client", "ro:pw:data-table:read")
    status, _, body = e.token_response(
        "ro", "pw", scopes=["data-table:read", "data-table:write"])
    assert status == 200
    assert body["scope"] == "data-table:read"


def test_401_without_token(emu):
    for headers in ({}, {"Authorization": "Bearer not-a-token"},
                    {"Authorization": "Basic Zm9vOmJhcg=="}):
        status, hdrs, body = emu.request("GET", LIST, headers=headers)
        assert status == 401
        assert body["code"] == "authentication.required"
        assert body["contextId"] == hdrs["ININ-Correlation-Id"]


def test_401_on_expired_token(emu):
    emu.config(token_ttl_s=0)
    status, _, body = emu.token_response()
    assert status == 200 and body["expires_in"] == 0
    status, _, body = emu.request("GET", LIST, token=body["access_token"])
    assert status == 401
    assert body["code"] == "authentication.required"


def test_token_expires_after_its_ttl(emu):
    emu.config(token_ttl_s=1)
    tok = emu.token()
    status, _, _ = emu.request("GET", LIST, token=tok)
    assert status == 200
    time.sleep(1.1)
    status, _, body = emu.request("GET", LIST, token=tok)
    assert status == 401
    assert body["code"] == "authentication.required"


def test_ttl_applies_to_later_tokens_only(emu):
    old = emu.token()
    emu.config(token_ttl_s=0)
    status, _, _ = emu.request("GET", LIST, token=old)
    assert status == 200


def test_control_expires_every_token(emu):
    tok = emu.token()
    assert emu.expire_tokens() >= 1
    status, _, _ = emu.request("GET", LIST, token=tok)
    assert status == 401
    status, _, _ = emu.request("GET", LIST, token=emu.token())
    assert status == 200


def test_token_ttl_option(emu_factory):
    e = emu_factory("--token-ttl", "77")
    status, _, body = e.token_response()
    assert status == 200 and body["expires_in"] == 77
