"""What a notebook's setup cell installs: the requirements this runtime lacks, never a change to what it has."""

# The setup cell runs this file before `helpers` can be imported (`runpy.run_path`, or `python -I` as a
# script), on whatever Python the runtime has: it needs only the standard library (pip, for installing, is
# called as a program). `packaging` is not in a bare Python, so the little of PEP 440 (versions, specifiers)
# and PEP 508 (requirement lines, markers) that a requirements file uses is written out below.
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import operator
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

GPU_ONLY = {"bitsandbytes"}  # useless without a CUDA GPU: installed only on a GPU runtime

# ------------------------------------------------------------------------------ PEP 440 versions, specifiers

_VERSION = re.compile(r"""^\s*v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)
    (?:[-_.]?(?P<pre_l>alpha|beta|preview|pre|rc|a|b|c)[-_.]?(?P<pre_n>\d+)?)?
    (?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?
    (?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?\s*$""", re.VERBOSE | re.IGNORECASE)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}


@dataclass(frozen=True)
class Version:
    """A PEP 440 version, ordered as `packaging.version.Version` orders them."""

    epoch: int
    release: tuple[int, ...]
    pre: tuple[int, int] | None
    post: int | None
    dev: int | None
    local: tuple[int | str, ...] | None

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.match(text)
        if match is None:
            raise ValueError(f"'{text}' is not a PEP 440 version")
        g = match.groupdict()
        post = g["post_n1"] or g["post_n2"] or ("0" if g["post_l"] else None)
        local = tuple(int(p) if p.isdigit() else p.lower() for p in re.split(r"[-_.]", g["local"])) if g["local"] else None
        return cls(int(g["epoch"] or 0), tuple(int(p) for p in g["release"].split(".")),
                   (_PRE_RANK[g["pre_l"].lower()], int(g["pre_n"] or 0)) if g["pre_l"] else None,
                   None if post is None else int(post), int(g["dev_n"] or 0) if g["dev_l"] else None, local)

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None

    def public(self) -> Version:
        return Version(self.epoch, self.release, self.pre, self.post, self.dev, None)

    def base(self) -> Version:
        return Version(self.epoch, self.release, None, None, None, None)

    def key(self) -> tuple:
        release = list(self.release)
        while len(release) > 1 and release[-1] == 0:
            release.pop()
        pre = (-1,) if self.pre is None and self.post is None and self.dev is not None else (3,) if self.pre is None \
            else self.pre
        local = () if self.local is None else tuple((1, p, "") if isinstance(p, int) else (0, 0, p) for p in self.local)
        return (self.epoch, tuple(release), pre, (-1,) if self.post is None else (0, self.post),
                (1,) if self.dev is None else (0, self.dev), local)

    def __lt__(self, other: Version) -> bool:
        return self.key() < other.key()


def _same(a: Version, b: Version) -> bool:
    return a.key() == b.key()


def _prefix_match(candidate: Version, prefix: str) -> bool:
    """`== 1.2.*`: the candidate's release (padded with zeros) starts with the prefix's."""
    wanted = Version.parse(prefix)
    release = candidate.release + (0,) * max(0, len(wanted.release) - len(candidate.release))
    return candidate.epoch == wanted.epoch and release[: len(wanted.release)] == wanted.release


def _matches(op: str, spec: str, candidate: Version) -> bool:
    """One clause of a specifier, as `packaging.specifiers.Specifier.contains(prereleases=True)` decides it."""
    if op in ("==", "!=") and spec.endswith(".*"):
        return _prefix_match(candidate.public(), spec[:-2]) == (op == "==")
    if op == "~=":
        prefix = ".".join(spec.split("+")[0].split(".")[:-1]) if len(Version.parse(spec).release) > 1 else spec
        return _matches(">=", spec, candidate) and _matches("==", prefix + ".*", candidate)
    wanted = Version.parse(spec)
    if op in ("==", "!="):
        equal = _same(candidate if wanted.local is not None else candidate.public(), wanted)
        return equal == (op == "==")
    public = candidate.public()
    if op == ">=":
        return not public < wanted
    if op == "<=":
        return not wanted < public
    if op == "<":  # not a pre-release of the version named, unless that is one
        return public < wanted and (wanted.is_prerelease or not candidate.is_prerelease
                                    or not _same(candidate.base(), wanted.base()))
    if op == ">":  # not a post-release (or a local version) of the version named
        unposted = Version(candidate.epoch, candidate.release, candidate.pre, None, None, None)
        return wanted < public and (wanted.post is not None or candidate.post is None or not _same(unposted, wanted))
    raise ValueError(f"unknown version operator {op!r}")


_CLAUSE = re.compile(r"^\s*(===|==|!=|~=|<=|>=|<|>)\s*([^\s,;]+)\s*$")


class SpecifierSet:
    """Comma-separated version clauses (`>=7.7,<9`); `contains` as packaging's `SpecifierSet.contains`."""

    def __init__(self, text: str):
        self.clauses = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            match = _CLAUSE.match(part)
            if match is None:
                raise ValueError(f"'{part}' is not a version specifier such as '>=1.0'")
            self.clauses.append((match[1], match[2]))

    def contains(self, version: str, prereleases: bool | None = None) -> bool:
        """Whether `version` is in the range; a pre-release counts unless `prereleases` is False (packaging >= 26)."""
        try:
            candidate = Version.parse(version)
        except ValueError:
            return False
        if candidate.is_prerelease and prereleases is False:
            return False
        return all(version.strip().lower() == spec.lower() if op == "===" else _matches(op, spec, candidate)
                   for op, spec in self.clauses)

    def __str__(self) -> str:
        return ",".join(f"{op}{spec}" for op, spec in sorted(self.clauses, key=str))


# ------------------------------------------------------------------------------ PEP 508 markers, requirements

_MARKER_TOKEN = re.compile(r"""\s*(\(|\)|'[^']*'|"[^"]*"|===|==|!=|~=|<=|>=|<|>|not\s+in\b|in\b|and\b|or\b|[A-Za-z_][\w.]*)""")
_STRING_OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge, "in": lambda a, b: a in b, "not in": lambda a, b: a not in b}


def marker_environment() -> dict[str, str]:
    """PEP 508's variables for this Python and platform."""
    info = sys.implementation.version
    implementation = f"{info.major}.{info.minor}.{info.micro}" + (
        f"{info.releaselevel[0]}{info.serial}" if info.releaselevel != "final" else "")
    return {"os_name": os.name, "sys_platform": sys.platform, "platform_machine": platform.machine(),
            "platform_python_implementation": platform.python_implementation(), "platform_release": platform.release(),
            "platform_system": platform.system(), "platform_version": platform.version(),
            "python_version": ".".join(platform.python_version_tuple()[:2]), "python_full_version": platform.python_version(),
            "implementation_name": sys.implementation.name, "implementation_version": implementation, "extra": ""}


class Marker:
    """An environment marker (`platform_system == "Linux" and python_version < "3.12"`)."""

    def __init__(self, text: str):
        self.text = text.strip()
        tokens, end = [], 0
        for match in _MARKER_TOKEN.finditer(self.text):
            if match.start() != end:
                break
            tokens.append(re.sub(r"\s+", " ", match[1]))
            end = match.end()
        if end != len(self.text.rstrip()):
            raise ValueError(f"'{self.text}' is not an environment marker")
        self.tokens = tokens

    def evaluate(self, environment: dict[str, str] | None = None) -> bool:
        tokens, env = list(self.tokens), {**marker_environment(), **(environment or {})}
        result = self._either(tokens, env)
        if tokens:
            raise ValueError(f"'{self.text}' is not an environment marker")
        return result

    def _either(self, tokens: list[str], env: dict[str, str]) -> bool:
        result = self._both(tokens, env)
        while tokens[:1] == ["or"]:
            tokens.pop(0)
            result = self._both(tokens, env) or result
        return result

    def _both(self, tokens: list[str], env: dict[str, str]) -> bool:
        result = self._one(tokens, env)
        while tokens[:1] == ["and"]:
            tokens.pop(0)
            result = self._one(tokens, env) and result
        return result

    def _one(self, tokens: list[str], env: dict[str, str]) -> bool:
        if tokens[:1] == ["("]:
            tokens.pop(0)
            result = self._either(tokens, env)
            if tokens[:1] != [")"]:
                raise ValueError(f"'{self.text}': a parenthesis is not closed")
            tokens.pop(0)
            return result
        if len(tokens) < 3:
            raise ValueError(f"'{self.text}' is not an environment marker")
        left, op, right = (self._value(tokens.pop(0), env), tokens.pop(0), self._value(tokens.pop(0), env))
        if op in ("==", "!=", "<", "<=", ">", ">=", "~=", "==="):
            try:
                return SpecifierSet(f"{op}{right}").contains(left, prereleases=True) if Version.parse(right) else False
            except ValueError:
                pass
        if op not in _STRING_OPS:
            raise ValueError(f"'{self.text}': {op} compares versions only")
        return _STRING_OPS[op](left, right)

    def _value(self, token: str, env: dict[str, str]) -> str:
        if token[:1] in "'\"":
            return token[1:-1]
        if token not in env:
            raise ValueError(f"'{self.text}': unknown marker variable {token!r}")
        return env[token]

    def __str__(self) -> str:
        return self.text


_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[(?P<extras>[^\]]*)\])?"
                          r"\s*\(?(?P<specifier>[^;()]*)\)?\s*(?:;(?P<marker>.*))?$")


class Requirement:
    """One PEP 508 requirement line without a URL: `name[extras] specifier; marker`."""

    def __init__(self, line: str):
        match = _REQUIREMENT.match(line)
        if match is None or "@" in line.split(";")[0]:
            raise ValueError(f"'{line}' is not a requirement this installer reads (name, version range, marker)")
        self.name = match["name"]
        self.extras = sorted(e.strip() for e in (match["extras"] or "").split(",") if e.strip())
        self.specifier = SpecifierSet(match["specifier"])
        self.marker = Marker(match["marker"]) if match["marker"] and match["marker"].strip() else None

    def __str__(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}{self.specifier}" + (f"; {self.marker}" if self.marker is not None else "")


def canonicalize_name(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Step:
    """One distribution pip's dry run would install, and the version this runtime already has (if any)."""

    name: str
    version: str
    installed: str | None
    source: str  # what to hand pip: `name==version`, or the local folder it came from


def read_requirements(path: str | Path) -> list[Requirement]:
    """The requirements (or constraints) in a pip requirements file: one a line, `#` starts a comment."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(Requirement(line))
    return out


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_cuda_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def lacking(requirements: list[Requirement], gpu: bool) -> tuple[list[Requirement], list[tuple[Requirement, str]]]:
    """Split what this runtime does not satisfy into what is missing and what it has at another version
    (kept as it is). Requirements whose markers exclude this platform, and GPU-only ones without a GPU,
    are left out."""
    missing, other = [], []
    for req in requirements:
        if req.marker is not None and not req.marker.evaluate():
            continue
        if canonicalize_name(req.name) in GPU_ONLY and not gpu:
            continue
        version = installed_version(req.name)
        if version is None:
            missing.append(req)
        elif not req.specifier.contains(version, prereleases=True):
            other.append((req, version))
    return missing, other


def pip_plan(targets: list[str], pip_options: list[str] = ()) -> list[Step]:
    """What `pip install TARGETS` would install here: pip's own resolution (`--dry-run --report`)."""
    if importlib.util.find_spec("pip") is None:
        raise RuntimeError(f"This Python ({sys.executable}) has no pip, which installs {' '.join(targets)}: run "
                           "`python -m ensurepip --upgrade` (or install your system's python3-pip), then run this again.")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *pip_options, *targets]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not work out how to install {' '.join(targets)} here:\n{done.stderr.strip()}")
    steps = []
    for item in json.loads(done.stdout)["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        url = item["download_info"]["url"]
        local = "dir_info" in item["download_info"] and url.startswith("file://")
        steps.append(Step(name, version, installed_version(name), url[len("file://"):] if local else f"{name}=={version}"))
    return steps


def _same_version(a: str, b: str) -> bool:
    try:
        return _same(Version.parse(a), Version.parse(b))
    except ValueError:
        return a == b


def install(requirements: str | Path, package: str | Path | None = None, gpu: bool | None = None,
            dry_run: bool = False, pip_options: list[str] = (), say=print) -> list[Step]:
    """Install what `requirements` (and the project folder `package`, if given) need that this runtime
    lacks, exactly as pip's dry run planned it (`--no-deps`); refuse if that plan would replace anything
    already installed. Returns the plan."""
    gpu = has_cuda_gpu() if gpu is None else gpu
    missing, other = lacking(read_requirements(requirements), gpu)
    for req, version in other:
        say(f"Keeping {req.name} {version} as this runtime has it ({Path(requirements).name} asks for {req}).")
    targets = [str(req) for req in missing] + ([str(package)] if package is not None else [])
    planned = pip_plan(targets, pip_options) if targets else []
    same = [s for s in planned if s.installed is not None and _same_version(s.installed, s.version)]
    steps = [s for s in planned if s not in same]  # pip reinstalls a local folder even at the version it has
    changes = [s for s in steps if s.installed is not None]
    if changes:
        listed = ", ".join(f"{s.name} {s.installed} -> {s.version}" for s in changes)
        raise RuntimeError(
            f"Installing {' '.join(targets)} would replace what this runtime already has ({listed}); changing a "
            "preinstalled package under a running kernel breaks it, so nothing was installed. On Colab: "
            "Runtime > Disconnect and delete runtime, then run this cell again on the fresh runtime.")
    if not steps:
        kept = f" ({', '.join(f'{s.name} {s.installed}' for s in same)} included; nothing would change)" if same else ""
        say(f"Everything the notebooks need is installed already{kept}.")
        return steps
    listed = ", ".join(f"{s.name} {s.version}" for s in steps)
    if dry_run:
        say(f"Would install {listed}; nothing already installed would change.")
        return steps
    say(f"Installing {listed} (nothing already installed changes) ...")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *pip_options, *(s.source for s in steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed to install {listed}:\n{done.stderr.strip()}")
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("requirements", help="a pip requirements file (the repository's requirements.txt)")
    parser.add_argument("--package", help="the project folder, installed too (without its dependencies' changes)")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="install GPU-only packages too")
    gpu.add_argument("--no-gpu", dest="gpu", action="store_false", help="leave GPU-only packages out")
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed, install nothing")
    args = parser.parse_args(argv)
    try:
        install(args.requirements, args.package, args.gpu, args.dry_run)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
