"""minillm: a Jupyter-first LLM inference engine, built to be read.

`import minillm` stays light: it imports no GPU, plotting or server library.
"""

from minillm.config import EngineConfig, ModelConfig, SamplingParams

__version__ = "0.1.0"

__all__ = ["EngineConfig", "ModelConfig", "SamplingParams", "__version__"]
