"""Copy the browser libraries the docs site ships into docs/assets/javascripts/, so the built
site loads nothing from a CDN.

    npm ci && python scripts/docs_assets.py        # CI runs both before `mkdocs build`

The libraries come from npm, pinned in package.json / package-lock.json; the copies are
git-ignored. `mkdocs build` runs the same copy through scripts/docs_hooks.py, so a fresh
`npm ci` is all a local build needs.

Why each one, and how mkdocs-material is kept from fetching it (read in its bundle,
`material/templates/assets/javascripts/bundle.*.min.js`, and `material/plugins/offline`):

- mermaid.min.js: the bundle draws ```mermaid blocks with mermaid.js and fetches
  `https://unpkg.com/mermaid@11/dist/mermaid.min.js` only when `typeof mermaid ==
  "undefined"`. overrides/main.html loads this copy before the bundle on pages that have a
  diagram, so `mermaid` is defined and the fetch never happens.
- iframe-worker.js: the offline plugin runs search in an iframe when the site is opened from
  file:// and appends `https://unpkg.com/iframe-worker/shim` to `extra.polyfills` unless an
  entry there already names "iframe-worker"; mkdocs.yml names this copy.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
TARGET = ROOT / "docs" / "assets" / "javascripts"

# file under docs/assets/javascripts/ -> its source under node_modules/
ASSETS = {
    "mermaid.min.js": "mermaid/dist/mermaid.min.js",
    "iframe-worker.js": "iframe-worker/shim/index.js",
}


def copy_assets(node_modules: Path = NODE_MODULES, target: Path = TARGET) -> list[str]:
    """Copy every asset whose source exists and differs from the copy (an unchanged file is
    left alone, so `mkdocs serve` does not rebuild in a loop). Returns the assets that are
    still missing in `target` (empty when all are there)."""
    target.mkdir(parents=True, exist_ok=True)
    for name, source in ASSETS.items():
        src, dst = node_modules / source, target / name
        if src.is_file() and not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
            shutil.copyfile(src, dst)
    return [name for name in ASSETS if not (target / name).is_file()]


def main() -> int:
    missing = copy_assets()
    if missing:
        print(f"missing in node_modules: {', '.join(missing)}; run `npm ci` at the repo root",
              file=sys.stderr)
        return 1
    for name in ASSETS:
        print(f"{TARGET.relative_to(ROOT) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
