"""Print the floors that pyproject.toml declares, pinned: ``name[extras]==floor``.

The floors step of ``.ci/run`` installs exactly these (through
``.ci/floors.txt``, compiled by ``./scripts/lock``), so a floor that
pyproject claims is a floor that CI ran.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# The direct dependencies whose floors are tested: the package's own and
# each optional backend's. Test tools stay at their locked versions.
TESTED = ("aiohttp", "aiohttp-sse", "redis", "asyncpg", "prometheus-client", "uvloop")


def main() -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    floors: dict[str, str] = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        if match and match[1].lower() in TESTED:
            floors[match[1].lower()] = f"{match[1]}{match[2] or ''}=={match[3]}"
    missing = sorted(set(TESTED) - floors.keys())
    if missing:
        print(f"no `>=` floor in pyproject.toml for: {', '.join(missing)}", file=sys.stderr)
        return 1
    print("\n".join(floors[name] for name in TESTED))
    return 0


if __name__ == "__main__":
    sys.exit(main())
