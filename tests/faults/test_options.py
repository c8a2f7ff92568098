"""Options are checked where the user passes them: NaN, infinities, bools where a number
is meant, zero and negative values are refused with the option and the value named;
nothing is started or stored for a refused option."""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localbatch import ConfigurationError

from .helpers import deploy

# hypothesis imports libcst to explain a failing example, and that import warns
# (a DeprecationWarning, an error in this suite): imported once here, quietly, a
# failure reads as a failure instead of a pytest INTERNALERROR.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import libcst.metadata  # noqa: F401

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

RECORDS = {"a": [1.0, 2.0], "b": [3.0, 4.0]}

#: Option → (a strategy of values it must refuse, one of values it must accept).
_NOT_NUMBERS = st.one_of(st.booleans(), st.text(max_size=3), st.just([1]), st.just({}))
_BAD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, -1e-9])
COUNTS = {"parallel_count": 1, "max_attempts": 1}
SECONDS = ("row_timeout", "init_timeout")
CAPS = ("console_limit", "artifact_limit", "output_limit")
#: The deployed service is made once per test, not per example (it is not changed).
FIXTURES = [HealthCheck.function_scoped_fixture]


def add(a, b):
    return a + b


def _bad_count(minimum: int):
    return st.one_of(_NOT_NUMBERS, st.integers(max_value=minimum - 1),
                     st.floats(allow_nan=True), st.sampled_from([1.0, 2.5]))


BAD = {
    **{name: _bad_count(minimum) for name, minimum in COUNTS.items()},
    "error_threshold": _bad_count(0),
    **{name: st.one_of(_NOT_NUMBERS, _BAD_FLOATS, st.floats(max_value=0.0),
                       st.integers(max_value=0)) for name in SECONDS},
    **{name: st.one_of(_NOT_NUMBERS, st.integers(max_value=0), _BAD_FLOATS, st.just(1.5))
       for name in CAPS},
    "start_method": st.one_of(st.text(max_size=5), st.booleans(), st.none()),
}
GOOD = {
    **{name: st.integers(min_value=minimum, max_value=64) for name, minimum in COUNTS.items()},
    "error_threshold": st.one_of(st.none(), st.integers(0, 10**6)),
    **{name: st.one_of(st.none(), st.integers(1, 10**6),
                       st.floats(min_value=1e-3, max_value=1e6)) for name in SECONDS},
    **{name: st.one_of(st.integers(1, 1 << 40), st.just(1e8)) for name in CAPS},
    "start_method": st.sampled_from(["spawn", "forkserver"]),
}


@pytest.fixture
def svc(client):
    return deploy(client, "add", add)


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_every_bad_option_value_is_refused_naming_option_and_value(svc, store, data):
    name = data.draw(st.sampled_from(sorted(BAD)))
    value = data.draw(BAD[name])
    with pytest.raises(ConfigurationError) as info:
        svc.batch(RECORDS, **{name: value})
    assert name in str(info.value)
    assert repr(value)[:20] in str(info.value)
    folder = store / "executions"
    assert not folder.exists() or not [p for p in folder.iterdir() if not p.name.startswith(".")]


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(data=st.data())
def test_good_option_values_are_accepted_and_kept(svc, data):
    chosen = {name: data.draw(strategy) for name, strategy in GOOD.items()
              if data.draw(st.booleans())}
    batch = svc.batch(RECORDS, **chosen)
    options = batch._options  # noqa: SLF001 - what start() will run with
    for name, value in chosen.items():
        if name in CAPS:
            key = {"console_limit": "console_bytes", "artifact_limit": "artifact_bytes",
                   "output_limit": "output_bytes"}[name]
            assert options.limits[key] == value
        else:
            assert getattr(options, name) == value


def test_setting_a_bad_parallel_count_keeps_the_old_one(svc):
    batch = svc.batch(RECORDS, parallel_count=3)
    for bad in (True, 0, -2, 2.0, math.nan, "4"):
        with pytest.raises(ConfigurationError, match="parallel_count"):
            batch.parallel_count = bad
        assert batch.parallel_count == 3


def test_stored_options_are_checked_again_on_resume_and_retry():
    from localbatch._engines.executions import stored_options

    header = {"parallel_count": 2, "options": {"max_attempts": 3, "row_timeout": None,
                                               "limits": {"output_bytes": 1000}}}
    assert stored_options(header, {}).limits == {"output_bytes": 1000}
    for overrides in ({"parallel_count": True}, {"row_timeout": math.nan},
                      {"limits": {"output_bytes": -5}}):
        with pytest.raises(ConfigurationError):
            stored_options(header, overrides)


def test_a_nan_row_timeout_no_longer_disables_the_timeout(svc):
    # The instance reported: row_timeout=nan was accepted and no row ever timed out.
    with pytest.raises(ConfigurationError, match=r"row_timeout .* not nan"):
        svc.batch(RECORDS, row_timeout=float("nan"))
    with pytest.raises(ConfigurationError, match=r"init_timeout .* not nan"):
        svc.batch(RECORDS, init_timeout=float("nan"))
