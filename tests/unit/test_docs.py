"""The user's documents point at things that exist and say what the product does.

Every relative link and every cited repository path in README.md, docs/ and
client/ (its README and the SDK's own texts) must exist in the checkout: a
reader who follows one must find it. The environment variables have one table
(scripts/ofa_ve_ops/environment.py): every variable the tools read is in it, and
README.md, `make help` and `serve --help` show it as it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ofa_ve_ops import environment

REPO = Path(__file__).resolve().parents[2]
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


def _readme_environment_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- environment table:[^>]*-->\n(.*?)\n<!-- end of", text, re.S)
    assert match, "README.md has lost its generated environment table"
    return match.group(1)


def test_every_variable_read_is_in_the_one_table() -> None:
    """What the serving tools, the model and the CLI read is in environment.VARIABLES,
    and the table lists nothing that nothing reads."""
    sources = [
        *(REPO / "scripts" / "ofa_ve_ops").glob("*.py"),
        REPO / "model_repository" / "ofa_visual_entailment" / "1" / "model.py",
        *(REPO / "client" / "ofa_ve_client").glob("*.py"),
    ]
    used = set()
    for path in sources:
        if path.name != "environment.py":
            used.update(
                re.findall(r"\b(?:OFA_VE_[A-Z_]+[A-Z]|MODELSCOPE_ENDPOINT)\b", path.read_text())
            )
    listed = {v.name for v in environment.VARIABLES}
    assert {"OFA_VE_MODEL_DIR", "OFA_VE_HTTP_PORT", "OFA_VE_URL"} <= used
    assert not sorted(used - listed), "read but not in scripts/ofa_ve_ops/environment.py"
    assert not sorted(listed - used), "in the table but read nowhere"


def test_readme_make_help_and_serve_help_show_the_one_table() -> None:
    """README's table is the generated one, and `make help` and `serve --help` print
    the table's text: a variable added, renamed or redescribed in one place only fails."""
    assert _readme_environment_table() == environment.markdown_table(), (
        "README.md's environment table differs from scripts/ofa_ve_ops/environment.py: "
        "paste `python3 scripts/ofa_ve_ops/environment.py --markdown`"
    )
    shown = {
        "make help": ["make", "--no-print-directory", "-s", "help"],
        "serve --help": [sys.executable, "-m", "ofa_ve_ops.serve", "--help"],
    }
    env = {**os.environ, "COLUMNS": "100"}
    for what, command in shown.items():
        out = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=60, check=True, env=env
        ).stdout
        assert environment.help_text() in out, f"{what} does not print the one table"
    header = (REPO / "Makefile").read_text().split("\n\n", 1)[0]
    assert not [v.name for v in environment.VARIABLES if v.name in header], (
        "the Makefile's header lists variables itself again"
    )
