"""Operating dtfs (issue 13): dtfsctl's conventions, exit statuses held to
the table of dtfsctl(1), progress and outcome lines on a terminal, the
import totals of status.json."""
import errno
import fcntl
import json
import os
import re
import shlex
import socket
import subprocess

import pytest

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, emu  # noqa: F401
from mount import DATA_DIR, DTFSCTL, creds_env, dtfsctl

SOURCE = os.environ.get("DTFS_SOURCE_DIR", os.path.join(
    os.path.dirname(__file__), "..", ".."))


def man_exit_table(page):
    """{status: description} from the tbl table of a page's EXIT STATUS."""
    text = open(os.path.join(SOURCE, "docs", page)).read()
    section = text.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    table = section.split(".TS", 1)[1].split(".TE", 1)[0]
    rows = {}
    for m in re.finditer(r"^(\d+)\t(?:T\{\n(.*?)\nT\}|(.+))$", table,
                         re.M | re.S):
        rows[int(m.group(1))] = m.group(2) or m.group(3)
    return rows


def changed(jsonl, tier):
    """The rows of an export with loyalty_tier set to `tier`: rows the
    table does not hold as given, so an import sends them."""
    out = []
    for line in jsonl.decode().splitlines():
        row = json.loads(line)
        row["loyalty_tier"] = tier
        out.append(json.dumps(row))
    return ("\n".join(out) + "\n").encode()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(args, env=None, input=None):
    p = subprocess.run([DTFSCTL, *args], capture_output=True, input=input,
                       env=env or creds_env(DEMO_CLIENT_ID,
                                            DEMO_CLIENT_SECRET),
                       timeout=120)
    return p.returncode, p.stdout, p.stderr.decode(errors="replace")


def scenario(status, emu, tmp_path):
    """Make dtfsctl exit with `status`; returns (code, stdout, stderr)."""
    c = tmp_path / "c"
    o = f"api_url={emu.url},cache_dir={c}"
    if status == 0:
        return run(["-o", o, "ls"])
    if status == 1:
        with open("/dev/full", "wb") as full:
            p = subprocess.run([DTFSCTL, "-o", o, "export", "Customers"],
                               stdout=full, stderr=subprocess.PIPE,
                               env=creds_env(DEMO_CLIENT_ID,
                                             DEMO_CLIENT_SECRET))
        return p.returncode, b"", p.stderr.decode()
    if status == 73:
        return run(["-o", f"api_url={emu.url},cache_dir=/dev/null/c", "ls"])
    if status == 64:
        return run(["-o", o, "import", "Customers", "a", "b"])
    if status == 65:
        return run(["-o", o, "import", "Customers"],
                   input=b'{"customer_id": 7}\n')
    if status == 66:
        return run(["-o", o, "export", "NoSuchTable"])
    if status == 69:
        return run(["-o", f"api_url=http://127.0.0.1:{closed_port()},"
                    f"cache_dir={c},retries=2", "ls"])
    if status == 74:
        emu.config(fail_rate=1.0)
        try:
            return run(["-o", o + ",retries=2,retry_budget=3", "ls"])
        finally:
            emu.config(fail_rate=0.0)
    if status == 75:
        # the import lock is a flock of a file beside the table's rejects
        os.makedirs(c / "rejects", exist_ok=True)
        with open(c / "rejects" / (emu.table_id("Customers") +
                                   ".jsonl.lock"),
                  "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            return run(["-o", o, "import", "Customers"], input=b"")
    if status == 77:
        return run(["-o", o, "ls"],
                   env=creds_env(DEMO_CLIENT_ID, "hunter2-wrong"))
    raise AssertionError(f"no scenario for exit status {status}")


def test_exit_statuses_match_the_manual_page(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    table = man_exit_table("dtfsctl.1")
    assert {0, 1, 64, 65, 66, 69, 73, 74, 75, 77} <= set(table), table
    # the code's one mapping and the help name the same statuses
    src = open(os.path.join(SOURCE, "tools", "dtfsctl.c")).read()
    names = {"EX_USAGE": 64, "EX_DATAERR": 65, "EX_NOINPUT": 66,
             "EX_UNAVAILABLE": 69, "EX_CANTCREAT": 73, "EX_IOERR": 74, "EX_TEMPFAIL": 75,
             "EX_NOPERM": 77}
    used = {names[n] for n in re.findall(r"return (EX_[A-Z]+);", src)}
    assert used | {0, 1} == set(table), (used, table)
    for status, what in sorted(table.items()):
        code, out, err = scenario(status, emu, tmp_path)
        assert code == status, (status, what, err)
        if status:
            assert err.strip(), (status, "no message")
        assert "hunter2" not in err


@pytest.mark.parametrize("args,out", [
    (["--help"], "usage: dtfsctl"), (["-h"], "usage: dtfsctl"),
    (["--version"], "dtfsctl "), (["-V"], "dtfsctl ")])
def test_help_and_version_exit_0(args, out):
    code, stdout, err = run(args)
    assert code == 0, err
    assert stdout.decode().startswith(out)
    if "usage" in out:
        assert "exit status" in stdout.decode()


@pytest.mark.parametrize("args,message", [
    ([], "usage: dtfsctl"),
    (["frob"], "unknown command 'frob'"),
    (["--frob", "ls"], "unrecognized option"),
    (["-o", "bogus", "ls"], "unknown option 'bogus'"),
    (["-o", "page_size=0", "ls"], "page_size"),
    (["ls", "x"], "'ls' takes no arguments, not 1"),
    (["export"], "'export' takes 1 argument, not 0"),
    (["import", "T", "F", "G"], "'import' takes 1 or 2 arguments, not 3"),
])
def test_usage_errors_exit_64(args, message):
    code, out, err = run(args)
    assert code == 64, err
    assert message in err and out == b""


def test_missing_credentials_is_a_usage_error(emu, tmp_path):
    env = creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    del env["GENESYSCLOUD_OAUTHCLIENT_ID"]
    del env["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    code, out, err = run(["-o", f"api_url={emu.url},cache_dir={tmp_path}",
                          "ls"], env=env)
    assert code == 64, err
    assert "credentials" in err


def test_missing_input_file_names_the_file(emu, tmp_path):
    code, out, err = dtfsctl(emu, tmp_path / "c", "import", "Customers",
                             str(tmp_path / "nope.jsonl"))
    assert code == 66
    assert "nope.jsonl" in err and "No such file" in err
    assert "no table" not in err


def test_table_names_as_the_api_and_the_mount_spell_them(emu, tmp_path):
    c = tmp_path / "c"
    code, api_name, err = dtfsctl(emu, c, "export", "Holidays/2025")
    assert code == 0, err
    code, file_name, err = dtfsctl(emu, c, "export", "Holidays%2F2025")
    assert code == 0, err
    assert api_name == file_name and api_name.count(b"\n") == 12
    code, out, err = dtfsctl(emu, c, "schema", "Holidays%2F2025")
    assert code == 0 and json.loads(out)
    code, out, err = dtfsctl(emu, c, "export", "Holidays%2F2026")
    assert code == 66 and "Holidays%2F2026" in err


def test_quiet_without_a_terminal_unless_verbose(emu, tmp_path):
    c = tmp_path / "c"
    code, out, err = dtfsctl(emu, c, "export", "Customers")
    assert code == 0 and err == ""
    rows = out
    code, out, err = dtfsctl(emu, c, "import", "Customers", input=rows)
    assert code == 0 and err == ""
    o = f"api_url={emu.url},cache_dir={c}"
    # the same rows: nothing to send, all of them landed already
    code, out, err = run(["-v", "-o", o, "import", "Customers"], input=rows)
    assert code == 0, err
    assert "imported 3000 rows into 'Customers' (3000 landed, 3000 of " \
           "them unchanged)" in err
    code, out, err = run(["-v", "-o", o, "import", "Customers"],
                         input=changed(rows, 123.25))
    assert code == 0, err
    assert "imported 3000 rows into 'Customers' (3000 landed)" in err
    assert "3000 of 3000 rows landed (12 of 12 chunks acknowledged)" in err
    code, rows, err = dtfsctl(emu, c, "export", "Customers")
    code, out, err = run(["-v", "-o", o, "export", "Customers"])
    assert code == 0 and out == rows
    assert f"exported 3000 rows ({len(rows)} bytes) from 'Customers'" in err


def script(cmd):
    """Run cmd under a pseudo-terminal (script(1)); its output as text."""
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"],
                       capture_output=True, timeout=120,
                       env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
    return p.returncode, p.stdout.decode(errors="replace")


def test_progress_and_outcome_on_a_terminal(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    c = tmp_path / "c"
    o = f"api_url={emu.url},cache_dir={c}"
    code, rows, err = dtfsctl(emu, c, "export", "Customers")
    good = changed(rows, 321.5).decode().splitlines()
    lines = good[:1995] + ['{"customer_id": %d}' % i for i in range(5)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    base = shlex.join([DTFSCTL, "-o", o])

    code, text = script(f"{base} import Customers {src}")
    assert code == 65, text
    # the progress line (drawn in place) and its final state
    assert "\rimporting 'Customers': 1995 of 1995 rows landed " \
           "(8 of 8 chunks acknowledged)" in text, text
    rejects = c / "rejects" / (emu.table_id("Customers") + ".jsonl")
    assert (f"imported 2000 rows into 'Customers' (1995 landed, "
            f"5 quarantined: see '{rejects}')") in text, text
    assert len(open(rejects).readlines()) == 5

    code, text = script(f"{base} export Customers > {tmp_path}/out")
    assert code == 0, text
    assert re.search(r"\rexporting .Customers.: 3000 rows, 2\d\d\.\d kB, ",
                     text), text
    assert "exported 3000 rows (" in text
    code, now, err = dtfsctl(emu, c, "export", "Customers")
    assert open(tmp_path / "out", "rb").read() == now

    # rows on the terminal: no progress line in between, the outcome after
    code, text = script(f"{base} export Holidays%2F2025")
    assert code == 0 and "exporting" not in text, text
    assert text.endswith("exported 12 rows (812 bytes) from "
                         "'Holidays/2025'\r\n"), text

    # -q: nothing on success
    code, text = script(f"{base} -q export Customers > /dev/null")
    assert code == 0 and text == "", text
    # never "1 lines"
    one = tmp_path / "one.jsonl"
    one.write_text(good[2500] + "\n")  # not imported above
    code, text = script(f"{base} import Customers {one}")
    assert code == 0, text
    assert "imported 1 row into 'Customers' (1 landed)" in text, text
    assert " 1 rows" not in text and " 1 lines" not in text


def test_status_shows_the_last_import_with_totals(emu, tmp_path):
    c = tmp_path / "c"
    code, rows, err = dtfsctl(emu, c, "export", "Customers")
    data = changed(rows, 77.5) + b'{"customer_id": 1}\n\n'
    o = f"api_url={emu.url},cache_dir={c}"
    code, out, printed = run(["-v", "-o", o, "import", "Customers"],
                             input=data)
    assert code == 65, printed
    # a later process sees it
    code, out, err = dtfsctl(emu, c, "status", "Holidays%2F2025")
    assert code == 0 and "import" not in json.loads(out)
    code, out, err = dtfsctl(emu, c, "status", "Customers")
    assert code == 0, err
    im = json.loads(out)["import"]
    assert im["state"] == "done"
    assert im["bytes_read"] == len(data)
    assert im["lines_read"] == 3002
    assert im["rows_valid"] == 3000 and im["quarantined"] == 1
    assert im["rows_unchanged"] == 0 and im["route"] == "upsert"
    assert im["rows_to_send"] == 3000 and im["rows_landed"] == 3000
    assert im["chunks_planned"] == 12 and im["chunks_sent"] == 12
    assert im["chunks_acknowledged"] == 12
    # the same counts dtfsctl printed
    assert "imported 3001 rows into 'Customers' (3000 landed, " \
           "1 quarantined" in printed
    assert "3000 of 3000 rows landed (12 of 12 chunks acknowledged)" \
        in printed


def test_refused_upload_names_table_host_and_what_to_do(emu_factory,
                                                       tmp_path):
    emu = emu_factory("--data", DATA_DIR,
                      "--client", "reader:reader-secret:data-table:read")
    c = tmp_path / "c"
    tid = emu.table_id("Customers")
    code, out, err = dtfsctl(emu, c, "import", "Customers",
                             client=("reader", "reader-secret"),
                             input=b'{"customer_id": "C-1"}\n')
    assert code == 77, err
    lines = err.splitlines()
    # the first error line already names the table, the host, what to do
    assert "'Customers' failed: HTTP 403" in lines[0], err
    assert tid not in err
    assert f"from {emu.url}" in lines[0], err
    assert "permission or scope missing" in lines[0], err
    assert "import into 'Customers' failed: 0 of 1 row landed" in err
    assert "the client's roles" in lines[-1], err
    assert " 1 rows" not in err


def test_failed_upload_in_a_mount_says_what_to_do(emu_factory,
                                                  mount_factory):
    emu = emu_factory("--data", DATA_DIR)
    m = mount_factory(emu, opts="retries=2,retry_budget=3").start()
    first = open(m.file("Customers", "rows.jsonl"), "rb").readline()
    emu.config(fail_rate=1.0)
    f = open(m.file("Customers", "rows.jsonl"), "ab")
    f.write(first)
    with pytest.raises(OSError) as e:
        f.close()
    emu.config(fail_rate=0.0)
    assert e.value.errno == errno.EIO
    errors = [l for l in m.stderr().splitlines() if ": error: " in l]
    assert "'Customers' failed: HTTP 5" in errors[0], errors
    assert f"from {emu.url}" in errors[0]
    assert "retries= and retry_budget= allow more" in errors[0]
    assert emu.table_id("Customers") not in m.stderr()


def test_one_line_is_not_lines(emu, tmp_path):
    c = tmp_path / "c"
    code, out, err = dtfsctl(emu, c, "import", "Customers",
                             input=b'{"customer_id": 1}\n')
    assert code == 65
    code, out, err = dtfsctl(emu, c, "status", "Customers")
    im = json.loads(out)["import"]
    assert im["error"] == "1 line quarantined in rejects.jsonl"


def test_dtfsctl_debug_logs_requests_not_secrets(emu, tmp_path):
    c = tmp_path / "c"
    code, out, err = dtfsctl(emu, c, "-d", "ls")
    assert code == 0, err
    assert re.search(r"http POST /oauth/token -> 200 in [\d.]+ ms "
                     r"\(correlation [0-9a-f-]+\)", err), err
    assert re.search(r"http GET /api/v2/datatables\S* -> 200 ", err), err
    for secret in (DEMO_CLIENT_SECRET, "Bearer", "Authorization"):
        assert secret not in err
    # log_file= and log_level= do the same into a file
    log = tmp_path / "ctl.log"
    code, out, err = dtfsctl(emu, c, "ls",
                             opts=f"log_level=debug,log_file={log}")
    assert code == 0 and err == "", err
    text = log.read_text()
    assert "http GET /api/v2/datatables" in text
    assert DEMO_CLIENT_SECRET not in text
    code, out, err = dtfsctl(emu, c, "ls", opts="log_level=loud")
    assert code == 64 and "log_level" in err
