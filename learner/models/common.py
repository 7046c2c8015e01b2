"""What the offline model builders share: a byte-level tokenizer with the real Qwen special
tokens, a reduced Qwen3.5 chat template, and an atomic, race-safe build cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

# The Qwen3.5 special tokens, in the order of their ids in the released tokenizer
# (<|endoftext|> = 248044 ... <|audio_pad|> = 248076 in Qwen/Qwen3.5-*).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
]

# A reduced Qwen3.5 template: system/user/assistant turns, image parts rendered as
# <|vision_start|><|image_pad|><|vision_end|>, and the empty think block Qwen3.5 emits when
# thinking is disabled.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n"
    "{% else %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_byte_tokenizer(special_tokens: list[str], first_special_id: int | None = None):
    """A byte-level BPE tokenizer (256 byte symbols, no merges) plus `special_tokens`.

    With `first_special_id`, filler pieces pad the base vocabulary so that the special tokens
    get the ids of a real tokenizer. Each filler is a distinct three-byte piece, as a real BPE
    vocabulary holds merged pieces: encoding never produces one (there are no merges), but a
    model that samples one decodes to ordinary bytes, digits included.
    """
    # start-up time: a heavy library, loaded when this runs
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    symbols = list(bytes_to_unicode().values())
    vocab = {ch: i for i, ch in enumerate(symbols)}
    if first_special_id is not None:
        for i in range(len(vocab), first_special_id):
            a, b, c = i // 65536, (i // 256) % 256, i % 256
            vocab[symbols[a] + symbols[b] + symbols[c]] = i
    tokenizer = Qwen3_5Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens[1:]})
    tokenizer.add_tokens(
        [t for t in special_tokens if t not in tokenizer.get_vocab()], special_tokens=True
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    if first_special_id is not None:
        got = tokenizer.convert_tokens_to_ids(special_tokens[0])
        if got != first_special_id:
            raise RuntimeError(f"{special_tokens[0]} got id {got}, expected {first_special_id}")
    return tokenizer


def default_cache_dir() -> Path:
    return Path(os.environ.get("ART_CACHE_DIR", Path.home() / ".cache" / "art"))


def cache_key(builder_version: int) -> str:
    # start-up time: a heavy library, loaded when this runs
    import transformers

    payload = json.dumps({"v": builder_version, "transformers": transformers.__version__})
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def ensure_built(
    name: str, builder_version: int, build: Callable[[Path], dict], cache_dir: Path | None = None
) -> Path:
    """Path of the cached model `name`, building it with `build(folder)` first if absent
    (into a temporary folder renamed into place: atomic, safe to race)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{name}-{cache_key(builder_version)}"
    marker = target / "art_model.json"
    if marker.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building %s into %s (once)", name, target)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".building-"))
    try:
        info = build(tmp)
        (tmp / "art_model.json").write_text(json.dumps(info, indent=2))
        logger.info("%s: %s", name, info)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep theirs
            if not marker.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
