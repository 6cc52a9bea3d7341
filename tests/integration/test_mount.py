"""The mount command itself: mount(8)/fstab, --help, --version, options."""
import os
import subprocess
import time

import pytest

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from mount import DATA_DIR, DTFS, creds_env, fuse_available


def dtfs_pids(mnt):
    out = subprocess.run(["pgrep", "-f", f"{DTFS} .*{mnt}"],
                         capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.skipif(os.geteuid() != 0 or not fuse_available(),
                    reason="mount(8) needs root and /dev/fuse")
def test_mount8_and_fstab_words(emu_factory, tmp_path):
    emu = emu_factory("--data", DATA_DIR)
    cred = tmp_path / "cred"
    cred.write_text(f"client_id={DEMO_CLIENT_ID}\n"
                    f"client_secret={DEMO_CLIENT_SECRET}\n")
    cred.chmod(0o600)
    mnt = tmp_path / "m"
    mnt.mkdir()
    # what an fstab line "dtfs MNT fuse.dtfs _netdev,… 0 0" makes mount(8)
    # run: "dtfs SOURCE MNT -o OPTIONS", daemonized
    opts = (f"api_url={emu.url},cache_dir={tmp_path}/c,credentials={cred},"
            "_netdev,noauto,nofail,x-systemd.automount,noatime")
    subprocess.run(["mount", "-t", "fuse", f"{DTFS}#dtfs", str(mnt),
                    "-o", opts], check=True, env={"PATH": "/usr/bin:/bin"})
    try:
        assert "Customers" in os.listdir(mnt)
        with open(mnt / "Customers" / "rows.jsonl", "rb") as f:
            assert f.readline().startswith(b'{"customer_id":')
        assert len(dtfs_pids(mnt)) == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    deadline = time.monotonic() + 10
    while dtfs_pids(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dtfs_pids(mnt) == []  # the daemon exits with its mount


def test_help_and_version():
    p = subprocess.run([DTFS, "--help"], capture_output=True, text=True)
    assert p.returncode == 0
    for word in ("MOUNTPOINT", "api_url", "cache_dir", "chunk_rows",
                 "upload_workers", "revalidate", "list_ttl", "page_size"):
        assert word in p.stdout, word
    p = subprocess.run([DTFS, "--version"], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("dtfs ")


@pytest.mark.parametrize("opt", ["page_size=5000", "chunk_rows=abc",
                                 "api=soap", "cache_size=12Q"])
def test_bad_option_refused_before_mounting(emu_factory, tmp_path, opt):
    emu = emu_factory("--data", DATA_DIR)
    mnt = tmp_path / "m"
    mnt.mkdir()
    p = subprocess.run([DTFS, "-f", "-o", f"api_url={emu.url},{opt}",
                        str(mnt)], capture_output=True, text=True,
                       env=creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET),
                       timeout=30)
    assert p.returncode != 0
    assert opt.split("=")[0] in p.stderr
    assert not os.path.ismount(mnt)


def test_missing_mountpoint(tmp_path):
    p = subprocess.run([DTFS], capture_output=True, text=True)
    assert p.returncode != 0 and "mount point" in p.stderr
