import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))

from emu import emu_factory  # noqa: E402,F401  (the shared fixture)
from mount import Mount, fuse_available  # noqa: E402


@pytest.fixture
def mount_factory(tmp_path):
    if not fuse_available():
        pytest.skip("no /dev/fuse or fusermount3 on this machine")
    mounts = []

    def make(emu, opts="", **kw):
        kw.setdefault("name", f"mnt{len(mounts)}")
        m = Mount(emu, tmp_path, opts, **kw)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        m.stop()
