"""The docs site: generated tables and plots, the module map against the real imports, and the
built site opened in headless Chromium (home page, a notebook page, diagram pages).

The browser test builds the site with `mkdocs build --strict` into a temp dir, serves it on
127.0.0.1 and loads pages with every other host unresolvable, so a diagram that renders proves
mermaid came with the site. It skips without Chromium or without `npm ci`'s node_modules,
except in CI (env CI set), where either is a failure: .ci/run installs both.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_assets  # noqa: E402
import docs_loc  # noqa: E402
import docs_plots  # noqa: E402
import docs_screenshots  # noqa: E402

CHROMIUM = docs_screenshots.find_chromium()


# ---- generated tables and plots ----

def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


@pytest.fixture
def fake_results(tmp_path: Path) -> Path:
    """A results dir with one file of each kind the plots know, and two odd ones."""
    d = tmp_path / "results"
    d.mkdir()
    _write(d / "bench_offline_cpu_abc1234.json", {
        "engine": "minillm", "device": "cpu (x86_64, 2 cores)", "model": "SmolLM2-135M",
        "command": "minillm bench offline --peer transformers", "commit": "abc1234",
        "output_tokens_per_s": 120.5, "peer_engine": "transformers.generate (padded batches)",
        "peer_output_tokens_per_s": 40.2})
    _write(d / "bench_offline_h100_def5678.json", {
        "engine": "minillm", "device": "NVIDIA H100 80GB HBM3", "command": "minillm bench "
        "offline --num-requests 256", "commit": "def5678", "output_tokens_per_s": 9000.0})
    _write(d / "gpu_check_x.json", {
        "command": "python scripts/gpu_check.py", "device": "NVIDIA H200", "commit": "1111111",
        "throughput": {"model": "Qwen3-0.6B architecture, random weights",
                       "output_tokens_per_s": 1000.0, "attention_backend": "torch"}})
    serve = {"engine": "minillm", "device": "cpu", "model": "demo", "commit": "2222222",
             "command": "minillm bench serve", "output_throughput": 89.5, "num_requests": 32}
    for i, stat in enumerate(docs_plots.STATS):
        for j, lat in enumerate(docs_plots.LATENCIES):
            serve[f"{stat}_{lat}_ms"] = 100.0 * (i + 1) * (j + 1)
    _write(d / "serve_demo_cpu.json", serve)
    _write(d / "kernel_bench_x.json", {
        "command": "scripts/kernel_bench.py", "device": "NVIDIA H200", "commit": "unknown",
        "decode": {"batch 8": {"triton_ms": 1.0, "torch_ms": 3.0, "speedup": 3.0}},
        "prefill": {"4 x 1024": {"speedup": 20.0}}})
    _write(d / "tp_check.json", {"command": "python scripts/tp_gpu_check.py", "commit": "3333",
                                 "devices": ["NVIDIA H200", "NVIDIA H200"],
                                 "qwen3-float32": "4/4 requests with equal greedy tokens"})
    _write(d / "broken.json", "{not json")
    _write(d / "a_list.json", [1, 2, 3])
    return d


def test_plots_from_fake_results(fake_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "png"
    written = docs_plots.make_plots(fake_results, out)
    assert sorted(p.name for p in written) == sorted(docs_plots.PLOTS)
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    # Deterministic: the same results draw the same bytes (committed PNGs diff only on change).
    first = {p.name: p.read_bytes() for p in written}
    docs_plots.make_plots(fake_results, out)
    assert {p.name: p.read_bytes() for p in written} == first

    # A plot with nothing left to draw is removed, the others stay.
    for name in ("serve_demo_cpu.json", "kernel_bench_x.json"):
        (fake_results / name).unlink()
    written = docs_plots.make_plots(fake_results, out)
    assert [p.name for p in written] == ["throughput.png"]
    assert sorted(p.name for p in out.iterdir()) == ["throughput.png"]
    md = docs_plots.plots_markdown(out, prefix="assets/benchmarks/")
    assert "(assets/benchmarks/throughput.png)" in md and "serve_latency" not in md


def test_plots_with_no_results(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    assert docs_plots.make_plots(tmp_path / "results", tmp_path / "png") == []
    assert "No results" in docs_plots.results_table(tmp_path / "results")
    assert "No plots" in docs_plots.plots_markdown(tmp_path / "png")


def test_results_table_lists_every_file(fake_results: Path) -> None:
    table = docs_plots.results_table(fake_results)
    lines = table.splitlines()
    assert len(lines) == 2 + len(list(fake_results.glob("*.json")))
    assert "`minillm bench offline --peer transformers`" in table
    assert "120 output tok/s vs transformers.generate 40.2" in table
    assert "median TTFT" in table and "2x NVIDIA H200" in table
    assert "unreadable JSON" in table and "`abc1234`" in table
    speed = docs_plots.speed_table(fake_results)
    assert "9,000" in speed and "transformers.generate: 40.2 tok/s" in speed
    assert "serve" not in speed  # the serve result has no offline throughput


def test_loc_counts_code_lines(tmp_path: Path) -> None:
    pkg = tmp_path / "minillm"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "config.py").write_text('"""Doc\nstring."""\n\n# comment\nx = 1\n\n\ndef f():\n'
                                   '    """Doc."""\n    return x  # trailing\n')
    (pkg / "layers" / "__init__.py").write_text("y = [\n    1,\n]\n")
    (pkg / "cli.py").write_text("z = 2\n")
    counts = docs_loc.count(pkg)
    assert counts["engine core"] == (1, 10, 3)
    assert counts["model: layers, models, attention"] == (1, 3, 3)
    assert counts["total"] == (3, 14, 7)
    assert "**total**" in docs_loc.markdown_table(pkg)


def test_copy_assets(tmp_path: Path) -> None:
    nm, target = tmp_path / "node_modules", tmp_path / "js"
    assert sorted(docs_assets.copy_assets(nm, target)) == sorted(docs_assets.ASSETS)
    for source in docs_assets.ASSETS.values():
        (nm / source).parent.mkdir(parents=True, exist_ok=True)
        (nm / source).write_text("// " + source)
    assert docs_assets.copy_assets(nm, target) == []
    assert (target / "mermaid.min.js").read_text() == "// mermaid/dist/mermaid.min.js"


# ---- the module map says what the imports do ----

def _imports() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(top-level, all) imports between minillm's top-level modules, e.g. ("runner", "models");
    "pkg" is the package itself. Top-level: made at import time, outside TYPE_CHECKING."""
    top_edges, all_edges = set(), set()
    pkg_dir = ROOT / "minillm"
    for path in pkg_dir.rglob("*.py"):
        rel = path.relative_to(pkg_dir).with_suffix("").parts
        src = "pkg" if rel == ("__init__",) else rel[0]
        package = ["minillm", *rel[:-1]]  # what a relative import is relative to
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                     and "TYPE_CHECKING" in ast.unparse(stmt.test) for n in ast.walk(stmt)}
        top = {id(stmt) for stmt in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                targets = [".".join(base + ([node.module] if node.module else []))]
                if targets[0] == "minillm":
                    targets = [f"minillm.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if parts[0] != "minillm":
                    continue
                dst = parts[1] if len(parts) > 1 else "pkg"
                if dst == src:
                    continue
                all_edges.add((src, dst))
                if id(node) in top and id(node) not in type_only:
                    top_edges.add((src, dst))
    return top_edges, all_edges


def _diagram_edges(page: Path) -> list[tuple[str, str, bool]]:
    """(from, to, dashed) for every arrow of every mermaid flowchart on `page`."""
    edges = []
    for block in re.findall(r"```mermaid\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.splitlines():
            m = re.fullmatch(r"\s*(\w+)\s+(-\.->|-\.\s.*?\s\.->|-->|--\s.*?\s-->)\s+(\w+)\s*",
                             line)
            if m:
                edges.append((m.group(1), m.group(3), "." in m.group(2)))
    return edges


def test_module_map_matches_imports() -> None:
    page = ROOT / "docs" / "architecture" / "modules.md"
    edges = _diagram_edges(page)
    assert len(edges) > 30, "the module map's arrows were not parsed"
    top, every = _imports()
    modules = {p.stem if p.is_file() else p.name for p in (ROOT / "minillm").iterdir()
               if p.suffix == ".py" or (p / "__init__.py").exists()} | {"pkg"}
    for src, dst, dashed in edges:
        assert src in modules and dst in modules, f"{src} --> {dst}: no such module"
        where = every if dashed else top
        assert (src, dst) in where, (
            f"docs/architecture/modules.md draws {src} {'-.->' if dashed else '-->'} {dst}, "
            f"but minillm.{src} has no {'' if dashed else 'import-time '}import of minillm.{dst}")


def test_imports_flow_one_way() -> None:
    """The import-time imports between top-level modules form no cycle (the page says so)."""
    top, _ = _imports()
    graph: dict[str, set[str]] = {}
    for a, b in top:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [node, nxt])}"
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_api_reference_covers_every_public_module() -> None:
    """Every committed module of minillm appears in docs/api.md (directly or via its package's
    submodules listed there)."""
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: (minillm[\w.]*)", api, flags=re.M))
    tracked = subprocess.run(["git", "ls-files", "minillm"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    missing = []
    for f in tracked:
        if not f.endswith(".py") or f.endswith("__main__.py"):
            continue
        mod = f.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        if any(part.startswith("_") for part in mod.split(".")[1:]):
            continue
        # a module is covered by its own entry, or by its package's entry when the package
        # re-exports it (kvcache, layers, ...): the top-level module must be listed itself
        top = ".".join(mod.split(".")[:2])
        if mod not in documented and top not in documented:
            missing.append(mod)
    assert not missing, f"docs/api.md lacks `::: {missing[0]}` (and {len(missing) - 1} more)"


# ---- the built site in a browser ----

# Served to the browser only, never part of the site: mermaid draws into a *closed* shadow root
# (mkdocs-material's bundle), which --dump-dom cannot see; with this the SVG lands in the DOM.
SHADOW_SHIM = b"<script>Element.prototype.attachShadow = function () { return this; };</script>"


def _skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; in CI (env CI set) the browser test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must have it: .ci/run installs it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site_url():
    if CHROMIUM is None:
        _skip_or_fail("chromium is not installed (apt-get install chromium)")
    missing = docs_assets.copy_assets()
    if missing:
        _skip_or_fail(f"{', '.join(missing)} missing: run `npm ci` at the repo root")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        docs_screenshots.build_site(site)
        with docs_screenshots.serve(site, inject=SHADOW_SHIM) as url:
            yield url, Path(tmp)


def dump_dom(url: str, tmp: Path, budget_ms: int = 10000) -> tuple[str, list[str]]:
    """The page's DOM after scripts ran, and the URLs it requested (from a net log). A
    JavaScript error on the page (a mermaid parse error, say) fails the test."""
    profile = Path(tempfile.mkdtemp(dir=tmp))
    net_log = profile / "net.json"
    proc = subprocess.run([*docs_screenshots.chromium_args(CHROMIUM, profile),
                           f"--log-net-log={net_log}",
                           "--enable-logging=stderr", "--v=0",
                           f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines()
              if ":CONSOLE:" in line and re.search(r"Uncaught|Error", line)]
    assert not errors, f"{url}: " + "\n".join(errors)[:3000]
    urls = re.findall(r'"url":"([^"]+)"', net_log.read_text()) if net_log.exists() else []
    return proc.stdout, urls


# Where a page could fetch code or fonts from. (Chromium's own background requests to
# google.com also show in the net log; they are not the page's and are left out.)
CDN = re.compile(r"https?://[^/]*(unpkg\.com|jsdelivr|cdnjs|fonts\.googleapis|fonts\.gstatic"
                 r"|esm\.sh|cdn\.)")


def _external(urls: list[str]) -> list[str]:
    """The CDN requests among `urls`."""
    return sorted({u for u in urls if CDN.match(u)})


def test_home_page_renders(site_url) -> None:
    url, tmp = site_url
    dom, urls = dump_dom(url + "/index.html", tmp)
    assert "<h1" in dom and "Reading path" in dom
    assert "notebooks/03_block_manager.html" in dom  # stage links are live
    assert 'class="md-footer__link md-footer__link--next"' in dom  # next / previous footer
    assert _external(urls) == []


def test_notebook_page_renders(site_url) -> None:
    url, tmp = site_url
    dom, urls = dump_dom(url + "/notebooks/03_block_manager.html", tmp)
    assert "jp-Notebook" in dom and "BlockManager" in dom
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom), "no figure rendered"
    assert "md-footer__link--prev" in dom and "md-footer__link--next" in dom
    assert _external(urls) == []


def test_diagram_pages_render_offline(site_url) -> None:
    url, tmp = site_url
    for page, kinds in [("architecture/state.html", ["class", "class"]),
                        ("architecture/request.html", ["sequence", "sequence"]),
                        ("architecture/kv-blocks.html", ["stateDiagram", "flowchart"]),
                        ("architecture/modules.html", ["flowchart", "flowchart"])]:
        dom, urls = dump_dom(f"{url}/{page}", tmp)
        assert '<pre class="mermaid">' not in dom, f"{page}: a mermaid block was not drawn"
        svgs = re.findall(r'<div class="mermaid"><svg[^>]*aria-roledescription="([^"]+)"', dom)
        assert len(svgs) == len(kinds), f"{page}: {len(svgs)} diagrams drawn: {svgs}"
        for kind in kinds:
            assert any(kind.lower() in s.lower() for s in svgs), f"{page}: no {kind} in {svgs}"
        assert "Syntax error" not in dom, f"{page}: mermaid reported a syntax error"
        assert "mermaid.min.js" in " ".join(urls)  # the site's copy, from 127.0.0.1
        assert _external(urls) == [], f"{page} requested {_external(urls)}"
