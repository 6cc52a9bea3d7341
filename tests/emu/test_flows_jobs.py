"""The production dialect's CSV import and export jobs: the upload URL and
its headers, the signed download, CSV round trips, Append vs ReplaceAll,
per-row failures and limits."""
import csv
import io
import urllib.parse

import pytest

from emu import FLOWS, SAMPLE_DATA, SAMPLE_PRODUCTION
from test_flows_tables import PROPS, assert_error, create

AWKWARD = [
    {"key": "plain", "note": "simple"},
    {"key": "comma,key", "note": "a, b, c"},
    {"key": 'quote"key', "note": 'she said "hi"'},
    {"key": "crlf", "note": "line one\r\nline two"},
    {"key": "lf", "note": "line one\nline two\n"},
    {"key": "lone cr", "note": "a\rb"},
    {"key": "unicode ü€😀", "note": "日本語, ελληνικά"},
    {"key": " spaced ", "note": "  padded  "},
    {"key": "empty note", "note": ""},
]

SAMPLE_ARGS = ("--data", SAMPLE_DATA, "--data", SAMPLE_PRODUCTION)


@pytest.fixture
def emu(emu_factory):  # noqa: F811  (the sample tables and PriceList)
    return emu_factory(*SAMPLE_ARGS)


def jobs(tid):
    return "%s/%s/import/jobs" % (FLOWS, tid)


def new_import(emu, tid, mode="Append"):
    return emu.api("POST", "%s/%s/import/csv/jobs" % (FLOWS, tid),
                   body={"importMode": mode})[2]


def test_import_job_lifecycle(emu):
    t = create(emu, "Mail")
    emu.config(job_delay_ms=600000)
    job = new_import(emu, t["id"])
    assert job["status"] == "WaitingForUpload"
    assert job["importMode"] == "Append"
    assert job["uploadURI"].startswith("http://127.0.0.1:%d/" % emu.port)
    hdrs = job["uploadHeaders"]
    assert len(hdrs) >= 2
    assert job["selfUri"] == "%s/%s" % (jobs(t["id"]), job["id"])
    for k in ("id", "owner", "dateCreated", "countRecordsUpdated",
              "countRecordsDeleted", "countRecordsFailed"):
        assert k in job
    # a second job has its own session header
    other = new_import(emu, t["id"])
    assert other["uploadHeaders"] != hdrs
    status, _, body = emu.upload(job, b"key\na\n", headers={})
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, _ = emu.upload(job, b"key\na\n", headers=other["uploadHeaders"])
    assert status == 403
    partial = dict(list(hdrs.items())[:1])
    status, _, _ = emu.upload(job, b"key\na\n", headers=partial)
    assert status == 403
    # the bearer token is no substitute for the headers
    status, _, _ = emu.upload(job, b"key\na\n", headers={
        "Authorization": "Bearer " + emu.token()})
    assert status == 403
    # every header and the token too: a signed URL takes no other
    # authorization (the token must never leave for the object store)
    status, _, body = emu.upload(job, b"key\na\n", headers=dict(
        hdrs, Authorization="Bearer " + emu.token()))
    assert status == 400 and b"Only one auth mechanism" in body
    _, _, got = emu.api("GET", job["selfUri"])
    assert got["status"] == "WaitingForUpload"
    # every header, and no token: accepted
    status, _, _ = emu.upload(job, b"key,visits\r\na,1\r\nb,2\r\n")
    assert status == 200
    _, _, got = emu.api("GET", job["selfUri"])
    assert got["status"] == "Processing"
    assert emu.flows_rows(t["id"]) == []
    # the URL is used up
    status, _, _ = emu.upload(job, b"key\nz\n")
    assert status == 403
    emu.config(job_delay_ms=0)
    got = emu.wait_job(job["selfUri"])
    assert got["status"] == "Succeeded" and "dateCompleted" in got
    assert (got["countRecordsUpdated"], got["countRecordsDeleted"],
            got["countRecordsFailed"]) == (2, 0, 0)
    assert "errorInformation" not in got
    assert [(r["key"], r["visits"], r["score"]) for r in
            emu.flows_rows(t["id"])] == [("a", 1, 0.5), ("b", 2, 0.5)]
    s = emu.stats()
    assert s["by_route"]["upload"] == 7
    assert s["by_route"]["import_job"] >= 5
    # recent jobs, newest first, paged, no URIs
    _, _, listing = emu.api("GET", jobs(t["id"]) + "?pageSize=1")
    assert listing["total"] == 2 and listing["pageCount"] == 2
    assert listing["entities"][0]["id"] == other["id"]
    assert "nextUri" not in listing
    _, _, listing = emu.api("GET", jobs(t["id"]) + "?pageNumber=2&pageSize=1")
    assert listing["entities"][0]["id"] == job["id"]


def test_import_job_refusals(emu):
    t = create(emu, "Mail")
    for body in ({}, {"importMode": "Merge"}, {"importMode": 1}, []):
        status, h, err = emu.api("POST", "%s/%s/import/csv/jobs"
                                 % (FLOWS, t["id"]), body=body, expect=None)
        assert_error(status, h, err, 400, "flows.datatables.syntax.error")
    status, h, err = emu.api("POST", jobs(t["id"]), body=b"--x--",
                             expect=None)
    assert_error(status, h, err, 410, "flows.datatables.import.deprecated")
    status, h, err = emu.api("GET", jobs(t["id"]) + "/nope", expect=None)
    assert_error(status, h, err, 404, "not.found")
    status, _, _ = emu.request("PUT", "/uploads/nope", body=b"key\n")
    assert status == 403
    status, _, _ = emu.request("GET", "/uploads/nope")
    assert status == 405


def test_append_upserts_and_replace_all_replaces(emu):
    t = create(emu, "Mail")
    job = emu.import_csv(t["id"], b"key,visits,note\na,1,x\nb,2,y\n")
    assert job["countRecordsUpdated"] == 2
    job = emu.import_csv(t["id"], b"key,visits\nb,20\nc,3\n")
    assert job["status"] == "Succeeded" and job["countRecordsUpdated"] == 2
    rows = {r["key"]: r for r in emu.flows_rows(t["id"])}
    assert sorted(rows) == ["a", "b", "c"]
    # Append replaces the row it updates; a missing column takes its default
    assert rows["b"]["visits"] == 20 and rows["b"]["note"] == "n/a"
    assert rows["a"]["note"] == "x"
    job = emu.import_csv(t["id"], b"key,deleted\nz,TRUE\ny,false\n",
                         mode="ReplaceAll")
    assert job["importMode"] == "ReplaceAll" and job["status"] == "Succeeded"
    assert (job["countRecordsUpdated"], job["countRecordsDeleted"]) == (2, 3)
    assert [(r["key"], r["deleted"]) for r in emu.flows_rows(t["id"])] == [
        ("z", True), ("y", False)]
    s = emu.stats()
    assert s["rows_deleted"] == 3


def test_a_bad_row_fails_alone(emu):
    t = create(emu, "Mail")
    data = ("key,score,visits,deleted\n"
            "ok1,1.5,1,true\n"
            "bad-number,abc,1,true\n"
            "bad-int,1,1.5,true\n"
            "bad-bool,1,1,yes\n"
            ",1,1,true\n"
            "too,many,fields,here,x\n"
            "ok1,2,2,false\n"       # the same key again: the later fails
            "bad\"quote,1,1,true\n"
            "ok2,-0.25e2,3,FALSE\n").encode()
    job = emu.import_csv(t["id"], data)
    assert job["status"] == "Succeeded"
    assert job["countRecordsUpdated"] == 2
    assert job["countRecordsFailed"] == 7
    info = job["errorInformation"]
    assert info["code"] == "flows.datatables.import.rows.failed"
    got = {(d["entityName"], d["errorCode"], d.get("fieldName"))
           for d in info["details"]}
    assert got == {("row 2", "type.mismatch", "score"),
                   ("row 3", "type.mismatch", "visits"),
                   ("row 4", "type.mismatch", "deleted"),
                   ("row 5", "missing.key", "key"),
                   ("row 6", "field.count", None),
                   ("row 7", "duplicate.key", "key"),
                   ("row 8", "invalid.csv", None)}
    rows = emu.flows_rows(t["id"])
    assert rows == [
        {"key": "ok1", "score": 1.5, "visits": 1, "deleted": True,
         "note": "n/a"},
        {"key": "ok2", "score": -25.0, "visits": 3, "deleted": False,
         "note": "n/a"}]
    # every row failing fails the job
    job = emu.import_csv(t["id"], b"key,visits\nq,x\n")
    assert job["status"] == "Failed" and job["countRecordsFailed"] == 1


def test_whole_file_failures(emu):
    t = create(emu, "Mail")
    emu.import_csv(t["id"], b"key\nkeep\n")
    for data, word in ((b"key,nope\na,1\n", "nope"),
                       (b"visits\n1\n", "key"),
                       (b"key,key\na,b\n", "twice"),
                       (b"", "empty"),
                       (b"key\n\xff\xfe\n", "UTF-8")):
        job = emu.import_csv(t["id"], data, mode="ReplaceAll")
        assert job["status"] == "Failed", data
        assert word in job["errorInformation"]["message"], job
        assert job["countRecordsDeleted"] == 0
    # nothing was touched, ReplaceAll included
    assert [r["key"] for r in emu.flows_rows(t["id"])] == ["keep"]


def test_import_row_limit(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--max-rows", "3")
    t = create(e, "Small")
    job = e.import_csv(t["id"], b"key\na\nb\nc\nd\ne\n")
    assert (job["countRecordsUpdated"], job["countRecordsFailed"]) == (3, 2)
    assert {d["errorCode"] for d in job["errorInformation"]["details"]} == {
        "rows.per.table.limit"}
    # updates of existing keys still load at the limit
    job = e.import_csv(t["id"], b"key,visits\na,5\n")
    assert job["countRecordsFailed"] == 0
    e.config(max_rows=2)
    assert e.config()["max_rows"] == 2


def csv_rows(data):
    text = data.decode("utf-8")
    return list(csv.reader(io.StringIO(text, newline="")))


def test_awkward_text_round_trip(emu):
    t = create(emu, "Awkward")
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["key", "note"])
    for r in AWKWARD:
        w.writerow([r["key"], r["note"]])
    data = b"\xef\xbb\xbf" + buf.getvalue().encode("utf-8")  # with a BOM
    job = emu.import_csv(t["id"], data)
    assert job["countRecordsUpdated"] == len(AWKWARD), job
    rows = emu.flows_rows(t["id"])
    assert [(r["key"], r["note"]) for r in rows] == [
        (r["key"], r["note"]) for r in AWKWARD]
    exported = emu.export_csv(t["id"])
    assert not exported.startswith(b"\xef\xbb\xbf")
    assert exported.startswith(b"key,score,visits,deleted,note\r\n")
    assert exported.endswith(b"\r\n")
    parsed = csv_rows(exported)
    assert parsed[0] == ["key", "score", "visits", "deleted", "note"]
    assert [(p[0], p[4]) for p in parsed[1:]] == [
        (r["key"], r["note"]) for r in AWKWARD]
    assert parsed[1][1:4] == ["0.5", "0", "false"]
    # the export re-imports unchanged (ReplaceAll into another table)
    t2 = create(emu, "Copy")
    job = emu.import_csv(t2["id"], exported, mode="ReplaceAll")
    assert job["countRecordsFailed"] == 0
    assert emu.flows_rows(t2["id"]) == rows
    assert emu.export_csv(t2["id"]) == exported
    # and into the same table: nothing changes
    job = emu.import_csv(t["id"], exported, mode="ReplaceAll")
    assert emu.flows_rows(t["id"]) == rows


def test_export_of_the_sample_keeps_number_text(emu):
    tid = emu.flows_table_id("PriceList")
    data = emu.export_csv(tid)
    lines = data.decode().split("\r\n")
    assert lines[0] == "key,name,price,stock,active"
    assert ",3.10," in data.decode() or ",12.50," in data.decode()
    assert len(csv_rows(data)) == 41
    # exports follow later writes
    emu.api("DELETE", "%s/%s/rows/SKU-0001" % (FLOWS, tid), expect=204)
    assert len(csv_rows(emu.export_csv(tid))) == 40


def test_export_job_and_signed_download(emu):
    tid = emu.flows_table_id("PriceList")
    emu.config(job_delay_ms=600000)
    _, _, job = emu.api("POST", "%s/%s/export/jobs" % (FLOWS, tid))
    assert job["status"] == "Processing" and "downloadURI" not in job
    path = "%s/%s/export/jobs/%s" % (FLOWS, tid, job["id"])
    assert job["selfUri"] == path
    _, _, got = emu.api("GET", path)
    assert got["status"] == "Processing"
    emu.config(job_delay_ms=0)
    job = emu.wait_job(path)
    assert job["status"] == "Succeeded" and job["countRecordsProcessed"] == 40
    uri = urllib.parse.urlsplit(job["downloadURI"])
    assert uri.path.startswith("/api/v2/downloads/")
    # the download URI wants the token
    status, h, err = emu.request("GET", uri.path)
    assert_error(status, h, err, 401, "authentication.required")
    status, h, body = emu.api("GET", uri.path, expect=303)
    location = h["Location"]
    loc = urllib.parse.urlsplit(location)
    assert loc.netloc == "127.0.0.1:%d" % emu.port
    assert "/downloads/" not in loc.path
    signed = loc.path + "?" + loc.query
    # the signed URL needs no token, and refuses one
    status, h, data = emu.request("GET", signed)
    assert status == 200 and h["Content-Type"].startswith("text/csv")
    assert data.startswith(b"key,name,price,stock,active\r\n")
    status, _, body = emu.request("GET", signed, token=emu.token())
    assert status == 400 and b"InvalidArgument" in body
    status, _, _ = emu.request("GET", loc.path + "?sig=0000")
    assert status == 403
    status, _, _ = emu.request("GET", loc.path)
    assert status == 403
    _, _, body = emu.api("GET", uri.path + "?issueRedirect=false")
    assert body["url"] == location
    s = emu.stats()
    assert s["by_route"]["download"] == 3
    assert s["by_route"]["download_signed"] == 4
    assert s["by_route"]["export_job"] >= 3
    status, h, err = emu.api("GET", "/api/v2/downloads/nope", expect=None)
    assert_error(status, h, err, 404, "not.found")
    status, h, err = emu.api("GET", "%s/%s/export/jobs/nope" % (FLOWS, tid),
                             expect=None)
    assert status == 404


def test_download_status_is_configurable(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--download-status", "302",
                    "--job-delay", "0")
    tid = e.flows_table_id("PriceList")
    _, _, job = e.api("POST", "%s/%s/export/jobs" % (FLOWS, tid))
    job = e.wait_job(job["selfUri"])
    e.api("GET", urllib.parse.urlsplit(job["downloadURI"]).path, expect=302)
    assert e.config(download_status=303)["download_status"] == 303


def test_jobs_on_a_cursor_table(emu):
    """A cursor table seen through the production dialect: its key column
    is `key` in the CSV, and rows without a value export empty fields."""
    tid = emu.flows_table_id("Customers")
    data = emu.export_csv(tid)
    rows = csv_rows(data)
    assert rows[0] == ["key", "last_interaction", "loyalty_tier"]
    assert len(rows) == 3001
    no_date = [r for r in rows[1:] if r[1] == ""]
    assert len(no_date) == 60
    job = emu.import_csv(tid, b"key,loyalty_tier\nCUST-NEW,2.50\n"
                              b"CUST-BAD,x\n")
    assert (job["countRecordsUpdated"], job["countRecordsFailed"]) == (1, 1)
    assert emu.rows("Customers")[-1] == {"customer_id": "CUST-NEW",
                                         "loyalty_tier": 2.50}


def test_jobs_survive_a_stop(emu_factory):
    e = emu_factory(*SAMPLE_ARGS, "--job-delay", "600000")
    tid = e.flows_table_id("PriceList")
    _, _, job = e.api("POST", "%s/%s/export/jobs" % (FLOWS, tid))
    imp = new_import(e, tid)
    assert e.upload(imp, b"key\nx\n")[0] == 200
    e.stop()  # a pending job does not hold up or crash the exit
