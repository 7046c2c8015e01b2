"""Answer extraction: the paper's strict math scoring (the default) and a lenient extractor.

The paper's functions (`paper_*`, below) define the default strict score and shaped reward of
GSM8K and SVAMP. The lenient extractor (`extract_number`, behind
`task.options.scoring=lenient`) accepts what models really write beyond that format:

Numbers: commas and thin spaces as thousands separators, `$`, `%`, trailing periods, signs,
decimals, simple fractions, markdown emphasis, `\\boxed{}`, GSM8K's `####`. Several candidate
answers: the last explicit one counts. `<think>...</think>` is stripped first.
"""

from __future__ import annotations

import math
import re
import unicodedata

from shared.tasks.base import strip_thinking

# A number: thousands-grouped (1,234,567.5 / 1 234), plain (-12.5), leading-dot (.5), fraction.
_NUM = r"[-−]?\s?\$?\s?(?:\d{1,3}(?:[,\u202f\u2009 ]\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:\s?/\s?\d+)?"
NUMBER_RE = re.compile(_NUM)
# Explicit answer markers, each followed by the answer text.
_EXPLICIT_NUM_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)?\s*[:=]?\s*\**\s*(?P<num>" + _NUM + r")"
    r"|####\s*(?P<hash>" + _NUM + r")",
    re.IGNORECASE,
)
_BOXED_RE = re.compile(r"\\boxed\s*\{")


def parse_number(text: str) -> float | None:
    """'$1,234.50' -> 1234.5, '-3/4' -> -0.75, '1 000' -> 1000.0; None if not a number."""
    s = text.strip().replace("−", "-").replace("$", "").replace("\u202f", "").replace("\u2009", "")
    s = s.rstrip(".").rstrip("%").strip()
    s = re.sub(r"(?<=\d)[, ](?=\d{3}\b)", "", s)
    s = s.replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(position, content) of every \\boxed{...}, with nested braces balanced."""
    out = []
    for match in _BOXED_RE.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((match.start(), text[match.end() : i - 1]))
    return out


def extract_number(completion: str) -> tuple[float | None, bool]:
    """(value, explicit): the last explicit answer, else the last number in the text.

    `explicit` is True when the value came from `Answer: ...`, `The answer is ...`,
    `\\boxed{...}` or `#### ...`.
    """
    text = strip_thinking(completion).replace("**", "").replace("__", "")
    candidates: list[tuple[int, float]] = []
    for match in _EXPLICIT_NUM_RE.finditer(text):
        value = parse_number(match.group("num") or match.group("hash"))
        if value is not None:
            candidates.append((match.start(), value))
    for pos, content in _boxed_contents(text):
        content = re.sub(r"\\(?:text|mathrm)\{[^}]*\}|\\[,!;: ]|\\%|\\\$", "", content)
        frac = re.fullmatch(r"\s*(-?)\\d?frac\{(\d+)\}\{(\d+)\}\s*", content)
        value = parse_number(f"{frac[1]}{frac[2]}/{frac[3]}") if frac else parse_number(content)
        if value is not None:
            candidates.append((pos, value))
    if candidates:
        return max(candidates)[1], True
    numbers = [parse_number(m.group()) for m in NUMBER_RE.finditer(text)]
    numbers = [n for n in numbers if n is not None]
    return (numbers[-1] if numbers else None), False


def numbers_equal(a: float, b: float) -> bool:
    """Equal up to float noise: 22090603 != 22090610, 0.1 + 0.2 == 0.3."""
    return abs(a - b) <= max(1e-6, 1e-12 * abs(b))


def format_number(value: float) -> str:
    """Gold answers as the model is asked to write them: '51', '-3', '0.25'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# Marker words case-insensitive, the letter itself upper-case ("the answer is a bit..." is no A).
_CHOICE_RE = re.compile(
    r"(?i:correct\s+answer|final\s+answer|answer)\s*(?i:is|:)?\s*:?\s*\(?\s*(?P<letter>[A-D])\s*\)?(?![A-Za-z])"
)


def extract_choice(completion: str) -> tuple[str | None, bool]:
    """(letter, explicit) for multiple choice: the last explicit 'answer is (X)', else the last '(X)'."""
    text = strip_thinking(completion).replace("**", "")
    explicit = [(m.start(), m.group("letter")) for m in _CHOICE_RE.finditer(text)]
    for pos, content in _boxed_contents(text):
        letter = re.sub(r"\\text\{([^}]*)\}", r"\1", content).strip().strip("()").strip()
        if len(letter) == 1 and letter in "ABCD":
            explicit.append((pos, letter))
    if explicit:
        return max(explicit)[1], True
    loose = re.findall(r"\(([A-D])\)", text)
    return (loose[-1] if loose else None), False


# ---- The paper's math scoring (github.com/jinymusim/ART, src/reasoning_with_art/datasets/
# evaluation/exact_match.py and reward_shaping.py, BSD-3), reproduced exactly. ----------------

# The last case-insensitive `Answer:`, optional spaces, an optional `$`, then a number: an
# optional minus, digits with commas or spaces, an optional decimal part.
PAPER_ANSWER_RE = re.compile(r"(?i)Answer:\s*\$?\s*(-?[\d,\s]+(?:\.\d+)?)\s*\$?")
_LOOSE_NUMBER_RE = re.compile(r"-?\d[\d,\s]*(?:\.\d+)?")


def paper_extract(completion: str) -> str | None:
    """The paper's `extract_numeric(format="Answer:")`: the last match with commas and
    whitespace removed (possibly empty: `Answer: **18**` gives ''), or None without one."""
    matches = PAPER_ANSWER_RE.findall(completion)
    return re.sub(r"[,\s]", "", matches[-1]) if matches else None


def paper_normalize(answer: str) -> str:
    text = unicodedata.normalize("NFKD", answer.strip().lower().rstrip("."))
    text = re.sub(r"(\d)[,\s](\d)", r"\1\2", text)
    return " ".join(text.split())


def paper_numeric_equal(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-6
    except (ValueError, OverflowError):
        return False


def paper_exact_match(predicted: str, gold: str) -> bool:
    """The paper's `exact_match`: equal after normalization, or numerically within 1e-6."""
    pred, ref = paper_normalize(predicted), paper_normalize(gold)
    return pred == ref or paper_numeric_equal(pred, ref)


def paper_relative_error(predicted: str, gold: str) -> float | None:
    try:
        p, g = float(predicted), float(gold)
    except (ValueError, OverflowError):
        return None
    return abs(p - g) / max(abs(g), 1e-9)


def paper_numeric_reward(completion: str, gold: str) -> float:
    """The paper's `numeric_reward`: 1.0 correct; formatted but wrong: 0.4 within 1% relative
    error, 0.2 within 10%, else 0.1; no formatted answer: 0.01 if any number appears, else 0."""
    predicted = paper_extract(completion)
    if predicted is None:
        return 0.01 if _LOOSE_NUMBER_RE.search(completion) else 0.0
    if paper_exact_match(predicted, gold):
        return 1.0
    rel = paper_relative_error(predicted, gold)
    if rel is not None and rel <= 0.01:
        return 0.4
    if rel is not None and rel <= 0.10:
        return 0.2
    return 0.1
