"""The documentation: a strict MkDocs build, the samples of docs/ run as shown, links that resolve.

- `mkdocs build --strict` into a temporary folder: mkdocs.yml makes every nav and link check
  a warning, so a broken link or anchor, a nav entry without a page, or a page the nav omits
  fails the build.
- A fenced block whose previous line is `<!-- run -->` (an HTML comment: invisible on GitHub
  and on the site) is run. The ```python blocks of one page run in order as one script in a
  fresh interpreter with the repository on PYTHONPATH (a later block may use what an earlier
  one defined); then every `test_*` function the script defined is called (run on an event
  loop when it is async). A ```sh block runs with `bash -euo pipefail`, from the repository,
  with the interpreter's bin folder (the venv's `job-supervisor`) first on PATH.
- The synopsis of docs/cli.md names only commands and options that `job-supervisor` has.
- The relative links of README.md and ARCHITECTURE.md point at files (and headings) that exist,
  and the README's samples are those of docs/index.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARK = "<!-- run -->"
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<lang>[\w-]*)\s*$")
# The script appended to a page's python blocks: call what looks like a test, as pytest would.
CALL_TESTS = """
import asyncio as _asyncio, inspect as _inspect
for _name, _fn in list(globals().items()):
    if _name.startswith("test_") and callable(_fn):
        _value = _fn()
        if _inspect.iscoroutine(_value):
            _asyncio.run(_value)
"""


def _blocks(path: Path) -> list[tuple[str, str, int, bool]]:
    """Every fenced block of a Markdown file: (language, text, line, marked to run)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[tuple[str, str, int, bool]] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        marked = i > 0 and lines[i - 1].strip() == MARK
        indent, fence, start = len(m["indent"]), m["fence"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        found.append((m["lang"], "\n".join(body) + "\n", start + 1, marked))
        i += 1
    return found


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _run_blocks(lang: str) -> list[tuple[Path, list[tuple[str, int]]]]:
    """Pages with blocks of `lang` marked to run, and those blocks (text, line)."""
    out = []
    for page in _pages():
        blocks = [(text, line) for kind, text, line, marked in _blocks(page) if marked and kind == lang]
        if blocks:
            out.append((page, blocks))
    return out


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOB_SUPERVISOR_", "REDIS_URL"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["NO_MKDOCS_2_WARNING"] = "1"  # mkdocs-material's banner about its successor
    return env


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_mkdocs_build_is_strict_and_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    built = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in _pages():  # every page of docs/ became a page of the site
        rel = page.relative_to(DOCS).with_suffix("")
        want = "index.html" if rel.name == "index" else f"{rel.as_posix()}/index.html"
        assert want in built, f"{_rel(page)} was not built"


def test_some_samples_are_marked_to_run() -> None:
    """The runners below would pass on nothing: the docs keep runnable samples of both kinds."""
    assert _run_blocks("python"), f"no ```python block of docs/ follows a {MARK} line"
    assert _run_blocks("sh"), f"no ```sh block of docs/ follows a {MARK} line"


@pytest.mark.parametrize("page", [p for p, _ in _run_blocks("python")], ids=_rel)
def test_python_samples_run(page: Path, tmp_path: Path) -> None:
    blocks = dict(_run_blocks("python"))[page]
    script = "".join(f"# {_rel(page)}:{line}\n{text}" for text, line in blocks) + CALL_TESTS
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"the python samples of {_rel(page)} failed:\n{script}\n{proc.stderr}"


@pytest.mark.parametrize("page", [p for p, _ in _run_blocks("sh")], ids=_rel)
def test_shell_samples_run(page: Path) -> None:
    for text, line in dict(_run_blocks("sh"))[page]:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (f"{_rel(page)}:{line} failed (exit {proc.returncode}):\n{text}\n"
                                      f"{proc.stdout}\n{proc.stderr}")
        assert proc.stdout.strip(), f"{_rel(page)}:{line} printed nothing:\n{text}"


def _synopsis() -> list[tuple[list[str], set[str]]]:
    """The commands of docs/cli.md's synopsis: (command words, options named), alternatives expanded."""
    _lang, text, _line, _marked = next(b for b in _blocks(DOCS / "cli.md") if "job-supervisor run" in b[1])
    entries: list[tuple[str, str]] = []
    for raw in text.splitlines():
        if raw.startswith("job-supervisor "):
            words = []
            for word in raw.split()[1:]:
                if word.startswith("[") or word.startswith("-") or word.isupper():
                    break
                words.append(word)
            entries.append((" ".join(words), raw))
        elif raw.strip():  # a continuation line of the command above
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + raw)
    out = []
    for words, line in entries:
        options = set(re.findall(r"--[a-z][a-z-]*", line))
        head, _, last = words.rpartition(" ")
        for alt in last.split("|"):
            out.append(([*head.split(), alt] if head else [alt], options))
    return out


def test_cli_synopsis_matches_the_cli() -> None:
    commands = _synopsis()
    assert len(commands) >= 10, commands

    def help_of(words: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor", *words, "--help"], cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        top, *helps = pool.map(help_of, [[]] + [words for words, _ in commands])
    for (words, options), proc in zip(commands, helps, strict=True):
        assert proc.returncode == 0, f"`job-supervisor {' '.join(words)}` is not a command: {proc.stderr}"
        for option in options:
            assert re.search(rf"{option}\b", proc.stdout + top.stdout), (
                f"docs/cli.md names `job-supervisor {' '.join(words)} {option}`, which --help does not list")


def test_readme_samples_are_the_home_pages() -> None:
    """README.md (the landing page) and docs/index.md (the site's home) show the same samples,
    so the samples the home page runs are the README's."""
    home = {text for _lang, text, _line, _marked in _blocks(DOCS / "index.md")}
    for lang, text, line, _marked in _blocks(ROOT / "README.md"):
        assert text in home, f"README.md:{line}: this ```{lang} block is not in docs/index.md"


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub (and MkDocs' toc) make it for plain headings."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a `# comment` in a code block is no heading
    return {_slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", ["README.md", "ARCHITECTURE.md"])
def test_links_resolve(doc: str) -> None:
    path = ROOT / doc
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert local, f"{doc} links to nothing in the repository"
    for link in local:
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), f"{doc} links to {link}, which does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{doc} links to {link}: no such heading in {target or doc}"
