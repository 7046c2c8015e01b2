"""The Hydra entry of `art-train` and `art-eval`, and `compose_config` for tests and notebooks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from shared.config import register_configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

register_configs()  # the structured schema `conf/config.yaml` builds on


def compose_config(*overrides: str, run_dir: str = "unused"):
    """The `conf/` config with Hydra overrides, outside the CLI (tests, notebooks)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=list(rewrite_model_override(list(overrides))))
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = run_dir
    return cfg


def rewrite_model_override(argv: list[str]) -> list[str]:
    """`model=Qwen/Qwen3.5-0.8B` (not a file in conf/model) -> `model.name=Qwen/Qwen3.5-0.8B`."""
    presets = {p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml")}
    out = []
    for arg in argv:
        if arg.startswith("model=") and arg.split("=", 1)[1] not in presets:
            arg = "model.name=" + arg.split("=", 1)[1]
        out.append(arg)
    return out


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "httpx", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_hydra_app(app) -> None:
    """The console-script entry of `art-train` / `art-eval`: logging, `model=<hub id>`
    shorthand, Hydra config from `conf/`, the run folder Hydra made, then `app(cfg)`."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    sys.argv[1:] = rewrite_model_override(sys.argv[1:])
    configure_logging()

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        OmegaConf.set_struct(cfg, False)
        cfg.run_dir = HydraConfig.get().runtime.output_dir
        OmegaConf.set_struct(cfg, True)
        app(cfg)

    _main()
