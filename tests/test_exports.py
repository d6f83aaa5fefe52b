"""The public surface: one sorted __all__, typed, and one error root."""

from __future__ import annotations

import inspect
import types
from importlib import resources

import shortwan
from shortwan import _errors


def test_all_is_sorted() -> None:
    """__all__ is kept in plain sorted order."""
    assert shortwan.__all__ == sorted(shortwan.__all__)


def test_all_is_complete_and_exists() -> None:
    """Every public name is exported, and every exported name exists."""
    public = {
        name
        for name, value in vars(shortwan).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - {"annotations", "PackageNotFoundError", "version"} <= set(shortwan.__all__)
    for name in shortwan.__all__:
        assert hasattr(shortwan, name), name


def test_version_is_text() -> None:
    """The version comes from the package metadata."""
    assert isinstance(shortwan.__version__, str)
    assert shortwan.__version__[0].isdigit()


def test_every_error_has_one_root() -> None:
    """Every exception shortwan defines derives from ShortWanError, with useful stdlib bases."""
    errors = [
        value
        for value in vars(_errors).values()
        if inspect.isclass(value) and issubclass(value, BaseException)
    ]
    assert len(errors) > 10
    assert all(issubclass(e, shortwan.ShortWanError) for e in errors)
    assert issubclass(shortwan.InvalidRequestError, ValueError)
    assert issubclass(shortwan.ConfigurationError, ValueError)
    assert issubclass(shortwan.JobTimeoutError, TimeoutError)
    assert issubclass(shortwan.MalformedResponseError, shortwan.TransportError)


def test_package_is_typed() -> None:
    """py.typed ships with the package."""
    assert resources.files("shortwan").joinpath("py.typed").is_file()
