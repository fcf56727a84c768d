"""The documentation holds together: a short README for the people who open the notebooks, and no link in
README.md or docs/ that leads nowhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"(?ms)^```.*?^```", "", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _broken(page: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # code blocks hold commands, not links
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading for #{anchor})")
    return broken


def test_the_readme_stays_short():
    """The front door: what it is, the notebooks, the two commands, On Colab, the playground and the command line
    in brief (gpt-fast's README is 7 KB, vLLM's 9 KB); the rest belongs in docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 15 * 1024, f"README.md is {size} bytes: move what maintainers need into a docs/ page"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_leads_to_a_file(page):
    assert not _broken(page), f"{page.relative_to(ROOT)} links to what is not there: {_broken(page)}"


def test_every_docs_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert not {name for name in pages if f"]({name})" not in index}, "list every docs page in docs/README.md"
    assert "](docs/README.md)" in (ROOT / "README.md").read_text()


def test_the_link_checker_finds_a_broken_link(tmp_path):
    (tmp_path / "there.md").write_text("# A heading, with punctuation!\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-punctuation) [gone](missing.md) [bad anchor](there.md#nope)\n"
                    "![figure](img.png) [web](https://example.com)\n```\n[not a link](inside-code.md)\n```\n")
    assert _broken(page) == ["missing.md (no such file)", "there.md#nope (no heading for #nope)",
                             "img.png (no such file)"]
