"""Fixtures of the emu suite: `emu` (sample tables), `emu_factory`, and a
demo token `tok` for `emu`."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import pytest  # noqa: E402

from emu import emu, emu_factory  # noqa: E402,F401  (fixtures)


@pytest.fixture
def tok(emu):  # noqa: F811
    return emu.token()
