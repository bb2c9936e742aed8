"""`minillm.notebook`: the errors name what is missing and say how to fix it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from minillm.notebook import install_hint, is_installed, need, require


def test_require_passes_for_installed_packages():
    require()
    require("json", "torch", "minillm.config")


def test_require_names_the_missing_package_and_the_extra():
    with pytest.raises(ImportError) as err:
        require("json", "matplotlib_not_a_real_package")
    msg = str(err.value)
    assert "matplotlib_not_a_real_package" in msg
    assert "json" not in msg.split(":")[0]  # only the missing one is named
    assert "pip install matplotlib_not_a_real_package" in msg
    assert err.value.name == "matplotlib_not_a_real_package"
    assert isinstance(err.value, ModuleNotFoundError)


def test_require_says_which_extra(monkeypatch):
    monkeypatch.setattr("minillm.notebook.is_installed", lambda p: p not in {"zmq", "httpx"})
    with pytest.raises(ModuleNotFoundError) as err:
        require("matplotlib", "zmq", "httpx", "openai")
    msg = str(err.value)
    assert msg.startswith("this notebook needs zmq, httpx,")
    assert 'pip install "minillm[server]" (then restart the kernel)' in msg  # the extra once


def test_install_hints():
    assert install_hint("matplotlib") == '"minillm[notebooks]"'
    assert install_hint("matplotlib.pyplot") == '"minillm[notebooks]"'
    assert install_hint("zmq") == '"minillm[server]"'
    assert install_hint("openai") == "openai"
    assert install_hint("somepkg") == "somepkg"


def test_is_installed():
    assert is_installed("json") and is_installed("torch.nn")
    assert not is_installed("no_such_pkg") and not is_installed("no_such_pkg.sub")


def test_a_blocked_import_counts_as_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # how tests hide a package
    with pytest.raises(ModuleNotFoundError, match=r'pip install "minillm\[notebooks\]"'):
        require("matplotlib")


def test_is_installed_does_not_import():
    code = ("import sys; from minillm.notebook import is_installed; "
            "assert is_installed('matplotlib'); assert 'matplotlib' not in sys.modules; "
            "assert not is_installed('no_such_pkg.sub')")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_need_passes_when_defined():
    runner = object()
    need(locals(), "runner")
    need({"a": 1, "b": None}, "a", "b")


def test_need_names_what_to_run():
    with pytest.raises(NameError) as err:
        need({"runner": 1}, "runner", "scheduler", "llm")
    msg = str(err.value)
    assert msg.startswith("`scheduler`, `llm` are not defined yet: run the cells above first")
    assert err.value.name == "scheduler"
    with pytest.raises(NameError, match="^`llm` is not defined yet"):
        need({}, "llm")


def test_importing_stays_light():
    code = ("import sys, minillm.notebook; "
            "heavy = {'torch', 'matplotlib', 'transformers'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
