"""The project's measuring machinery (`tools/` in the source tree) for `plan --check` and `leaks`, found lazily."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import HelpersError

# Why tools/ is not in the package: the GPU check, plan checks and leak cycles measure the project itself; a
# notebook user never calls them, so the wheel (`pip install .`, the setup cell's install) holds only `helpers`.
# The two subcommands that run them stay in helpers/cli and import them here, on first use: from a source checkout
# (run from its root, or `pip install -e .` of it, whose helpers/ sits beside tools/) they work as before; from a
# wheel they say where to get them. The checkout beside this package wins over any other `tools` on the path.
CHECKOUT = Path(__file__).resolve().parents[2]
REPOSITORY = "https://github.com/opt-notebooks/opt-notebooks"


def project_tool(name: str, command: str) -> ModuleType:
    """`tools.<name>` from the source checkout this package belongs to, or a HelpersError naming `command`."""
    if "tools" not in sys.modules:
        init = CHECKOUT / "tools" / "__init__.py"
        if not init.is_file():
            raise HelpersError(
                f"`{command}` is one of the project's measuring runs, kept in tools/ of its source tree, which "
                f"this installation does not include. Clone {REPOSITORY} and run it from there "
                "(python -m helpers ... in the clone's folder).")
        spec = importlib.util.spec_from_file_location("tools", init, submodule_search_locations=[str(init.parent)])
        package = importlib.util.module_from_spec(spec)
        sys.modules["tools"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"tools.{name}")
