"""The setup cell's installer: pip's own dry run decides, only what is missing is installed, nothing installed changes."""

import base64
import hashlib
import sys
import types
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import environment
from helpers.install import install, lacking

REPO = Path(__file__).resolve().parents[1]


def write_wheel(folder: Path, name: str, ver: str, requires: list[str] = ()) -> Path:
    """A minimal pure-Python wheel (one module), so pip can resolve and install it without an index."""
    module = name.replace("-", "_")
    info = f"{module}-{ver}.dist-info"
    files = {
        f"{module}/__init__.py": b"",
        f"{info}/METADATA": "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {ver}",
                                       *(f"Requires-Dist: {r}" for r in requires)]).encode() + b"\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for path, data in files.items()]
    path = folder / f"{module}-{ver}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name_in_wheel, data in files.items():
            wheel.writestr(name_in_wheel, data)
        wheel.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return path


@pytest.fixture
def index(tmp_path):
    """A local 'index' (a folder of wheels): one package that needs only what is installed, one that
    needs an older `packaging` than the one installed (and that older one)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "optfake-new", "1.0", ["packaging>=1"])
    write_wheel(wheels, "optfake-breaker", "1.0", ["packaging<1"])
    write_wheel(wheels, "packaging", "0.5")
    return ["--no-index", "--find-links", str(wheels)]


def requirements_file(tmp_path, *lines) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n" + "\n".join(lines) + "\n")
    return path


def test_lacking_tells_missing_from_present_at_another_version():
    reqs = [Requirement(r) for r in ["packaging>=1", "packaging>=9999", "optfake-absent>=1",
                                     'pytest>=1; python_version < "3"', "bitsandbytes>=9999"]]
    missing, other = lacking(reqs, gpu=False)
    assert [str(r) for r in missing] == ["optfake-absent>=1"]
    assert [(str(r), v) for r, v in other] == [("packaging>=9999", version("packaging"))]  # kept, not replaced
    _, other = lacking(reqs, gpu=True)  # bitsandbytes only counts on a GPU runtime
    assert "bitsandbytes>=9999" in [str(r) for r, _ in other]


def test_only_what_is_missing_is_planned_and_installed(tmp_path, index):
    reqs = requirements_file(tmp_path, "optfake-new>=1", "packaging>=1  # satisfied: left alone")
    said = []
    plan = install(reqs, gpu=False, dry_run=True, pip_options=index, say=said.append)
    assert [(s.name, s.version, s.installed) for s in plan] == [("optfake-new", "1.0", None)]
    assert said == ["Would install optfake-new 1.0; nothing already installed would change."]

    prefix = tmp_path / "prefix"  # the real install, into a prefix of its own so this environment is untouched
    plan = install(reqs, gpu=False, pip_options=[*index, "--prefix", str(prefix)], say=said.append)
    assert [s.source for s in plan] == ["optfake-new==1.0"]
    assert list(prefix.glob("lib/python*/site-packages/optfake_new/__init__.py"))
    assert not list(prefix.glob("lib/python*/site-packages/packaging*"))  # --no-deps: exactly the plan


def test_a_plan_that_would_replace_an_installed_package_installs_nothing(tmp_path, index):
    reqs = requirements_file(tmp_path, "optfake-breaker>=1")
    prefix = tmp_path / "prefix"
    with pytest.raises(RuntimeError, match=rf"packaging {version('packaging')} -> .*nothing was installed"):
        install(reqs, gpu=False, pip_options=[*index, "--prefix", str(prefix)], say=lambda _: None)
    assert not prefix.exists()


def test_an_unresolvable_requirement_says_what_pip_said(tmp_path, index):
    reqs = requirements_file(tmp_path, "optfake-absent>=1")
    with pytest.raises(RuntimeError, match=r"pip could not work out how to install optfake-absent>=1"):
        install(reqs, gpu=False, dry_run=True, pip_options=index, say=lambda _: None)


def test_this_environment_needs_nothing_from_the_requirements():
    """Both test environments (the main one, and `.venv-colab` with Colab's versions) already hold
    everything requirements.txt asks for, bitsandbytes included, so the setup cell would install nothing."""
    said = []
    assert install(REPO / "requirements.txt", gpu=True, dry_run=True, say=said.append) == []
    assert said == ["Everything the notebooks need is installed already."]


@pytest.mark.parametrize("ipywidgets_version, enabled", [("7.7.1", False), ("8.1.9", True)])
def test_colabs_widget_manager_only_with_ipywidgets_8(monkeypatch, ipywidgets_version, enabled):
    import ipywidgets

    calls = []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append("enabled"))
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    monkeypatch.setattr(ipywidgets, "__version__", ipywidgets_version)
    assert environment.enable_colab_widgets() is enabled
    assert calls == (["enabled"] if enabled else [])


def test_outside_colab_the_widget_manager_is_left_alone(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert environment.enable_colab_widgets() is False


VERSIONS = ["0.9", "1.0", "1.0.0", "1.0.post1", "1.0rc1", "1.0.dev0", "1.0a2.dev3", "1.0+local.7", "1.0.1",
            "1!0.5", "1.1", "2.0", "2.5.1+cu121", "5.15.0", "5.15.0.dev0", "7.7.1", "8.1.9", "9.0", "0.45.0"]
SPECIFIERS = ["", ">=1.0", ">1.0", "<1.0", "<=1.0", "==1.0", "!=1.0", "==1.0.*", "!=1.*", "~=1.0", "~=1.0.0",
              ">=7.7,<9", ">=5.15,<6", "==1.0+local.7", ">1.0rc1", "<2.0.dev0", "===1.0", ">=1.0a1", ">=0.45"]


@pytest.mark.parametrize("specifier", SPECIFIERS)
def test_the_installers_specifiers_agree_with_packaging(specifier):
    """The installer reads version ranges without `packaging` (a bare Python lacks it): same answers."""
    from packaging.specifiers import SpecifierSet

    from helpers import install as installer

    ours, theirs = installer.SpecifierSet(specifier), SpecifierSet(specifier)
    for candidate in VERSIONS:
        for prereleases in (True, False):
            assert ours.contains(candidate, prereleases=prereleases) == \
                theirs.contains(candidate, prereleases=prereleases), (candidate, prereleases)


MARKERS = ['platform_system == "Linux"', 'platform_system == "Windows"', 'python_version < "3"',
           'python_version >= "3.10" and sys_platform != "win32"', '(os_name == "nt" or os_name == "posix") and extra == ""',
           '"linux" in sys_platform', 'platform_machine not in "arm64 aarch64"', 'python_full_version ~= "3.11.0"',
           "implementation_name == 'cpython' or python_version > '3.12'"]


@pytest.mark.parametrize("marker", MARKERS)
def test_the_installers_markers_agree_with_packaging(marker):
    from packaging.markers import Marker

    from helpers import install as installer

    assert installer.Marker(marker).evaluate() == Marker(marker).evaluate()


@pytest.mark.parametrize("line", ["numpy>=1.26", "bitsandbytes>=0.45; platform_system == \"Linux\"",
                                  "ipywidgets>=7.7,<9", "Jupyter_Server[test,docs] (>=2)", "torch"])
def test_the_installers_requirement_lines_agree_with_packaging(line):
    from helpers import install as installer

    ours, theirs = installer.Requirement(line), Requirement(line)
    assert (ours.name, ours.extras, str(ours.specifier)) == (theirs.name, sorted(theirs.extras), str(theirs.specifier))
    assert (ours.marker is None) == (theirs.marker is None)
    assert installer.canonicalize_name(ours.name) == installer.canonicalize_name(theirs.name.upper())
