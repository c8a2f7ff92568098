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


# -- CSV input: the DataFrame path's lossless rules, lines named right -----------------

def _inputs(**types):
    from localbatch._schema import EncodingType

    return [(name, EncodingType.from_python(t)) for name, t in types.items()]


def _spool_csv(tmp_path, text, name="in.csv", **types):
    """The values a CSV's records spool to (decoded from the input parts)."""
    from localbatch._format.columns import decode_all
    from localbatch._format.part import Part
    from localbatch._store.spool import CsvSource, spool_csv

    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    folder = tmp_path / "spool"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    spool_csv(CsvSource(path, _inputs(**types)), folder)
    parts = [Part(p.read_bytes()) for p in sorted(folder.iterdir())]
    return {n: [v for p in parts for v in decode_all(p.column(f"in.{n}"))] for n in types}


@pytest.mark.parametrize("text, error", [
    ("x\n9007199254740993\n", r"line 2: column 'x' value '9007199254740993' is not exactly"),
    ("x\n1\n1e400\n", r"line 3: column 'x' value '1e400' is not exactly"),
    ("x\n1e-400\n", r"line 2: .* is not exactly a float"),
    ("x\n0.1000000000000000055511151231257827\n", r"line 2: .*not exactly"),
    ("x\n1_000\n", r"line 2: .*not a valid float"),
])
def test_csv_floats_are_refused_where_the_dataframe_path_refuses_them(tmp_path, text, error):
    from localbatch import InputFileError, SchemaError
    from localbatch._schema import normalize_records

    with pytest.raises(InputFileError, match=error):
        _spool_csv(tmp_path, text, x=float)
    value = text.splitlines()[-1]
    if value.isdigit():  # the same integer in a DataFrame is refused too
        with pytest.raises(SchemaError, match="not exactly representable"):
            normalize_records(pd.DataFrame({"x": [int(value)]}), _inputs(x=float))


def test_csv_numbers_that_are_exact_are_kept(tmp_path):
    text = ("x,n\n0.1,007\n9007199254740992,9007199254740993\n1e+16,-9223372036854775808\n"
            "-0.0,2.0\nnan,\ninf, 3 \n 2.5 ,nan\n")
    out = _spool_csv(tmp_path, text, x=float, n=int)
    assert out["x"][:4] == [0.1, 9007199254740992.0, 1e16, 0.0]
    assert np.signbit(out["x"][3]) and np.isnan(out["x"][4])
    assert out["x"][5:] == [float("inf"), 2.5]
    assert out["n"] == [7, 9007199254740993, -(2**63), 2, None, 3, None]
    # an int column keeps what a float column may not
    from localbatch import InputFileError

    with pytest.raises(InputFileError, match="beyond the 64-bit"):
        _spool_csv(tmp_path, "n\n9223372036854775808\n", n=int)


@pytest.mark.parametrize("text, line, what", [
    ("a,b\n1,2\n3,4,5\n6,7\n", 3, "3 field"),
    ("a,b\n1,2\n3\n", 3, "1 field"),
    ('a,b\n"x\ny\nz",2\n3,4,5\n', 5, "3 field"),  # after a quoted field of three lines
    ('a,b\n"x\r\ny",1\n2,3\n4\n', 5, "1 field"),
])
def test_a_ragged_csv_line_is_an_error_naming_its_line(tmp_path, text, line, what):
    from localbatch import InputFileError

    with pytest.raises(InputFileError, match=rf"line {line}: {what}"):
        _spool_csv(tmp_path, text, a=str, b=str)


def test_cast_errors_name_the_line_after_quoted_newlines_and_blank_lines(tmp_path):
    from localbatch import InputFileError

    text = 'a,b\n"multi\nline",1\n\n"x",2\n"y\n\nz",3\n"w",oops\n'
    with pytest.raises(InputFileError, match=r"line 9: column 'b' value 'oops'"):
        _spool_csv(tmp_path, text, a=str, b=int)
    out = _spool_csv(tmp_path, text.replace("oops", "4"), a=str, b=int)
    assert out == {"a": ["multi\nline", "x", "y\n\nz", "w"], "b": [1, 2, 3, 4]}


def test_a_utf8_bom_is_skipped(tmp_path):
    out = _spool_csv(tmp_path, "\ufeffa,b\n1,x\n".encode(), a=int, b=str)
    assert out == {"a": [1], "b": ["x"]}


@pytest.mark.parametrize("content, name, hint", [
    ("a;b\n1;2\n", "in.csv", r"header of in.csv is \['a;b'\]; the whole header is one field "
                             r"containing ';': is the file separated by semicolons"),
    ("a\tb\n1\t2\n", "in.csv", "containing '\\\\t': is the file separated by tabs"),
    ("a,b\n1,2\n", "in.tsv", "containing ',': is the file separated by commas"),
    ("\ufeff\ufeffa,b\n1,2\n", "in.csv", "byte order mark"),
    ("a , b\n1,2\n", "in.csv", "spaces around them"),
])
def test_a_header_that_does_not_match_shows_itself_and_hints(tmp_path, content, name, hint):
    from localbatch import InputFileError, SchemaError

    with pytest.raises(InputFileError, match="missing input column") as info:
        _spool_csv(tmp_path, content, name=name, a=int, b=int)
    assert isinstance(info.value, SchemaError)
    import re

    assert re.search(hint, str(info.value)), str(info.value)


def test_a_utf16_file_is_refused_with_a_hint(tmp_path):
    from localbatch import InputFileError

    with pytest.raises(InputFileError, match="UTF-16 byte order mark"):
        _spool_csv(tmp_path, "a,b\n1,2\n".encode("utf-16"), a=int, b=int)


def test_a_csv_batch_refuses_an_inexact_float_before_anything_runs(client, store, tmp_path):
    from localbatch import InputFileError

    svc = (client.service("f").version("1").code_fn(lambda x: x).inputs(x=float)
           .outputs(y=float).deploy())
    path = tmp_path / "x.csv"
    path.write_text("x\n1.5\n9007199254740993\n")
    with pytest.raises(InputFileError, match="line 3"):
        svc.batch(str(path)).start()
    path.write_text("\ufeffx\n1.5\n9007199254740992\n")
    resp = svc.batch(str(path), parallel_count=1).start().wait(timeout=60)
    assert resp.to_frame()["y"].tolist() == [1.5, 9007199254740992.0]


# -- names that cannot be files are refused at deploy -------------------------------

@pytest.mark.parametrize("name, why", [
    ("é" * 128, "256 bytes long in UTF-8"),  # 128 characters, 256 bytes
    ("x" * 256, "256 bytes long"),
    ("日本" * 43, "258 bytes long"),
    ("a\0b", "NUL"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    (".", "folder"),
    ("..", "folder"),
    ("", "empty"),
    ("\udc80.txt", "lone surrogate"),
    (3, "not a str"),
])
def test_artifact_names_that_cannot_be_files_are_refused_at_deploy(client, store, name, why):
    from localbatch import InvalidServiceError

    definition = (client.service("arts").version("1").code_fn(value_fns.echo_value)
                  .inputs(a=float).outputs(y=float).artifacts([name]))
    with pytest.raises(InvalidServiceError, match=f"artifact name .*{why}"):
        definition.deploy()
    assert not (store / "services").exists() or not client.list_services()


def test_the_longest_artifact_name_is_written_and_read_back(client):
    name = "é" * 127 + "x"  # 255 bytes: the longest a file system allows

    def write(a):
        with open(name, "w") as fh:
            fh.write(str(a))
        return a

    svc = (client.service("longname").version("1").code_fn(write).inputs(a=float)
           .outputs(y=float).artifacts([name]).deploy())
    batch = svc.batch({"a": [1.5]}).start()
    batch.wait(timeout=60)
    assert batch.artifact(0, name) == b"1.5"


def test_a_vectorised_service_loses_only_the_rows_whose_value_cannot_be_stored(client):
    svc = (client.service("vec").version("1").code_fn(value_fns.vector_of_objects)
           .inputs(a=float).outputs(s=str).vectorized().deploy())
    resp = svc.batch({"a": [float(i) for i in range(200)]}, parallel_count=1).start() \
        .wait(timeout=60)
    frame = resp.to_frame()
    failed = frame.index[frame["error"].notna()].tolist()
    assert failed == list(range(0, 200, 5))
    assert "output 's'" in resp.execution(5).error and "repr failed" in resp.execution(5).error
    assert frame.loc[7, "s"] == "ok7"
