"""Screenshots of the docs site in headless Chromium: the home page, a notebook page and a
diagram page, into docs/assets/screenshots/*.png (committed).

    npm ci && python scripts/docs_screenshots.py            # builds the site into a temp dir
    python scripts/docs_screenshots.py --site site/          # or uses a built one

The site is served on 127.0.0.1 and every other host is unresolvable for the browser, so the
pictures show what a reader without network sees. tests/test_docs_site.py opens the same
pages the same way (`serve`, `chromium_args`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "assets" / "screenshots"

# screenshot name -> page of the built site
PAGES = {
    "home.png": "index.html",
    "notebook.png": "notebooks/03_block_manager.html",
    "diagram.png": "architecture/request.html",
}
WINDOW = (1280, 900)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(chromium: str, profile: Path) -> list[str]:
    """Headless, with no first-run or background traffic, and every host but 127.0.0.1
    unresolvable: a page that needs a CDN shows it."""
    return [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


def build_site(site: Path) -> None:
    """`mkdocs build --strict` into `site` (the hook copies the npm assets first)."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"mkdocs build --strict failed:\n{proc.stderr[-3000:]}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    inject = b""  # bytes put right after <head> of every HTML page (tests use it)

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if not self.inject or path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = path.read_bytes().replace(b"<head>", b"<head>" + self.inject, 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


@contextlib.contextmanager
def serve(site: Path, inject: bytes = b"") -> Iterator[str]:
    """Serve `site` on a free port of 127.0.0.1 in a thread; yields the base URL."""
    handler = functools.partial(type("Handler", (_Handler,), {"inject": inject}),
                                directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def screenshot(chromium: str, url: str, path: Path, profile: Path) -> None:
    w, h = WINDOW
    proc = subprocess.run([*chromium_args(chromium, profile), f"--window-size={w},{h}",
                           "--virtual-time-budget=10000", f"--screenshot={path}", url],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode or not path.is_file():
        raise RuntimeError(f"chromium could not screenshot {url}:\n{proc.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, help="a built site (default: build one)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print("chromium is not installed: apt-get install chromium", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site
        if site is None:
            site = Path(tmp) / "site"
            build_site(site)
        with serve(site) as url:
            for name, page in PAGES.items():
                screenshot(chromium, f"{url}/{page}", args.out / name,
                           Path(tempfile.mkdtemp(dir=tmp)))
                print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
