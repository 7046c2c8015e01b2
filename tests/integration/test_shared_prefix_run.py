"""A run with the shared-prefix forward trains the padded forward's image."""

import numpy as np
import pytest


@pytest.mark.slow
def test_five_steps_give_the_padded_forwards_art_png(ray_local, make_cfg, tmp_path):
    from PIL import Image

    from learner.driver.train import train

    runs = {}
    for shared in (True, False):
        name = "shared" if shared else "padded"
        cfg = make_cfg(
            "steps=5", "eval.every=0", f"learner.shared_prefix={str(shared).lower()}",
            f"output_dir={tmp_path}/{name}",
        )  # fmt: skip
        cfg.run_dir = str(tmp_path / name)
        runs[name] = train(cfg)
    shared, padded = (
        np.asarray(Image.open(runs[k]["artifact_path"])).astype(int) for k in ("shared", "padded")
    )
    diff = np.abs(shared - padded)
    print(
        f"art.png after 5 steps, shared-prefix vs padded: {int((diff > 0).sum())} of {diff.size} "
        f"uint8 values differ, by at most {diff.max()}; rewards {runs['shared']['rewards']} vs "
        f"{runs['padded']['rewards']}"
    )
    assert diff.max() <= 1
    assert np.allclose(runs["shared"]["rewards"], runs["padded"]["rewards"])
    assert np.abs(shared - np.asarray(Image.open(tmp_path / "shared" / "seed.png"))).max() > 0
