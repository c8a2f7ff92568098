"""The import surface, the error tree and the forms of ``DeployClient``."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import localbatch
from localbatch import _errors

ISSUE_NAMES = {"DeployClient", "MLServer", "ServiceDefinition", "RealtimeDefinition", "Service",
               "ServiceResponse", "Batch", "BatchResponse", "EncodingType"}


def test_all_is_sorted_and_unique():
    assert localbatch.__all__ == sorted(localbatch.__all__)
    assert len(set(localbatch.__all__)) == len(localbatch.__all__)


def test_all_is_complete():
    exported = set(localbatch.__all__)
    assert exported >= ISSUE_NAMES
    # Every error class, whether or not its module lists it, is public.
    errors = {name for name, obj in vars(_errors).items()
              if inspect.isclass(obj) and issubclass(obj, (_errors.LocalBatchError, Warning))
              and obj.__module__ in (_errors.__name__, "localbatch")}  # public name shown
    assert errors == set(_errors.__all__)
    assert errors <= exported
    # Every public class reachable from the package is in __all__.
    public_classes = {name for name, obj in vars(localbatch).items()
                      if inspect.isclass(obj) and not name.startswith("_")}
    assert public_classes <= exported


def test_all_holds_nothing_private():
    for name in localbatch.__all__:
        assert not name.startswith("_") or name == "__version__", name
        assert getattr(localbatch, name) is not None
    for name in set(localbatch.__all__) - {"__version__"}:
        assert getattr(localbatch, name).__module__.startswith("localbatch"), name


def test_error_tree_is_rooted_and_mixes_in_the_sdk_builtins():
    for name in _errors.__all__:
        cls = getattr(localbatch, name)
        if name != "LocalBatchWarning":
            assert issubclass(cls, localbatch.LocalBatchError), name
    assert issubclass(localbatch.LocalBatchWarning, UserWarning)
    # The SDK raised ValueError for these; LookupError where something is not there.
    assert issubclass(localbatch.ServiceNotFoundError, ValueError)
    assert issubclass(localbatch.ServiceNotFoundError, LookupError)
    for name in ("ServiceExistsError", "InvalidServiceError", "SchemaError",
                 "ConfigurationError", "BatchNotStartedError"):
        assert issubclass(getattr(localbatch, name), ValueError), name
    assert issubclass(localbatch.StoreError, OSError)


# -- DeployClient forms ------------------------------------------------------------


def test_no_host_opens_localbatch_home(tmp_path: Path):
    with localbatch.DeployClient() as client:
        assert client.store_path == tmp_path / "default-store"
        assert client.store_path.is_dir()


def test_no_host_without_home_opens_a_per_user_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LOCALBATCH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    client = localbatch.DeployClient()
    assert client.store_path == tmp_path / "xdg" / "localbatch"


def test_path_forms(tmp_path: Path):
    as_str = localbatch.DeployClient(str(tmp_path / "a"))
    as_path = localbatch.DeployClient(tmp_path / "b")
    assert as_str.store_path == (tmp_path / "a").resolve()
    assert as_path.store_path == (tmp_path / "b").resolve()
    assert (tmp_path / "a").is_dir() and (tmp_path / "b").is_dir()


@pytest.mark.parametrize("host", ["http://localhost:12800", "https://mlserver.example:443/"])
@pytest.mark.parametrize("use", [localbatch.MLServer, "MLServer", "azureml.deploy.server.MLServer",
                                 ("azureml.deploy.server.MLServer", "/path/to/mlserver.py")])
def test_sdk_form_opens_the_default_store(tmp_path: Path, host: str, use: object):
    client = localbatch.DeployClient(host, use=use, auth=("admin", "pw"))
    assert client.store_path == tmp_path / "default-store"
    assert isinstance(client, localbatch.MLServer)
    assert isinstance(client, localbatch.Operationalization)


@pytest.mark.parametrize("auth", [("admin", "pw"), {"authuri": "x", "tenant": "t",
                                                   "clientid": "c", "resource": "r"}, "token"])
def test_auth_forms_are_accepted_and_ignored(auth: object):
    client = localbatch.DeployClient("http://localhost:12800", auth=auth,
                                     use=localbatch.MLServer)
    assert client.list_services() == []


@pytest.mark.parametrize("use", ["NotAServer", "azureml.deploy.server.Nope",
                                 ("bad.module.MLServer", "/x.py"), True, 12345, dict])
def test_bad_use_is_an_import_error(use: object):
    with pytest.raises(ImportError, match="use="):
        localbatch.DeployClient("http://localhost:12800", use=use)


def test_bad_store_paths(tmp_path: Path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(localbatch.ConfigurationError, match="is a file"):
        localbatch.DeployClient(str(afile))
    with pytest.raises(ValueError, match="empty store path"):
        localbatch.DeployClient("")
    with pytest.raises(localbatch.ConfigurationError):
        localbatch.DeployClient(42)


def test_builders_come_from_the_client(client):
    assert isinstance(client.service("x"), localbatch.ServiceDefinition)
    assert isinstance(client.realtime_service("x"), localbatch.RealtimeDefinition)
    assert "store=" in repr(client)
