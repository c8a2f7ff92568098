"""Kill or fail the owner at every step of the commit protocol.

Readers must never see a partial row, and ``resume()`` must end with every row
recorded exactly once. The hook points come from ``localbatch._store.faults.POINTS``,
so a new commit step cannot go untested.
"""

from __future__ import annotations

import numpy as np
import pytest

from localbatch._store.faults import POINTS

from . import faultfns
from .helpers import deploy, kill_group, record_counts, start_owner, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

ROWS = 60


def _check_readable(batch, total):
    """Whatever is visible is whole: each recorded row has its true output and artifact."""
    resp = batch.results()
    frame = resp.to_frame()
    for index, y in frame["y"].items():
        assert y == index * 2.0
        assert batch.artifact(index, "row.txt") == f"row {index}".encode()
    return resp


@pytest.mark.parametrize("point", POINTS)
def test_owner_killed_at_each_commit_step(client, store, fault_log, point):
    svc = deploy(client, "art", faultfns.with_artifact, artifacts=["row.txt"])
    # The 2nd pass through the point, so one part is already committed.
    owner, eid = start_owner(store, "art", rows=ROWS, b=0.1,
                             env={"LOCALBATCH_FAULT": f"{point}:2:sigkill"})
    try:
        assert wait_until(lambda: owner.poll() is not None, 60), "the fault never fired"
    finally:
        kill_group(owner)
    batch = svc.get_batch(eid)
    resp = _check_readable(batch, ROWS)
    assert resp.state == "Failed" and resp.resumable and resp.error.startswith("Interrupted")
    done = batch.resume().wait(timeout=60)
    assert done.state == "Complete" and done.completed_item_count == ROWS
    _check_readable(batch, ROWS)
    counts = record_counts(store, eid, ROWS)
    assert (counts == 1).all(), f"rows recorded twice or never: {np.flatnonzero(counts != 1)}"


@pytest.mark.parametrize("point", ["part.before_write", "part.after_write",
                                   "header.before_replace", "artifacts.before_write"])
def test_store_error_fails_the_batch_resumably(client, store, fault_log, point):
    svc = deploy(client, "art", faultfns.with_artifact, artifacts=["row.txt"])
    owner, eid = start_owner(store, "art", rows=ROWS, b=0.02,
                             env={"LOCALBATCH_FAULT": f"{point}:1:enospc"})
    batch = svc.get_batch(eid)
    try:
        assert wait_until(lambda: batch.results().state == "Failed", 60)
    finally:
        kill_group(owner)
    resp = batch.results()
    assert resp.error.startswith("StoreError:") and "No space left on device" in resp.error
    assert resp.resumable
    if point != "header.before_replace":
        # The failed commit recorded nothing.
        assert record_counts(store, eid, ROWS).sum() == 0
    assert batch.resume().wait(timeout=60).state == "Complete"
    assert (record_counts(store, eid, ROWS) == 1).all()
    _check_readable(batch, ROWS)
