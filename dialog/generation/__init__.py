"""Generated candidate replies: sampling from the decoder LM under the request deadline, then filtering."""

from dialog.generation.filters import FilterConfig, FilterResult, ReplyFilter
from dialog.generation.generator import GenerationConfig, LMGenerator

__all__ = ["FilterConfig", "FilterResult", "GenerationConfig", "LMGenerator", "ReplyFilter"]
