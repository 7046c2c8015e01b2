"""The command line of `art-train` and `art-eval`: Hydra config, the run folder, user errors.

- Overrides are checked against the schema before anything starts; an unknown key or a
  wrong-typed value is one line naming it, not a traceback.
- The driver owns its run folder (Hydra writes nothing): `<output_dir>/<date>_<time>_<6 hex>`
  for a new run (two runs started in the same second get different folders),
  `<output_dir>/<run_name>` with `run_name=...`, the checkpoint's own run folder with
  `resume_from=<run>/checkpoints/last.pt`, and with `resume=auto` the newest run folder that
  has a checkpoint or a driver (its `driver.lock`, learner/driver/runlock.py).
- A `UserError` (bad config, data, seed image, checkpoint, cluster, a run folder in use)
  prints `<prog>: error: <message>` and exits with status 2; a run that stopped
  (`RunStoppedError`, a failed write: shared/storage.py) `<prog>: stopped: <message>`, status
  1; Ctrl-C status 130 and SIGTERM status 143, each after the last good step was saved. The
  process exits after the error and what it held are released (a Ray handle freed during the
  interpreter's shutdown can crash it: an abort and a core dump instead of the status).
"""

from __future__ import annotations

import difflib
import gc
import logging
import secrets
import signal
import sys
import threading
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from shared.config import TrainConfig, register_configs, resolve
from shared.errors import RunStoppedError, Terminated, UserError
from shared.storage import ATOMIC_NOTE, describe, storage_error

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_configs()  # the structured schema `conf/config.yaml` builds on


def compose_config(*overrides: str, run_dir: str | None = None):
    """The `conf/` config with Hydra overrides, outside the CLI (tests, notebooks); its run
    folder is `run_dir`, or the one the command line would choose (a new dated folder under
    `output_dir`, `run_name`'s, or with `resume=auto` the newest run's)."""
    # start-up time: a heavy library, loaded when this runs
    from hydra import compose, initialize_config_dir

    # start-up time: a heavy library, loaded when this runs
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside an app (art-compare composes per method)
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        argv = add_mapping_keys(rewrite_model_override(list(overrides)))
        cfg = compose("config", overrides=argv)
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir) if run_dir is not None else str(choose_run_dir(cfg))

    resolve(cfg)
    return cfg


def model_presets() -> dict[str, str]:
    """Preset file stem -> the `model.name` it sets (conf/model/*.yaml)."""
    # start-up time: a heavy library, loaded when this runs
    import yaml

    presets = {}
    for path in sorted((Path(CONF_DIR) / "model").glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        name = data.get("model", data).get("name") if isinstance(data, dict) else None
        presets[path.stem] = name
    return presets


def rewrite_model_override(argv: list[str]) -> list[str]:
    """`model=X` where X is no file in conf/model: a hub id or folder. One a preset names
    (`model=Qwen/Qwen3.5-9B`) selects that preset; any other gets the `hub` preset (bfloat16
    on cuda, the settings of a real model; logged) with `model.name=X`."""
    presets = model_presets()
    by_name = {name: stem for stem, name in presets.items() if name}
    out = []
    for arg in argv:
        if arg.startswith("model=") and arg.split("=", 1)[1] not in presets:
            name = arg.split("=", 1)[1]
            if name in by_name:
                out.append(f"model={by_name[name]}")
                continue
            logging.getLogger("art.config").warning(
                "model=%s has no preset in conf/model: it gets the hub preset (bfloat16 on "
                "cuda, activation checkpointing, a token budget per micro-batch, 256x256); "
                "override any of them (model.dtype=..., model.device=...)",
                name,
            )
            out += ["model=hub", f"model.name={name}"]
            continue
        out.append(arg)
    return out


# Fields that are mappings: a key a preset lacks is added (`++`), as the docs write them
# (`task.options.scoring=lenient`), instead of Hydra's "key not in struct" refusal.
MAPPING_FIELDS = (
    "task.options.",
    "task.reward_ranges.",
    "rollout.resources.",
    "learner.resources.",
)


def add_mapping_keys(argv: list[str]) -> list[str]:
    return [
        f"++{a}" if a.startswith(MAPPING_FIELDS) and "=" in a.split("[", 1)[0] else a for a in argv
    ]


def check_flags(argv: list[str], prog: str) -> None:
    """`--help`, `--version` answered here; `--steps 10` (argparse's style) refused with what
    to write instead."""
    from learner.driver.help import help_text, version  # start-up time: only for these flags

    if any(a in ("-h", "--help") for a in argv):
        print(help_text(prog))
        sys.exit(0)
    if "--version" in argv:
        print(f"{prog} {version()}")
        sys.exit(0)
    for i, arg in enumerate(argv):
        if arg.startswith("--") and arg not in ("--hydra-help", "--cfg", "--resolve", "--info"):
            if arg.startswith(("--config-dir", "--config-name", "--config-path", "-cd", "-cn")):
                continue
            key = arg[2:].split("=", 1)[0]
            value = (
                arg.split("=", 1)[1]
                if "=" in arg
                else (argv[i + 1] if i + 1 < len(argv) else "<value>")
            )
            fail(
                prog,
                f"{arg}: {prog} takes key=value overrides, not flags: write `{key}={value}` (--help lists them)",
            )


def check_overrides(argv: list[str]) -> None:
    """Compose the config once with the command line's overrides; a composition error becomes
    a `UserError` that names the override and says what to do."""
    overrides = [a for a in argv if "=" in a and not a.startswith(("-", "hydra.", "hydra/"))]
    try:
        compose_config(*overrides)
    except Exception as err:
        raise UserError(describe_override_error(err)) from err


def describe_override_error(err: BaseException) -> str:
    # start-up time: a heavy library, loaded when this runs
    from hydra.errors import MissingConfigException

    # start-up time: a heavy library, loaded when this runs
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException):  # `task=mmlu`: no such file in a group
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        missing = lines[0].split("Could not find", 1)[-1].strip(" '")
        group, _, option = missing.partition("/")
        options = (
            [
                ln
                for ln in lines[
                    lines.index(next(x for x in lines if x.startswith("Available"))) + 1 :
                ]
                if not ln.startswith(("Config search path", "provider="))
            ]
            if any(ln.startswith("Available") for ln in lines)
            else []
        )
        close = difflib.get_close_matches(option, options, n=1)
        hint = f" (did you mean `{group}={close[0]}`?)" if close else ""
        return f"{group}={option}: no such option; {group} is one of: {', '.join(options)}{hint}"
    cause: BaseException | None = err
    while cause is not None and not getattr(cause, "full_key", None):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        parent = cause.full_key.rsplit(".", 1)[0] if "." in cause.full_key else ""
        fields = _fields_of(cause.full_key)
        close = difflib.get_close_matches(cause.full_key.rsplit(".", 1)[-1], fields, n=1)
        if close:
            nearest = f"{parent}.{close[0]}" if parent else close[0]
            return (
                f"unknown config key {cause.full_key!r}: did you mean `{nearest}`? (every "
                "field: shared/config.py; `+key=value` adds a key of your own)"
            )
        hint = f"; {parent or 'the config'} has: {', '.join(fields)}" if fields else ""
        return (
            f"unknown config key {cause.full_key!r}{hint} (every field: shared/config.py; "
            "`+key=value` adds a key of your own)"
        )
    if isinstance(cause, OmegaConfBaseException):
        first = str(cause).splitlines()[0]
        return f"{cause.full_key}: {first}; give a value of the field's type (shared/config.py)"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " ".join(ln for ln in lines if not ln.startswith(("full_key", "object_type")))[:500]


def _fields_of(full_key: str) -> list[str]:

    node = TrainConfig
    for part in full_key.split(".")[:-1]:
        match = {f.name: f for f in fields(node)}.get(part)
        if match is None or not hasattr(match.default_factory, "__dataclass_fields__"):
            return []
        node = match.default_factory
    return [f.name for f in fields(node)]


def new_run_name() -> str:
    return f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"


def run_folder_of(checkpoint: str | Path) -> Path:
    """`<run>/checkpoints/last.pt` -> `<run>`."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def choose_run_dir(cfg) -> Path:
    """The run folder (see the module docstring); nothing is created here."""
    output_dir = Path(cfg.output_dir).resolve()
    if cfg.resume_from:
        return run_folder_of(cfg.resume_from)
    if cfg.resume == "auto":
        candidates = [output_dir / cfg.run_name] if cfg.run_name else output_dir.glob("*")
        active = {d: last_activity(d) for d in candidates if d.is_dir()}
        active = {d: t for d, t in active.items() if t is not None}
        if active:
            return max(active, key=active.get)
    return output_dir / (cfg.run_name or new_run_name())


def last_activity(run_dir: Path) -> float | None:
    """When a run folder last saved a checkpoint or renewed its driver's lock (None: it has
    neither, so `resume=auto` does not take it)."""
    # start-up time: loaded when this runs, not at import
    from learner.driver.checkpoint import step_files

    # start-up time: loaded when this runs, not at import
    from learner.driver.runlock import LOCK_NAME

    folder = run_dir / "checkpoints"
    files = [folder / "last.pt", *step_files(folder)[:1], run_dir / LOCK_NAME]
    files += list(run_dir.glob("tasks/*/checkpoints/last.pt"))  # a multi-task run's
    times = []
    for path in files:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times) if times else None


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "alembic", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


_terminating = threading.Event()


def _on_sigterm(signum, frame) -> None:
    if _terminating.is_set():  # a second SIGTERM while the last good step is being saved
        logging.getLogger("art").warning("SIGTERM again: already saving and stopping")
        return
    _terminating.set()
    raise Terminated("SIGTERM")


def handle_sigterm() -> None:
    """SIGTERM raises `Terminated` in the main thread (an interrupt: the driver saves its last
    good step, then exits with status 143). Ray's `ray.init` replaces the handler with its own
    (`sys.exit(15)`); `start_ray` puts this one back."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def stop_message(prog: str, err: BaseException, run_dir: str) -> tuple[int, str]:
    """(exit status, the one line) for an error that ends a command."""

    if isinstance(err, UserError):
        return 2, f"{prog}: error: {err}"
    if isinstance(err, RunStoppedError):
        return 1, f"{prog}: stopped: {err}"
    if isinstance(err, KeyboardInterrupt):
        what = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
        saved = getattr(err, "saved", None)  # (run folder, step, whether last.pt exists)
        if saved is None:
            where = (
                f"nothing of the run was saved; {run_dir} holds what was written"
                if Path(run_dir).is_dir()
                else "nothing of the run was saved (no run folder was left)"
            )
        elif saved[2]:
            where = (
                f"art.png and checkpoints/last.pt of step {saved[1]} are in {saved[0]}; resume "
                f"with: {prog} resume_from={saved[0]}/checkpoints/last.pt (or resume=auto)"
            )
        else:
            where = f"no step completed, so there is nothing to resume; {saved[0]} holds the seed"
        return (143 if isinstance(err, Terminated) else 130), f"{prog}: {what}; {where}"
    fault = storage_error(err)
    if fault is not None:
        return 1, f"{prog}: stopped: {describe(fault)}; {ATOMIC_NOTE}"
    raise err


def run_hydra_app(app, prog: str) -> None:
    """The console-script entry of `art-train` / `art-eval`: overrides checked, logging, the
    run folder, then `app(cfg)`; user errors end with one line and status 2."""
    # start-up time: a heavy library, loaded when this runs
    import hydra

    # start-up time: a heavy library, loaded when this runs
    from omegaconf import DictConfig

    check_flags(sys.argv[1:], prog)
    sys.argv[1:] = add_mapping_keys(rewrite_model_override(sys.argv[1:]))
    try:
        check_overrides(sys.argv[1:])
    except UserError as err:
        fail(prog, str(err))
    configure_logging()

    handle_sigterm()
    ended: list[tuple[int, str]] = []

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        OmegaConf.set_struct(cfg, False)
        try:
            cfg.run_dir = str(choose_run_dir(cfg))
            OmegaConf.set_struct(cfg, True)
            app(cfg)
        except BaseException as err:  # (SystemExit included: what Ray's own handler raises)
            if isinstance(err, SystemExit) and err.code in (0, None):
                raise
            if isinstance(err, SystemExit):
                err = Terminated("SIGTERM") if err.code == signal.SIGTERM else err
                if not isinstance(err, Terminated):
                    raise
            ended.append(stop_message(prog, err, cfg.run_dir))

    _main()
    if ended:  # outside the handler: the error, its traceback and the run's objects are freed
        status, line = ended[0]
        gc.collect()
        print(line, file=sys.stderr)
        sys.exit(status)
