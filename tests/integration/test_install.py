"""What a sysadmin gets (issue 13): `meson install --destdir` into a
temporary directory, every file listed and checked; the mount helper and
mount.fuse3 mount with fstab-style arguments; the example credentials work
once filled; bash completion offers commands, options and table names."""
import json
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from emu import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, emu  # noqa: F401
from mount import BUILD, DATA_DIR, check_sanitizer, creds_env, fuse_available

SOURCE = os.environ.get("DTFS_SOURCE_DIR", os.path.join(
    os.path.dirname(__file__), "..", ".."))

EXPECTED = {
    "bin/dtfs", "bin/dtfsctl", "bin/dtfs-emu", "sbin/mount.fuse.dtfs",
    "lib/systemd/system/dtfs@.service",
    "share/man/man1/dtfs.1", "share/man/man1/dtfsctl.1",
    "share/man/man1/dtfs-emu.1",
    "share/doc/dtfs/LICENSE", "share/doc/dtfs/README.md",
    "share/doc/dtfs/credentials.example",
    "share/bash-completion/completions/dtfsctl",
    "share/bash-completion/completions/dtfs",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(destdir, prefix inside it) of a fresh install."""
    dest = tmp_path_factory.mktemp("dest")
    p = subprocess.run(["meson", "install", "-C", BUILD, "--destdir",
                        str(dest), "--no-rebuild", "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    opts = json.loads(subprocess.run(
        ["meson", "introspect", BUILD, "--buildoptions"],
        capture_output=True, text=True, check=True).stdout)
    prefix = next(o["value"] for o in opts if o["name"] == "prefix")
    return dest, os.path.join(str(dest), prefix.lstrip("/"))


def test_installed_files(installed):
    dest, root = installed
    found = set()
    for d, _, files in os.walk(dest):
        for f in files:
            found.add(os.path.relpath(os.path.join(d, f), root))
    assert found == EXPECTED, found ^ EXPECTED
    mode = lambda p: stat.S_IMODE(os.lstat(os.path.join(root, p)).st_mode)  # noqa: E731,E501
    for exe in ("bin/dtfs", "bin/dtfsctl", "bin/dtfs-emu",
                "sbin/mount.fuse.dtfs"):
        assert mode(exe) == 0o755, exe
    # the example is installed with the mode dtfs requires of the real one
    assert mode("share/doc/dtfs/credentials.example") == 0o600
    assert os.readlink(os.path.join(
        root, "share/bash-completion/completions/dtfs")) == "dtfsctl"
    for prog in ("dtfs", "dtfsctl"):
        p = subprocess.run([os.path.join(root, "bin", prog), "--version"],
                           capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.startswith(prog + " ")


@pytest.mark.parametrize("page", ["dtfs.1", "dtfsctl.1", "dtfs-emu.1"])
def test_manual_pages_render(installed, page):
    dest, root = installed
    path = os.path.join(root, "share/man/man1", page)
    assert open(path).read() == open(os.path.join(SOURCE, "docs",
                                                  page)).read()
    if not shutil.which("man"):
        pytest.skip("no man(1) to render the page")
    p = subprocess.run(["man", "-l", path], capture_output=True, text=True,
                       env={**os.environ, "MANWIDTH": "80",
                            "MAN_KEEP_FORMATTING": "0"})
    assert p.returncode == 0, p.stderr
    text = re.sub(".\b", "", p.stdout)  # overstrike bold
    assert "NAME" in text and "EXIT STATUS" in text
    assert "warning" not in p.stderr.lower(), p.stderr


def test_license_matches_meson(installed):
    dest, root = installed
    text = open(os.path.join(root, "share/doc/dtfs/LICENSE")).read()
    meson = open(os.path.join(SOURCE, "meson.build")).read()
    assert re.search(r"license:\s*'MIT'", meson)
    assert text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in text


def test_systemd_unit(installed):
    dest, root = installed
    unit = open(os.path.join(root, "lib/systemd/system/dtfs@.service")).read()
    start = re.search(r"^ExecStart=(\S+) (.*)$", unit, re.M)
    prefix = "/" + os.path.relpath(root, dest)
    # the binary it starts is the one installed, in the foreground (the
    # journal gets its log), at the instance's mount point
    assert start.group(1) == prefix + "/bin/dtfs"
    assert start.group(2) == "-f -o ${DTFS_OPTIONS} dtfs %f"
    assert "EnvironmentFile=-/etc/dtfs/%i.conf" in unit
    assert re.search(r"^WantedBy=multi-user.target$", unit, re.M)
    assert re.search(r"^After=network-online.target$", unit, re.M)
    if shutil.which("systemd-analyze"):
        p = subprocess.run(["systemd-analyze", "verify",
                            os.path.join(root, "lib/systemd/system",
                                         "dtfs@srv-tables.service")],
                           capture_output=True, text=True)
        # only complaints a staged install must cause: the binary is not
        # at its final path yet, and man cannot find the page there
        for line in p.stderr.splitlines():
            assert (f"{prefix}/bin/dtfs is not executable" in line or
                    "man dtfs(1)" in line), p.stderr


def filled_credentials(root, tmp_path, mode):
    path = tmp_path / "credentials"
    text = open(os.path.join(root, "share/doc/dtfs/credentials.example")
                ).read()
    text = text.replace("client_id=\n", f"client_id={DEMO_CLIENT_ID}\n")
    text = text.replace("client_secret=\n",
                        f"client_secret={DEMO_CLIENT_SECRET}\n")
    path.write_text(text)
    os.chmod(path, mode)
    return path


def no_creds_env():
    env = creds_env("x", "y")
    del env["GENESYSCLOUD_OAUTHCLIENT_ID"]
    del env["GENESYSCLOUD_OAUTHCLIENT_SECRET"]
    return env


def test_example_credentials_once_filled(installed, emu, tmp_path):
    dest, root = installed
    args = [os.path.join(root, "bin/dtfsctl"), "-o"]
    o = f"api_url={emu.url},cache_dir={tmp_path}/c,credentials="
    cred = filled_credentials(root, tmp_path, 0o644)
    p = subprocess.run(args + [o + str(cred), "ls"], capture_output=True,
                       text=True, env=no_creds_env())
    assert p.returncode == 77 and "chmod 600" in p.stderr
    os.chmod(cred, 0o600)
    p = subprocess.run(args + [o + str(cred), "ls"], capture_output=True,
                       text=True, env=no_creds_env())
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["Customers", "Holidays/2025",
                                     "RoutingRules"]


def wait_mounted(path, want=True, timeout=20):
    deadline = time.monotonic() + timeout
    while os.path.ismount(path) != want:
        assert time.monotonic() < deadline, f"mounted is not {want}"
        time.sleep(0.02)


def fstab_mount(cmd, mnt, log, env):
    """Run a mount command as mount(8) would, check the daemonized mount
    serves the table, unmount, and check its log."""
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    try:
        wait_mounted(mnt)
        rows = open(os.path.join(mnt, "Holidays%2F2025", "rows.jsonl")
                    ).read()
        assert rows.count("\n") == 12
    finally:
        subprocess.call(["fusermount3", "-u", mnt])
    wait_mounted(mnt, False)
    text = open(log).read()
    check_sanitizer(text, "dtfs")
    return text


def test_mount_helper_and_mount_fuse3(installed, emu, tmp_path):
    if not fuse_available():
        pytest.skip("no /dev/fuse or fusermount3 on this machine")
    dest, root = installed
    cred = filled_credentials(root, tmp_path, 0o600)
    mnt = str(tmp_path / "mnt")
    os.makedirs(mnt)
    log = tmp_path / "dtfs.log"
    # the words an /etc/fstab line gives, fstab-only ones included
    opts = (f"_netdev,nofail,api_url={emu.url},cache_dir={tmp_path}/c,"
            f"credentials={cred},log_file={log},log_level=info")
    env = no_creds_env()
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # no dtfs on it
    # mount(8) runs /sbin/mount.fuse.dtfs SOURCE DIR [-n] -o OPTIONS
    helper = os.path.join(root, "sbin/mount.fuse.dtfs")
    text = fstab_mount([helper, "dtfs", mnt, "-n", "-o", opts], mnt, log,
                       env)
    assert "error" not in text, text
    # without the helper, mount(8) runs mount.fuse3, which finds dtfs on
    # PATH (as /usr/local/bin is on systemd's and root's)
    fuse3 = shutil.which("mount.fuse3", path="/sbin:/usr/sbin")
    if fuse3:
        env["PATH"] = os.path.join(root, "bin") + ":" + env["PATH"]
        fstab_mount([fuse3, "dtfs", mnt, "-t", "fuse.dtfs", "-o", opts],
                    mnt, log, env)
    # -f (fake) mounts nothing
    p = subprocess.run([helper, "dtfs", mnt, "-f", "-o", opts], env=env)
    assert p.returncode == 0 and not os.path.ismount(mnt)
    p = subprocess.run([helper, "dtfs"], capture_output=True, text=True)
    assert p.returncode != 0 and "usage" in p.stderr


def complete(root, words, env):
    """The completions bash offers for the last word of `words`."""
    script = (f". '{root}/share/bash-completion/completions/dtfsctl'\n"
              "COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1))\n"
              "_${COMP_WORDS[0]##*/} 2>/dev/null\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    p = subprocess.run(["bash", "-c", script, "bash", *words],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return [l for l in p.stdout.splitlines() if l]


def test_bash_completion(installed, emu, tmp_path):
    if not shutil.which("bash"):
        pytest.skip("no bash")
    dest, root = installed
    env = creds_env(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    env["PATH"] = os.path.join(root, "bin") + ":" + env["PATH"]
    assert complete(root, ["dtfsctl", ""], env) == [
        "ls", "schema", "create", "export", "import", "status"]
    assert complete(root, ["dtfsctl", "ex"], env) == ["export"]
    assert "--version" in complete(root, ["dtfsctl", "--"], env)
    # options from --help, after a comma too
    assert complete(root, ["dtfsctl", "-o", "reg"], env) == ["region="]
    assert complete(root, ["dtfsctl", "-o", "ro,log_l"], env) == [
        "ro,log_level="]
    assert "log_level=debug" in complete(
        root, ["dtfsctl", "-o", "log_level="], env)
    assert complete(root, ["dtfs", "-o", "allow_o"], env) == ["allow_other"]
    assert "kernel_cache" not in complete(root, ["dtfs", "-o", "k"], env)
    # table names from dtfsctl ls, with the options typed
    o = f"api_url={emu.url},cache_dir={tmp_path}/c"
    assert complete(root, ["dtfsctl", "-o", o, "export", ""], env) == [
        "Customers", "Holidays/2025", "RoutingRules"]
    assert complete(root, ["dtfsctl", "-o", o, "status", "Ho"], env) == [
        "Holidays/2025"]
    # no credentials: no listing attempted
    bare = no_creds_env()
    bare["PATH"] = env["PATH"]
    emu.reset_stats()
    assert complete(root, ["dtfsctl", "-o", o, "export", ""], bare) == []
    assert emu.stats()["by_route"]["list"] == 0
