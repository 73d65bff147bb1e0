"""pytest fixtures for emulated VMs (register with ``pytest_plugins = ["tests.vmsim.fixtures"]``).

``vm_farm``: a :class:`VMFarm` attached to whichever simulator fixtures the test uses
(``linode_sim``, ``digitalocean_sim``, ``scaleway_sim``); attach others with
``vm_farm.attach(sim)``. Its VM roots live under the test's ``tmp_path``. At teardown it
closes every VM (listeners, SSH connections, stand-in servers, threads) and fails the test if
the emulator recorded an error (a stand-in crash, an sshd that could not listen…), the way the
simulator fixtures fail on a spec violation. A test that provokes one takes it with
``vm_farm.take_errors()``.

``vm_options``: the :class:`StandInOptions` the farm starts from; override the fixture (or
mutate it before the farm is used) to change timings or failure modes for every VM.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .farm import VMFarm
from .options import StandInOptions

SIM_FIXTURES = ("linode_sim", "digitalocean_sim", "scaleway_sim")


@pytest.fixture
def vm_options() -> StandInOptions:
    return StandInOptions()


@pytest.fixture
def vm_farm(request: pytest.FixtureRequest, tmp_path: Path, vm_options: StandInOptions) -> Iterator[VMFarm]:
    farm = VMFarm(stand_in_options=vm_options, root=tmp_path / "vms")
    try:
        for name in SIM_FIXTURES:
            if name in request.fixturenames:
                farm.attach(request.getfixturevalue(name))
        yield farm
    finally:
        farm.close()
    leftover = farm.threads()
    if leftover:
        pytest.fail(f"VM emulator threads still alive after close: {leftover}", pytrace=False)
    if farm.errors:
        text = "\n".join(farm.errors[:10])
        pytest.fail(f"{len(farm.errors)} VM emulator error(s):\n{text}", pytrace=False)
