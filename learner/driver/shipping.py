"""A user's task files on a cluster: what `art-submit` ships beside the project.

The job runs from an uploaded copy of the repository (its `working_dir`), so a data file, a
reward module or a Task class outside it would be missing on the cluster. `art-submit` finds
every local path and import path in the task's config (`task.name`, `task.options`,
`task.rewards`, `task.score`), and ships:
- the folder of each file outside the repository (nested folders as one) as a Ray
  `py_modules` entry: it lands on the driver's Python path as `<folder name>/`; the paths in
  the overrides are rewritten to `<folder name>/<file>`, which `shared.tasks.entrypoints.
  resolve_path` finds there (`ART_SHIPPED_FOLDERS` names the folders);
- the top-level package (or single-file module) of a `module:function` that is importable
  here from outside the repository and outside installed packages, as is;
- a path inside the repository becomes relative to it (the job's working directory).
Scoring runs on the driver (and the reward processes it starts), so nothing else needs them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import UserError
from shared.tasks.entrypoints import SHIPPED_ENV, is_file_target, split_entry

REPO = Path(__file__).resolve().parents[2]
# A shipped folder larger than this is refused (Ray's own limit for a package is 512 MiB).
MAX_SHIPPED_BYTES = 200 * 2**20


@dataclass
class Shipment:
    """What art-submit adds to the job: py_modules, path rewrites, the env variable."""

    py_modules: list[str] = field(default_factory=list)
    rewrites: dict[str, str] = field(default_factory=dict)  # path as given -> path in the job
    folders: list[str] = field(default_factory=list)  # shipped folder names

    def env(self) -> dict[str, str]:
        return {SHIPPED_ENV: ",".join(self.folders)} if self.folders else {}

    def rewrite(self, overrides: Iterable[str]) -> list[str]:
        """The overrides with every shipped path replaced by where it lands."""
        out = []
        for override in overrides:
            key, sep, value = override.partition("=")
            for old in sorted(self.rewrites, key=len, reverse=True):
                pattern = rf"(?<![^\s\[\],{{}}'\"=:]){re.escape(old)}(?![^\s\[\],{{}}'\":])"
                value = re.sub(pattern, lambda _m, old=old: self.rewrites[old], value)
            out.append(key + sep + value)
        return out


def task_strings(task_cfg) -> list[str]:
    """Every string of the task's config that may name a file or an import path."""
    # start-up time: a heavy library, loaded when this runs
    from omegaconf import OmegaConf

    found: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    container = OmegaConf.to_container(task_cfg, resolve=True)
    walk([container.get(k) for k in ("name", "options", "rewards", "score")])
    return found


def _looks_like_a_path(text: str) -> bool:
    """A folder separator, a leading ~ or a file suffix (rows.jsonl, rewards.py)."""
    return bool(text) and (
        "/" in text or os.sep in text or text.startswith("~") or bool(Path(text).suffix)
    )


def _installed(path: Path) -> bool:
    """Inside the interpreter's own or its installed packages (present on the cluster)."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.is_relative_to(Path(r).resolve()) for r in roots)


def _in_repo(path: Path) -> bool:
    return path.is_relative_to(REPO)


def plan_shipment(task_cfg) -> Shipment:
    """The folders and modules to ship for this task config, and the rewritten paths."""
    files: dict[str, Path] = {}  # string as given -> local file or folder outside the repo
    modules: set[Path] = set()
    shipment = Shipment()
    for text in task_strings(task_cfg):
        path_text = text
        if ":" in text and "://" not in text:
            try:
                target, _ = split_entry(text)
            except UserError:
                target = None
            if target is not None and not is_file_target(target):
                module = _module_origin(target)
                if module is not None:
                    modules.add(module)
                continue
            if target is not None:
                path_text = target
        if not _looks_like_a_path(path_text):
            continue  # an option's word ("default", "F"), whatever the working folder holds
        path = Path(os.path.expanduser(path_text))
        if not path.exists():
            continue
        resolved = path.resolve()
        if _in_repo(resolved):
            if path.is_absolute() or path_text.startswith("~") or Path.cwd() != REPO:
                shipment.rewrites[path_text] = str(resolved.relative_to(REPO))
        elif not _installed(resolved):
            files[path_text] = resolved
    roots = _roots({p if p.is_dir() else p.parent for p in files.values()} | set())
    for text, path in files.items():
        root = next(r for r in roots if path.is_relative_to(r))
        shipment.rewrites[text] = str(Path(root.name) / path.relative_to(root))
    for root in sorted(roots):
        _check_folder(root)
        shipment.py_modules.append(str(root))
        shipment.folders.append(root.name)
    for module in sorted(modules):
        shipment.py_modules.append(str(module))
    names = [Path(p).name for p in shipment.py_modules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(
            f"art-submit ships each folder under its own name, and {', '.join(twice)} names "
            f"more than one ({', '.join(shipment.py_modules)}); put the task's files in one "
            "folder, or rename one"
        )
    return shipment


def _module_origin(target: str) -> Path | None:
    """The folder (package) or file (module) to ship for `module.path`, or None when it is
    in the repository, installed, or not importable here (the job then fails to import it,
    as art-submit's check said)."""
    top = target.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        locations = list(spec.submodule_search_locations or []) if spec else []
        if not locations:
            return None
        path = Path(locations[0]).resolve()
    else:
        origin = Path(spec.origin).resolve()
        path = origin.parent if origin.name == "__init__.py" else origin
    if _in_repo(path) or _installed(path):
        return None
    return path


def _roots(folders: set[Path]) -> list[Path]:
    """The outermost of `folders` (a folder inside another ships with it)."""
    return sorted(f for f in folders if not any(f != g and f.is_relative_to(g) for g in folders))


def _check_folder(folder: Path) -> None:
    """Refuse a folder that would shadow a module of the job, or is too large to ship."""
    if folder == Path(folder.anchor) or folder == Path.home():
        raise UserError(
            f"art-submit would ship {folder} whole to reach the task's files in it; put them "
            "in a folder of their own"
        )
    spec = importlib.util.find_spec(folder.name) if folder.name.isidentifier() else None
    if spec is not None and not any(
        Path(loc).resolve() == folder for loc in (spec.submodule_search_locations or [])
    ):
        raise UserError(
            f"the folder {folder} would land on the job's Python path as {folder.name!r}, the "
            f"name of an importable module ({spec.origin or spec.name}); rename the folder"
        )
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
            if total > MAX_SHIPPED_BYTES:
                raise UserError(
                    f"art-submit ships {folder} to reach the task's files in it, and it holds "
                    f"more than {MAX_SHIPPED_BYTES // 2**20} MiB; put the task's files in a "
                    "folder of their own (or data on shared storage, given by absolute path)"
                )
