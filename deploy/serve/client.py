"""Ask a stock OpenAI-compatible server (e.g. `vllm serve`) a question with an ART image.

    python deploy/serve/client.py --png outputs/<run>/art.png --question "..." \
        --model Qwen/Qwen3.5-0.8B --base-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from shared.serving import art_messages  # noqa: E402


def ask(
    base_url: str,
    model: str,
    png: str | Path | None,
    question: str,
    max_tokens: int = 512,
    presence_penalty: float = 1.0,
    timeout_s: float = 300,
) -> str:
    """One greedy chat completion with the PNG first in the user turn (as in training) and the
    paper's evaluation settings (presence penalty 1.0, thinking off); `png=None` asks text-only."""
    if png is None:
        messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    else:
        messages = art_messages(png, question, expected_model=model)
    body = {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "presence_penalty": presence_penalty,
        "chat_template_kwargs": {"enable_thinking": False},
    }
    request = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", required=True)
    parser.add_argument("--question", required=True)
    parser.add_argument("--model", default="Qwen/Qwen3.5-0.8B")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--presence-penalty", type=float, default=1.0)
    args = parser.parse_args()
    print(
        ask(
            args.base_url, args.model, args.png, args.question, args.max_tokens,
            args.presence_penalty,
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
