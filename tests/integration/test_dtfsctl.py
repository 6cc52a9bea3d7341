"""dtfsctl and the API client against dtfs-emu: the engine without FUSE.

These run on machines with no /dev/fuse too."""
import json
import os
import subprocess

import pytest

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from mount import DATA_DIR, DTFSCTL, creds_env, dtfsctl, expected_jsonl

CUSTOMERS = ["customer_id", "last_interaction", "loyalty_tier"]
GEN = ["customer_id", "last_interaction", "loyalty_tier", "visits", "active"]


def test_ls_schema_export(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    code, out, err = dtfsctl(emu, tmp_path / "c", "ls")
    assert code == 0, err
    assert out.decode().splitlines() == sorted(
        ["Customers", "Holidays/2025", "RoutingRules"])
    code, out, err = dtfsctl(emu, tmp_path / "c", "schema", "Customers")
    assert code == 0, err
    assert [c["name"] for c in json.loads(out)["columns"]] == CUSTOMERS
    code, out, err = dtfsctl(emu, tmp_path / "c", "export", "Customers")
    assert code == 0, err
    assert out == expected_jsonl(emu, "Customers", CUSTOMERS)
    code, out, err = dtfsctl(emu, tmp_path / "c", "export", "Holidays/2025")
    assert code == 0 and out.count(b"\n") > 0, err


def test_export_under_faults_is_byte_identical(emu_factory, tmp_path):
    """15% 5xx, 3-second tokens, 5 requests per 2 s, 250 ms latency."""
    emu = emu_factory("--generate", "Big:25000")
    want = expected_jsonl(emu, "Big", GEN)
    emu.reset_stats()
    # fail_next: three sure faults on top of the random 15%, so the test
    # cannot pass by luck with no fault at all
    emu.config(fail_rate=0.15, token_ttl_s=3, rate_limit=5, rate_window_s=2,
               latency_ms=250, fail_next=3)
    code, out, err = dtfsctl(emu, tmp_path / "c", "export", "Big",
                             opts="page_size=1000", timeout=600)
    assert code == 0, err
    assert out == want
    st = emu.stats()
    by_status = st["by_status"]
    faults = sum(by_status.get(s, 0) for s in ("500", "502", "503"))
    assert faults >= 3, st         # the faults did happen
    assert st["by_route"]["token"] >= 2, st   # tokens were refreshed
    # tokens are refreshed ahead of expiry: 401s stay rare
    assert by_status.get("401", 0) <= 1, st
    # pacing keeps 429s rare even with a 5-per-2-seconds budget
    assert by_status.get("429", 0) <= 3, st
    assert "secret" not in err.lower()


def test_export_failure_midway_exits_nonzero(emu_factory, tmp_path):
    emu = emu_factory("--generate", "Big:20000")
    want = expected_jsonl(emu, "Big", GEN)
    emu.reset_stats()
    emu.config(latency_ms=100)
    p = subprocess.Popen(
        [DTFSCTL, "-o", f"api_url={emu.url},cache_dir={tmp_path}/c,"
         "retries=2,retry_budget=5", "export", "Big"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
    while emu.stats()["by_route"]["rows_get"] < 3:
        assert p.poll() is None
    emu.config(fail_rate=1.0)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 74, err
    assert 0 < len(out) < len(want) and want.startswith(out)
    lines = err.decode().strip().splitlines()
    assert any("export 'Big' failed" in l for l in lines), err


def test_wrong_secret_clear_error_no_secret(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    code, out, err = dtfsctl(emu, tmp_path / "c", "ls",
                             client=(DEMO_CLIENT_ID, "hunter2-wrong"))
    assert code == 77, err
    assert out == b""
    assert "hunter2" not in err
    assert "invalid_client" in err or "credentials" in err


def test_credentials_file_must_be_private(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    cred = tmp_path / "cred"
    cred.write_text(f"client_id={DEMO_CLIENT_ID}\n"
                    f"client_secret={DEMO_CLIENT_SECRET}\n")
    env = dict(os.environ)
    env.pop("GENESYSCLOUD_OAUTHCLIENT_ID", None)
    env.pop("GENESYSCLOUD_OAUTHCLIENT_SECRET", None)
    args = [DTFSCTL, "-o", f"api_url={emu.url},cache_dir={tmp_path}/c,"
            f"credentials={cred}", "ls"]
    os.chmod(cred, 0o644)
    p = subprocess.run(args, capture_output=True, env=env)
    assert p.returncode != 0
    assert DEMO_CLIENT_SECRET.encode() not in p.stderr
    assert b"cred" in p.stderr
    os.chmod(cred, 0o600)
    p = subprocess.run(args, capture_output=True, env=env)
    assert p.returncode == 0, p.stderr
    assert b"Customers" in p.stdout


def test_bad_options_refused(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    for opts in ("page_size=0", "allow_other", "api=soap"):
        code, out, err = dtfsctl(emu, tmp_path / "c", "ls", opts=opts)
        assert code != 0 and out == b"", opts
        assert err.strip(), opts
    p = subprocess.run([DTFSCTL, "-o", "region=mars-north-9", "ls"],
                       capture_output=True,
                       env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
    assert p.returncode != 0 and b"mars-north-9" in p.stderr
    p = subprocess.run([DTFSCTL, "-o", "api_url=http://10.1.2.3:9,"
                        f"cache_dir={tmp_path}/c", "ls"], capture_output=True,
                       env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
    assert p.returncode != 0 and b"http" in p.stderr  # plain http: loopback only


def test_no_region_is_an_error_that_says_how_to_give_one(tmp_path):
    """Neither region, GENESYSCLOUD_REGION nor api_url: refused before any
    request, never a silent us-east-1 (creds_env drops the variable)."""
    p = subprocess.run([DTFSCTL, "-o", f"cache_dir={tmp_path}/c", "ls"],
                       capture_output=True,
                       env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
    assert p.returncode != 0 and p.stdout == b""
    assert b"region=" in p.stderr and b"GENESYSCLOUD_REGION" in p.stderr


def test_unknown_table(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    code, out, err = dtfsctl(emu, tmp_path / "c", "export", "Nope")
    assert code == 66 and out == b""
    assert "Nope" in err


def test_export_uses_the_cache(emu_factory, tmp_path):
    emu = emu_factory("--generate", "Big:4000")
    cache = tmp_path / "c"
    code, first, err = dtfsctl(emu, cache, "export", "Big")
    assert code == 0, err
    served = emu.stats()["rows_served"]
    code, again, err = dtfsctl(emu, cache, "export", "Big",
                               opts="revalidate=0")
    assert code == 0 and again == first
    st = emu.stats()
    assert st["rows_served"] == served  # a 304, no rows
    assert st["by_status"].get("304", 0) == 1
