"""The user's documents point at things that exist and say what the product does.

Every relative link and every cited repository path in README.md, docs/ and
client/ (its README and the SDK's own texts) must exist in the checkout: a
reader who follows one must find it. `make help` names every environment
variable the serving tools read.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "client").rglob("*.md")]
)
CLIENT_SOURCES = sorted((REPO / "client").rglob("*.py"))
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# A repository path as the texts cite it: starts at a top-level folder or file.
TOP_LEVEL = (
    "docs/",
    "scripts/",
    "tests/",
    "client/",
    "model_repository/",
    "docker/",
    "requirements/",
    ".ci/",
    "README.md",
    "Makefile",
    "shared/",  # the team's files beside the checkout: a user does not have them
)
CITED_RE = re.compile(
    r"(?<![\w./-])((?:" + "|".join(re.escape(t) for t in TOP_LEVEL) + r")[\w./-]*)"
)
PLACEHOLDER = re.compile(r"[<>{}*$]|\.\.\.")


def _relative_links(text: str) -> list[str]:
    links = []
    for target in LINK_RE.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        links.append(target.split("#", 1)[0])
    return [link for link in links if link]


def _cited_paths(text: str) -> list[str]:
    cited = []
    for match in CITED_RE.finditer(text):
        path = match.group(1).rstrip(".,:;")
        end = match.end(1)
        if PLACEHOLDER.search(text[end : end + 1]) or PLACEHOLDER.search(path):
            continue  # a pattern (docs/*.md, .cache/<name>), not one path
        cited.append(path)
    return cited


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = [t for t in _relative_links(text) if not (doc.parent / t).exists()]
    assert not missing, f"{doc.relative_to(REPO)} links to what does not exist: {missing}"


@pytest.mark.parametrize(
    "source", DOCUMENTS + CLIENT_SOURCES, ids=lambda p: str(p.relative_to(REPO))
)
def test_cited_paths_exist(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    missing = sorted({p for p in _cited_paths(text) if not (REPO / p).exists()})
    assert not missing, f"{source.relative_to(REPO)} cites paths that do not exist: {missing}"


def test_the_checkers_find_what_they_look_for() -> None:
    """The two extractors are not vacuous: they see links and paths in these forms."""
    text = "See [the guide](docs/client.md#errors), [web](https://x.org), `scripts/setup.sh`."
    assert _relative_links(text) == ["docs/client.md"]
    assert _cited_paths(text) == ["docs/client.md", "scripts/setup.sh"]
    assert _cited_paths("`docs/*.md` and `tests/data/<name>.png`") == []
    assert sum(len(_relative_links(d.read_text())) for d in DOCUMENTS) > 10


def test_make_help_names_every_serving_variable() -> None:
    used = set()
    for path in (REPO / "scripts" / "ofa_ve_ops").glob("*.py"):
        used.update(re.findall(r"\bOFA_VE_[A-Z_]+\b", path.read_text()))
    assert {"OFA_VE_MODEL_DIR", "OFA_VE_HTTP_PORT"} <= used
    shown = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert not sorted(v for v in used if v not in shown), "make help leaves variables out"
    assert "OFA_VE_URL" in shown and "MODELSCOPE_ENDPOINT" in shown
