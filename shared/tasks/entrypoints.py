"""A user's code and files by name: `module:attr` or `path/to/file.py:attr`, and data paths.

The one door through which a task class, a reward function and a strict score function come
in, built-in or the user's. Each is checked when it is loaded: the module imports, the name
exists; the callers check the signature. Nothing here imports Ray or model code.

On a cluster (`art-submit`) the user's folders travel as Ray `py_modules`: each lands as
`<somewhere on the Python path>/<folder name>`, and the paths in the job's config are
rewritten to `<folder name>/<file>`; `ART_SHIPPED_FOLDERS` names those folders, and
`resolve_path` finds a path under one of them on the Python path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from shared.errors import UserError

# Folders art-submit shipped as Ray py_modules (comma-separated names), set in the job's env.
SHIPPED_ENV = "ART_SHIPPED_FOLDERS"


class EntryPointError(UserError):
    """A user entry point that does not import, does not exist or has the wrong shape."""


def split_entry(spec: str) -> tuple[str, str]:
    """`module.path:attr` or `path/to/file.py:attr` -> (the module or file, attr)."""
    target, sep, attr = str(spec).rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise EntryPointError(
            f"{spec!r} is no import path; give module:name (my_rewards:accuracy) or "
            "path/to/file.py:name (~/task/rewards.py:accuracy)"
        )
    return target, attr


def is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def absolute_entry(spec: str) -> str:
    """`path/to/file.py:name` with the file's absolute path (another process, a Ray actor,
    may start elsewhere); any other spec or name unchanged."""
    target, sep, attr = str(spec).rpartition(":")
    if sep and target and is_file_target(target):
        return f"{resolve_path(target).resolve()}:{attr}"
    return str(spec)


def shipped_folders() -> list[str]:
    return [f for f in os.environ.get(SHIPPED_ENV, "").split(",") if f]


def resolve_path(path: str | os.PathLike) -> Path:
    """A data or code path as the user gave it: `~` expanded; a relative path is taken from
    the working directory, or, on a cluster job, from the folders art-submit shipped (found
    on the Python path, where Ray's py_modules put them). Missing paths come back unchanged
    so that the caller can say which file is missing."""
    given = Path(os.path.expanduser(str(path)))
    if given.is_absolute() or given.exists():
        return given
    if given.parts and given.parts[0] in shipped_folders():
        for entry in sys.path:
            candidate = Path(entry or ".") / given
            if candidate.exists():
                return candidate
    return given


def import_target(target: str, what: str):
    """The module a target names: a dotted module path, or a .py file (imported once under a
    name derived from its absolute path, so that two files with the same name do not clash)."""
    if is_file_target(target):
        path = resolve_path(target)
        if not path.is_file():
            raise EntryPointError(f"{what}: file {target} does not exist; check the path")
        path = path.resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        name = f"art_user_{path.stem}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise EntryPointError(f"{what}: {target} cannot be imported as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as err:
            sys.modules.pop(name, None)
            raise EntryPointError(
                f"{what}: importing {target} failed ({_short(err)}); fix the file"
            ) from err
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if err.name and target.split(".")[0] == err.name.split(".")[0]:
            raise EntryPointError(
                f"{what}: no module named {target!r} on the Python path; give a file "
                f"(path/to/file.py:name) or add its folder to PYTHONPATH"
            ) from err
        raise EntryPointError(f"{what}: importing {target} failed ({_short(err)})") from err
    except BaseException as err:
        raise EntryPointError(f"{what}: importing {target} failed ({_short(err)})") from err


def load_entry(spec: str, what: str) -> Any:
    """The object `spec` names (`module:attr` or `file.py:attr`); `what` names the config
    field in errors (e.g. 'task.rewards')."""
    target, attr = split_entry(spec)
    module = import_target(target, what)
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise EntryPointError(
            f"{what}: {target} has no {attr!r} (it has: {', '.join(public) or 'nothing'})"
        )
    return getattr(module, attr)


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
