"""The suite leaves the user's own Ray alone: a Ray started outside the tests outlives them, unused.

`conftest.outside_ray` starts it (`ray start --head`) before the first test, in the place a plain
`ray.init()` of the suite would look for a cluster to join. This test runs after every other test of the
session (conftest orders it last) and checks that it is still alive: its `ray start --block` process
(which exits when one of its Ray processes dies) and its GCS, so nothing ran `ray stop` or killed Ray
processes by name; and that no driver ever connected to it: its GCS job table is empty, so no test,
`dpl run` or Ray the suite started attached to it.
"""
from __future__ import annotations

import pytest

from _processes import session_members


def test_a_ray_started_outside_the_suite_is_alive_and_was_never_used(outside_ray) -> None:
    if outside_ray is None:
        pytest.skip("run with the rest of the suite: the outside Ray is started at the session's first test")
    from ray._raylet import GcsClient

    assert outside_ray["pid"] in session_members(outside_ray["pid"]), "the outside `ray start --head` was killed"
    jobs = GcsClient(address=outside_ray["address"]).get_all_job_info(timeout=30)  # its GCS still answers
    assert not jobs, f"{len(jobs)} driver(s) of the suite connected to the outside Ray"
