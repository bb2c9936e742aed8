"""mkdocs hooks (mkdocs.yml: `hooks:`): what the site takes from the code at build time.

- `on_config`: copy the pinned browser libraries (mermaid, the iframe-worker shim) from
  node_modules/ into docs/assets/javascripts/ (scripts/docs_assets.py). If they are missing
  (no `npm ci`), it warns, which fails `mkdocs build --strict`, and a plain build falls back to
  mkdocs-material's CDN.
- `on_page_markdown`: fill the markers that pages leave for generated tables:
  `<!-- docs:loc -->` (scripts/docs_loc.py), `<!-- docs:benchmark-results -->`,
  `<!-- docs:speed -->` and `<!-- docs:benchmark-plots -->` (scripts/docs_plots.py). The
  tables are made from the tree being built, so they never go stale; the plots are committed
  PNGs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docs_assets  # noqa: E402
import docs_loc  # noqa: E402
import docs_plots  # noqa: E402

log = logging.getLogger("mkdocs.hooks.docs")


def on_config(config):
    missing = docs_assets.copy_assets()
    config.extra["local_mermaid"] = "mermaid.min.js" not in missing
    if "iframe-worker.js" in missing:
        config.extra["polyfills"] = [p for p in config.extra.get("polyfills", [])
                                     if "iframe-worker.js" not in str(p)]
        config.extra["polyfills"].append("https://unpkg.com/iframe-worker/shim")
    if missing:
        log.warning("docs assets %s are missing from node_modules/: run `npm ci` at the repo "
                    "root; this build loads them from a CDN", ", ".join(missing))
    return config


def on_page_markdown(markdown, page, config, files):
    fills = {
        "<!-- docs:loc -->": docs_loc.markdown_table,
        "<!-- docs:benchmark-results -->": docs_plots.results_table,
        "<!-- docs:speed -->": docs_plots.speed_table,
        "<!-- docs:benchmark-plots -->": lambda: docs_plots.plots_markdown(
            prefix=_relative("assets/benchmarks/", page.file.src_uri)),
    }
    for marker, make in fills.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def _relative(target: str, src_uri: str) -> str:
    """`target` (relative to docs/) as seen from the page `src_uri`."""
    return "../" * src_uri.count("/") + target
