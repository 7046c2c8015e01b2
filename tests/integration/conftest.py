import pytest

from learner.driver.cli import compose_config


def compose_cfg(tmp_path, *overrides):
    """The repo's Hydra config with MLflow and the run folder under tmp_path."""
    return compose_config(
        f"logging.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"logging.artifact_location={tmp_path}/artifacts",
        *overrides,
        run_dir=str(tmp_path / "run"),
    )


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> config whose MLflow store and run folder are under tmp_path."""
    return lambda *overrides: compose_cfg(tmp_path, *overrides)


@pytest.fixture(scope="session")
def trained_run(ray_local, tmp_path_factory):
    """The embedded default trained once with its default config: (cfg, summary)."""
    from learner.driver.train import train

    tmp_path = tmp_path_factory.mktemp("trained")
    cfg = compose_cfg(tmp_path)
    return cfg, train(cfg)
