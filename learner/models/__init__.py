"""Model builders: models the project builds offline, and the resolution of `model.name`.

- `tiny`: the embedded default, a tiny Qwen3.5 VL "reader" (`learner/models/tiny.py`);
- `tiny_hint`: the same reader pretrained to read a text hint too (`learner/models/
  tiny_hint.py`), the teacher of context distillation on the embedded default;
  both are shipped with the repository, built once (`learner/models/embedded.py`,
  `make embedded-models`), never on a user's machine;
- `qwen3_5_0_8b_random`: the published Qwen3.5-0.8B architecture with random weights
  (`learner/models/qwen3_5_0_8b_random.py`), for benchmarks and tests at real sizes.
Anything else is a Hugging Face hub id or a local directory, passed through.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from learner.models.embedded import embedded_model_path
from learner.models.qwen3_5_0_8b_random import ensure_built
from shared.errors import DataAccessError

BUILT_MODELS = ("tiny", "tiny_hint", "qwen3_5_0_8b_random")


def resolve_model_path(name: str) -> str:
    """A shipped model's folder, a built model's cached folder (built once); anything else is
    passed through."""
    match name:
        case "tiny" | "tiny_hint":
            return str(embedded_model_path(name))
        case "qwen3_5_0_8b_random":
            return str(ensure_built())
        case _:
            return check_hub_model(name)


def check_hub_model(name: str, timeout_s: float = 10.0) -> str:
    """A local folder passes; a hub id must be in the local Hugging Face cache or answer one
    request within `timeout_s` (no retries), else a `UserError` says how to use a local copy."""

    # start-up time: a heavy library, loaded when this runs
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(name).expanduser().is_dir():
        return check_model_folder(Path(name).expanduser())
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name
    how = (
        f"download it where the hub is reachable (`hf download {name} "
        "--local-dir DIR`) and set model.name=DIR"
    )
    if constants.HF_HUB_OFFLINE:
        raise DataAccessError(
            f"model {name!r} is not in the Hugging Face cache (HF_HUB_OFFLINE=1); {how}"
        )
    url = f"{constants.ENDPOINT}/{name}/resolve/main/config.json"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise DataAccessError(
                f"model {name!r}: no such model on the Hugging Face hub (404); check model.name"
            ) from err
        if err.code not in (401, 403):  # gated or private: from_pretrained says what to do
            raise DataAccessError(f"model {name!r}: the hub answered {err.code}; {how}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DataAccessError(
            f"model {name!r} is not a local folder and the Hugging Face hub "
            f"({constants.ENDPOINT}) is unreachable ({getattr(err, 'reason', err)}); {how}"
        ) from err
    return name


def check_model_folder(folder) -> str:
    """A local model folder must hold the model, its tokenizer and its image processor: the
    learner and the engines load all three."""

    names = {p.name for p in folder.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json (the model)")
    if not names & {"tokenizer.json", "tokenizer_config.json", "vocab.json"}:
        missing.append("tokenizer.json / tokenizer_config.json (the tokenizer)")
    if not names & {"preprocessor_config.json", "processor_config.json"}:
        missing.append("preprocessor_config.json (the image processor)")
    if missing:
        raise DataAccessError(
            f"model folder {folder} lacks {', '.join(missing)}; download the whole model "
            "(`hf download <id> --local-dir DIR`) or save model and processor "
            "there (`save_pretrained` of both)"
        )
    return str(folder)
