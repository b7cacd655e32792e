"""Importing dependencies that may be missing (the optional extras) or
installed in versions that do not work together, with errors that say which
and what to do."""

import importlib
import importlib.util
import sys
from importlib import metadata


def installed_versions(*dists):
    """`"name version, ..."` for `dists`, `(not installed)` for missing ones."""
    found = []
    for dist in dists:
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


def describe_error(error):
    """`"Type: message"`, or the type alone for an error without a message:
    under NumPy 2 an extension built for NumPy 1 raises an ImportError with
    none (NumPy prints why to stderr)."""
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def import_optional(what, extra, modules, also=(), error=ImportError):
    """Import the modules of the optional extra `extra`, which `what` needs.

    Args:
        what: what needs them, for the message (`"ONNX export"`).
        extra: the extra that installs them (`"onnx"`).
        modules: dict, module name -> distribution name.
        also: distributions whose versions the message also lists when a
            module fails to import (`"numpy"`).
        error: the exception class to raise.

    Raises:
        `error` naming the missing distributions and the pip command; or the
        first module that is installed but fails to import, with the cause
        chained and the versions installed. Only the first is named: a module
        built for NumPy 1 under NumPy 2, the usual case, fails alike.
    """
    missing = [dist for module, dist in modules.items() if not _installed(module)]
    if missing:
        raise error(
            f"{what} needs {', '.join(missing)}, from the optional extra "
            f"[{extra}]: pip install 'spinalnet-keras[{extra}]'"
        )
    for module, dist in modules.items():
        try:
            importlib.import_module(module)
        except Exception as e:
            versions = installed_versions(*modules.values(), *also)
            raise error(
                f"{what} needs {dist}, which is installed but failed to "
                f"import ({describe_error(e)}). Installed: {versions}. A module "
                "built for NumPy 1 running under NumPy 2 is the usual cause; "
                f"`pip install -U 'spinalnet-keras[{extra}]'` installs versions "
                "that work together."
            ) from e


def _installed(module):
    # find_spec raises for a module already imported without a spec (one a
    # test put in sys.modules, say); a None there means "not importable".
    if sys.modules.get(module) is not None:
        return True
    return importlib.util.find_spec(module) is not None
