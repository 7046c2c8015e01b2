import os

from learner.driver.submit import EXCLUDES, build_runtime_env, use_token_if_available


def test_runtime_env_ships_the_project_without_local_state():
    env = build_runtime_env({"A": "1"})
    assert os.path.isdir(os.path.join(env["working_dir"], "learner"))
    for excluded in (".venv/", "outputs/", "mlflow.db", "mlartifacts/"):
        assert excluded in EXCLUDES
    assert env["env_vars"] == {"A": "1"}


def test_token_mode_is_chosen_when_a_token_exists(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "none"))
    use_token_if_available()
    assert "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("x" * 32)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    use_token_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit choice is kept
    use_token_if_available()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
