"""A hostile or broken server (docs/reliability.md): every misbehaviour of
tests/hostile/fakeapi.py ends in a clear error within the retry budget,
never a hang, a crash or unbounded memory."""
import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "hostile"))

from fakeapi import FakeApi  # noqa: E402
from mount import dtfsctl  # noqa: E402

# generous bounds: the misbehaviours below would take minutes or forever
# without their limits, the limits end them in seconds
BOUND = 60


@pytest.fixture
def fake():
    apis = []

    def make(**kw):
        a = FakeApi(**kw)
        apis.append(a)
        return a

    yield make
    for a in apis:
        a.stop()


def test_listing_cursor_loop_fails_clearly(fake, tmp_path):
    api = fake(list_mode="loop")
    code, out, err = dtfsctl(api, tmp_path / "c", "ls", timeout=BOUND)
    assert code != 0
    assert "cursor it had sent before" in err
    assert api.count("list") <= 4


def test_flows_listing_that_repeats_its_page_fails_clearly(fake,
                                                            tmp_path):
    """The production listing pages by number: a server that sends the
    same page whatever pageNumber asks (and no pageCount) was walked for
    10,000 pages, 33 minutes at 300 requests a minute, then cut short
    silently."""
    api = fake(list_mode="same_page")
    code, out, err = dtfsctl(api, tmp_path / "c", "ls", opts="api=flows",
                             timeout=BOUND)
    assert code != 0
    assert "page 2 repeats the tables of an earlier page" in err
    assert api.count("list") == 2


def test_listing_cursor_loop_refuses_to_mount(fake, mount_factory):
    api = fake(list_mode="loop")
    code, err = mount_factory(api).start(expect_fail=True, timeout=BOUND)
    assert code != 0 and "cursor it had sent before" in err
    assert api.count("list") <= 4


@pytest.mark.parametrize("mode", ["self_loop", "loop"])
def test_rows_cursor_loop_fails_clearly(fake, tmp_path, mode):
    api = fake(rows_mode=mode)
    code, out, err = dtfsctl(api, tmp_path / "c", "export", "T",
                             timeout=BOUND)
    assert code != 0
    assert "cursor loop" in err
    assert api.count("rows") <= 16  # bounded (prefetch may run ahead)


def test_endless_body_is_refused_with_a_clear_error(fake, tmp_path):
    api = fake(rows_mode="endless")
    code, out, err = dtfsctl(api, tmp_path / "c", "export", "T",
                             opts="retries=1", timeout=BOUND)
    assert code != 0
    assert "response body is larger than" in err
    assert api.count("rows") == 1  # not retried: it would do it again


def test_trickled_page_is_bounded_by_the_retry_budget(fake, tmp_path):
    api = fake(rows_mode="trickle")
    code, out, err = dtfsctl(api, tmp_path / "c", "export", "T",
                             opts="retries=1,retry_budget=3", timeout=BOUND)
    assert code != 0
    assert "timed out" in err.lower() or "timeout" in err.lower()


def test_token_endpoint_that_never_answers_is_bounded(fake, tmp_path):
    api = fake(token_mode="hang")
    code, out, err = dtfsctl(api, tmp_path / "c", "ls",
                             opts="retries=2,retry_budget=3", timeout=BOUND)
    assert code != 0
    assert api.count("list") == 0


def test_token_with_crlf_is_refused(fake, tmp_path):
    api = fake(token_mode="crlf")
    code, out, err = dtfsctl(api, tmp_path / "c", "ls", timeout=BOUND)
    assert code != 0
    assert "not printable ASCII" in err
    assert api.count("list") == 0
    assert not any("X-Injected" in h for hs in api.headers_seen for h in hs)


def test_interrupted_reader_returns_promptly(fake, mount_factory):
    """A reader killed while its page trickles in must not stay blocked
    for the retry budget (600 s here)."""
    api = fake(rows_mode="trickle")
    m = mount_factory(api, opts="retries=1,retry_budget=600").start()
    cat = subprocess.Popen(["cat", m.file("T", "rows.jsonl")],
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + BOUND
    while api.count("rows") == 0:
        assert time.monotonic() < deadline, "cat never asked for rows"
        time.sleep(0.05)
    cat.send_signal(signal.SIGTERM)
    try:
        cat.wait(timeout=BOUND)
    except subprocess.TimeoutExpired:
        cat.kill()
        cat.wait()
        raise AssertionError("the reader stayed blocked after SIGTERM")
    assert cat.returncode != 0
    assert m.proc.poll() is None
    assert "nterrupted" in m.stderr()


def test_names_that_broke_the_listing(fake, mount_factory):
    """Issue 11 item 4: "", NUL, newline and tab in table names. The
    listing always works; NUL names are skipped with a log line, the
    others are encoded."""
    api = fake(names=["", "a\x00b", "a\x00c", "line\nbreak", "tab\there",
                      "Good"])
    m = mount_factory(api).start()
    names = sorted(os.listdir(m.path))
    assert names == sorted(["%00", "line%0Abreak", "tab%09here", "Good"])
    for n in names:
        with open(os.path.join(m.path, n, "rows.jsonl"), "rb") as f:
            assert f.read() == b'{"k":"a","v":1}\n{"k":"b","v":2}\n' \
                b'{"k":"c","v":3}\n'
    assert m.stderr().count("holds a NUL") == 2


def test_invalid_utf8_from_the_api_is_never_exported_silently(fake,
                                                              tmp_path):
    api = fake(rows_mode="bad_utf8")
    code, out, err = dtfsctl(api, tmp_path / "c", "export", "T",
                             timeout=BOUND)
    assert code == 0, err
    assert out == b'{"k":"a\xff","v":1}\n'
    assert "an import would refuse" in err and "invalid UTF-8" in err
