"""The suite leaves the user's own Ray alone: a Ray started outside the tests outlives them, unused.

`conftest.outside_ray` starts it (`ray start --head`) before the first test, in the place a plain
`ray.init()` of the suite would look for a cluster to join. This test runs after every other test of the
session (conftest orders it last; in a parallel run each worker has its own outside Ray and repeats the check
after its last test, in the fixture's teardown) and checks that it is still alive: its `ray start --block` process
(which exits when one of its Ray processes dies) and its GCS, so nothing ran `ray stop` or killed Ray
processes by name; and that no driver ever connected to it: its GCS job table is empty, so no test,
`dpl run` or Ray the suite started attached to it.
"""
from __future__ import annotations

import pytest

from _processes import outside_ray_misuse


def test_a_ray_started_outside_the_suite_is_alive_and_was_never_used(outside_ray) -> None:
    if outside_ray is None:
        pytest.skip("run with the rest of the suite: the outside Ray is started at the session's first test")
    misuse = outside_ray_misuse(outside_ray)
    assert misuse is None, misuse
