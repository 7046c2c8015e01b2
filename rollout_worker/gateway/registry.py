"""The task registry: task name -> the PNG that adapts the served model to that task.

Sources (`art-serve --tasks PATH`):

- a folder of trained runs: `<folder>/<run>/art.png` is task `<run>` (the run folder's name,
  `run_name=` at training), and a loose `<folder>/<name>.png` is task `<name>`;
- a mapping file (`.json`, `.yaml` or `.yml`): `{task name: PNG path}`, relative paths taken
  from the file's folder.

Every PNG is checked once against the served model: its ART metadata must name that model
and ART's prompt layout, its pixels must have the size its metadata records (a resized or
re-encoded image is refused) and, with `image_size`, that size. A task that fails is kept
with the reason, so a request for it says why instead of "unknown model".

`scan()` is cheap enough to call while serving: it lists the source and stats each PNG; only
a file whose (mtime, size, inode) changed is read and checked again. A half-written file that
does not decode is refused until it changes (training writes atomically, so its files never
are).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.artifact import ArtifactMismatchError, check_metadata, decode_png, sha256
from shared.errors import UserError
from shared.prompts import PROMPT_LAYOUT
from shared.serving import png_data_url

MAPPING_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class Task:
    """One task: its PNG, checked. `error` is None when it can be served, else why not."""

    name: str
    path: Path
    stamp: tuple[int, int, int]  # (mtime_ns, size, inode) of the file when read
    error: str | None = None
    sha256: str = ""
    step: str | None = None
    height: int = 0
    width: int = 0
    # The user turn's first content part, built once: {"type": "image_url", ...} with the PNG
    # as a base64 data URL (what `shared.serving.art_messages` sends).
    image_part: dict = field(default_factory=dict, repr=False)

    @property
    def servable(self) -> bool:
        return self.error is None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def load_task(
    name: str,
    path: Path,
    model: str,
    image_size: tuple[int, int] | None,
    reserved: frozenset[str] = frozenset(),
) -> Task:
    """Read and check one PNG; never raises for a bad file (the Task carries the reason)."""
    stamp = _stamp(path) or (0, 0, 0)
    if name in reserved:
        return Task(
            name, path, stamp, f"task name {name!r} is the served model's own name; rename {path}"
        )
    try:
        png = path.read_bytes()
    except OSError as e:
        return Task(name, path, stamp, f"{path} cannot be read ({e.strerror or e})")
    try:
        pixels_HWC, metadata = decode_png(png)
    except Exception as e:  # PIL raises several types for a truncated or foreign file
        return Task(name, path, stamp, f"{path} is not a readable PNG ({type(e).__name__}: {e})")
    height, width = pixels_HWC.shape[:2]
    try:
        recorded = (metadata.get("height"), metadata.get("width"))
        if metadata and recorded != (str(height), str(width)):
            raise ArtifactMismatchError(
                f"refusing task {name!r} ({path}): its pixels are {height}x{width}, its metadata "
                f"says {recorded[0]}x{recorded[1]} (resized or re-encoded after training); "
                "serve the art.png training wrote"
            )
        check_metadata(
            metadata,
            model,
            *(image_size or (None, None)),
            prompt_layout=PROMPT_LAYOUT,
            source=f"task {name!r} ({path})",
        )
    except ArtifactMismatchError as e:
        return Task(name, path, stamp, str(e))
    return Task(
        name,
        path,
        stamp,
        sha256=sha256(png),
        step=metadata.get("step"),
        height=height,
        width=width,
        image_part={"type": "image_url", "image_url": {"url": png_data_url(png)}},
    )


class TaskRegistry:
    """Task name -> Task, from a folder of runs or a mapping file; thread-safe, rescannable."""

    def __init__(
        self,
        source: str | Path,
        model: str,
        image_size: tuple[int, int] | None = None,
        png_name: str = "art.png",
        rescan_interval_s: float = 2.0,
        clock=time.monotonic,
    ):
        self.source = Path(source)
        if not self.source.exists():
            raise UserError(
                f"--tasks {self.source} does not exist: give a folder of trained runs "
                "(<run>/art.png) or a .json/.yaml file mapping task names to PNGs"
            )
        if self.source.is_file() and self.source.suffix not in MAPPING_SUFFIXES:
            raise UserError(
                f"--tasks {self.source}: a file must be a mapping of task names to PNG paths "
                f"({', '.join(MAPPING_SUFFIXES)}); for a folder of runs give the folder"
            )
        self.model = model
        self.image_size = image_size
        self.png_name = png_name
        self.rescan_interval_s = rescan_interval_s
        self.clock = clock
        self.reads = 0  # PNGs read and checked since start (a scan of unchanged files adds 0)
        self.scans = 0
        self._tasks: dict[str, Task] = {}
        self._last_scan = float("-inf")
        self._lock = threading.Lock()
        self.scan()

    # -- discovery -------------------------------------------------------------------------

    def _discover(self) -> dict[str, Path]:
        if self.source.is_file():
            return self._read_mapping()
        found: dict[str, Path] = {}
        try:
            children = sorted(self.source.iterdir())
        except OSError as e:
            raise UserError(f"--tasks {self.source} cannot be listed ({e.strerror})") from e
        for child in children:
            if child.name.startswith("."):  # hidden, and atomic writes' temporary files
                continue
            if child.suffix == ".png" and child.is_file():
                found.setdefault(child.stem, child)
            elif (child / self.png_name).is_file():
                found[child.name] = child / self.png_name
        return found

    def _read_mapping(self) -> dict[str, Path]:
        text = self.source.read_text()
        try:
            if self.source.suffix == ".json":
                raw = json.loads(text)
            else:
                # optional dependency: its absence is handled below
                import yaml

                raw = yaml.safe_load(text)
        except Exception as e:
            raise UserError(f"--tasks {self.source} cannot be parsed: {e}") from e
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise UserError(
                f"--tasks {self.source} must map task names to PNG paths, e.g. "
                '{"gsm8k": "outputs/gsm8k/art.png"}'
            )
        base = self.source.parent
        return {name: (base / path) for name, path in raw.items()}

    # -- scanning --------------------------------------------------------------------------

    def scan(self) -> None:
        """Bring the registry up to date; reads only new or changed PNGs."""
        with self._lock:
            try:
                found = self._discover()
            except UserError:
                if self.scans == 0:
                    raise
                found = {name: t.path for name, t in self._tasks.items()}  # keep serving
            tasks: dict[str, Task] = {}
            reserved = frozenset({self.model})
            for name, path in found.items():
                known = self._tasks.get(name)
                if known is not None and known.path == path and known.stamp == _stamp(path):
                    tasks[name] = known
                    continue
                tasks[name] = load_task(name, path, self.model, self.image_size, reserved)
                self.reads += 1
            self._tasks = tasks
            self._last_scan = self.clock()
            self.scans += 1

    def maybe_scan(self, force: bool = False, min_gap_s: float = 0.25) -> None:
        """Rescan when the last scan is older than the interval (or `force`d, e.g. for an
        unknown name, at most every `min_gap_s`, so unknown names cannot flood the disk)."""
        age = self.clock() - self._last_scan
        if age >= self.rescan_interval_s or (force and age >= min_gap_s):
            self.scan()

    def get(self, name: str) -> Task | None:
        """The task of that name, rescanning first when it is unknown (a task just added)."""
        self.maybe_scan()
        task = self._tasks.get(name)
        if task is None:
            self.maybe_scan(force=True)
            task = self._tasks.get(name)
        return task

    def tasks(self) -> list[Task]:
        self.maybe_scan()
        return sorted(self._tasks.values(), key=lambda t: t.name)
