"""Every relative link of the README and docs/ points at a file or folder of the repository
(the README's sections moved to docs/: a link left behind would send a reader nowhere), and
the README stays short enough to read on arrival."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "deploy/serve/README.md"]


def test_every_relative_link_resolves():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_the_readme_is_short_and_has_the_two_commands_on_its_first_screen():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    first_screen = "\n".join(lines[:40])
    assert "make train" in first_screen and "make test-all" in first_screen
    assert "![" in first_screen  # the picture of what a run does
