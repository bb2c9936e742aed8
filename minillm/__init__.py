"""minillm: a Jupyter-first LLM inference engine, built to be read.

`import minillm` stays light: the configuration is imported now, the engine (torch,
transformers) on first use of `minillm.LLM`, and no GPU, plotting or server library ever.
"""

from minillm.config import EngineConfig, ModelConfig, SamplingParams

__version__ = "0.1.0"

__all__ = ["LLM", "EngineConfig", "ModelConfig", "SamplingParams", "__version__"]


def __getattr__(name: str):
    if name == "LLM":
        from minillm.llm import LLM

        return LLM
    raise AttributeError(f"module 'minillm' has no attribute {name!r}")
