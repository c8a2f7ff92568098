"""Values: a value that cannot be stored costs its row, never its chunk; caps count the
real bytes; what is stored comes back exactly (dtype, unit, timezone, labels, index)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from . import value_fns

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def _hostile_service(client):
    return (client.service("hostile").version("1").code_fn(value_fns.hostile)
            .inputs(a=float).outputs(x=float, v=np.ndarray, df=pd.DataFrame).deploy())


def test_unencodable_values_and_unprintable_exceptions_fail_their_row_only(client):
    n = 3000
    svc = _hostile_service(client)
    resp = svc.batch({"a": [float(i) for i in range(n)]}, parallel_count=2).start() \
        .wait(timeout=100)
    assert resp.state == "Complete"
    bad = [a for a in range(n) if value_fns.bad_kind(a) is not None]
    assert resp.failed_item_count == len(bad)
    frame = resp.to_frame()
    assert frame.index[frame["error"].notna()].tolist() == bad
    seen = set()
    for a in bad:
        kind = value_fns.bad_kind(a)
        row = resp.execution(a)
        assert row.outputs == {"x": None, "v": None, "df": None}
        output = value_fns.BAD[kind]
        if output is None:  # the row raised an exception that cannot print itself
            assert row.error_type in ("StrRaises", "ReprRaises", "StrNotText"), row.error
            assert "LocalBatchInternalError" not in row.error
        else:
            assert row.error_type in ("OutputTypeError",), (kind, row.error)
            assert f"output {output!r}" in row.error, (kind, row.error)
            assert len(row.error) < 600, (kind, row.error)  # the value is cut, not dumped
        seen.add(kind)
    assert seen == set(value_fns.KINDS)
    for a in (1, 2, 1000, 2999):
        out = resp.execution(a).outputs
        assert out["x"] == a * 0.5
        np.testing.assert_array_equal(out["v"], [a, a + 1.0])
        pd.testing.assert_frame_equal(out["df"], pd.DataFrame({"a": [float(a)],
                                                                "s": [str(float(a))]}))
    good = frame[frame["error"].isna()]
    assert (good["x"] == good.index.to_numpy() * 0.5).all()


def test_consume_of_an_unencodable_value_is_that_calls_error(client):
    svc = _hostile_service(client)
    for kind in ("cell_2_70", "ragged", "str_raises"):
        a = 7.0 * value_fns.KINDS.index(kind)
        res = svc.hostile(a)
        assert res.error and "LocalBatchInternalError" not in res.error, res.error
    assert svc.hostile(1.0).outputs["x"] == 0.5


def test_a_dataframe_of_100mb_of_strings_fails_its_row_against_the_default_cap(client):
    svc = (client.service("big").version("1").code_fn(value_fns.big_strings)
           .inputs(a=float).outputs(df=pd.DataFrame).deploy())
    resp = svc.batch({"a": [0.0, 1.0, 2.0]}, parallel_count=1).start().wait(timeout=100)
    assert resp.failed_item_count == 1
    row = resp.execution(1)
    assert row.error_type == "OutputTooLarge" and "output 'df'" in row.error
    assert int(row.error.split(" is ")[1].split()[0]) > 100_000_000  # real bytes, not 8/cell
    assert len(resp.execution(0).outputs["df"]) == 100


def test_a_small_output_cap_counts_bytes_of_every_output_kind(client):
    def sized(a):
        n = int(a)
        return {"s": "é" * n, "v": np.arange(n, dtype=np.float64),
                "df": pd.DataFrame({"t": ["ab" * n]})}

    svc = (client.service("sized").version("1").code_fn(sized).inputs(a=float)
           .outputs(s=str, v=np.ndarray, df=pd.DataFrame).deploy())
    resp = svc.batch({"a": [10.0, 5000.0]}, output_limit=4000, parallel_count=1).start() \
        .wait(timeout=60)
    assert resp.execution(0).error == ""
    row = resp.execution(1)
    # The text is cut at 4000 bytes (2 bytes a character) and the vector, whose JSON
    # is over the cap, fails the row naming it.
    assert row.error_type == "OutputTooLarge" and "output 'v'" in row.error


@pytest.mark.parametrize("frame", [
    pd.DataFrame([[1.0, 2.0]], columns=["a", "a"]),
    pd.DataFrame({0: [1], 1: ["x"]}),
    pd.DataFrame({"a": [1.0]}, index=pd.Index(["k"], name="key")),
    pd.DataFrame({"t": pd.to_datetime(["2300-01-01"]).as_unit("s")}),
    pd.DataFrame({"t": pd.to_datetime(["1500-06-01T12:00"]).as_unit("ms").tz_localize("UTC")}),
], ids=["duplicate-names", "int-names", "named-index", "year-2300-s", "year-1500-ms-utc"])
def test_batch_and_consume_give_frames_back_exactly(client, frame):
    svc = (client.service("frame").version("1").code_fn(value_fns.echo_frame)
           .inputs(a=float).outputs(df=pd.DataFrame).objects(FRAMES=[frame]).deploy())
    resp = svc.batch({"a": [0.0]}).start().wait(timeout=60)
    row = resp.execution(0)  # never AttributeError, whatever the labels
    assert row.error == ""
    pd.testing.assert_frame_equal(row.outputs["df"], frame, check_exact=True)
    assert isinstance(row.raw_outputs["df"], dict)
    pd.testing.assert_frame_equal(svc.echo_frame(0.0).outputs["df"], frame, check_exact=True)
    assert len(resp.to_frame()) == 1
