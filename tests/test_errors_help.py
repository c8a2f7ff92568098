"""Errors that help: a misspelt service name gets close matches and how to list
services; tracebacks and reprs show the public exception names."""

from __future__ import annotations

import pickle
import subprocess
import sys
import traceback

import pytest
from scoring_fns import add

import localbatch
from localbatch import ServiceNotFoundError


@pytest.fixture
def services(client):
    for name, version in (("TxService", "1.0"), ("TxService", "1.1"), ("Scorer", "1.0")):
        (client.service(name).version(version).code_fn(add).inputs(a=float, b=float)
         .outputs(y=float).deploy())
    return client


@pytest.mark.parametrize("typo", ["TxServce", "txservice", "TXSERVICE", "TxServices"])
def test_unknown_names_suggest_close_matches(services, typo):
    with pytest.raises(ServiceNotFoundError) as info:
        services.get_service(typo)
    text = str(info.value)
    assert text.startswith(f"No service found for {typo}")  # the SDK's words first
    assert "did you mean 'TxService'?" in text
    assert "client.list_services()" in text and "localbatch services" in text


def test_no_close_match_still_says_how_to_list(services):
    with pytest.raises(ServiceNotFoundError) as info:
        services.get_service("completely-different")
    assert "did you mean" not in str(info.value)
    assert "list_services()" in str(info.value)


def test_unknown_version_lists_the_versions(services):
    with pytest.raises(ServiceNotFoundError, match="its versions: 1.0, 1.1"):
        services.get_service("TxService", version="2.0")


def test_every_lookup_helps(services):
    for call in (lambda: services.delete_service("TxServce", version="1.0"),
                 lambda: services.get_service_pool_status("TxServce", "1.0"),
                 lambda: services.redeploy_service("TxServce", code_str="y = 1")):
        with pytest.raises(ServiceNotFoundError, match="did you mean 'TxService'"):
            call()


def test_empty_store_says_so(client):
    with pytest.raises(ServiceNotFoundError, match="no services yet"):
        client.get_service("anything")


def test_cli_suggests_too(services, store):
    for args in (["run", "TxServce", "x.csv"], ["show", "txservice"], ["services", "TxServce"]):
        out = subprocess.run([sys.executable, "-m", "localbatch._cli", "--store", str(store),
                              *args], capture_output=True, text=True, timeout=60)
        assert out.returncode == 5, out.stderr
        assert "did you mean 'TxService'?" in out.stderr and "localbatch services" in out.stderr


@pytest.mark.parametrize("name", [n for n in localbatch.__all__ if n.endswith(("Error",
                                                                              "Warning"))])
def test_tracebacks_show_public_names(name):
    cls = getattr(localbatch, name)
    assert cls.__module__ == "localbatch"
    try:
        raise cls("boom") if name != "ScoringError" else cls("boom", "remote tb")
    except Exception as exc:  # noqa: BLE001 - any of them
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        again = pickle.loads(pickle.dumps(exc))
    assert f"localbatch.{name}: boom" in text and "localbatch._errors" not in text
    assert type(again) is cls and str(again).startswith("boom")


def test_a_real_failure_traceback_names_the_public_class(services):
    try:
        services.get_service("nope")
    except ServiceNotFoundError as exc:
        last = traceback.format_exception(type(exc), exc, exc.__traceback__)[-1]
    assert last.startswith("localbatch.ServiceNotFoundError: No service found for nope")
