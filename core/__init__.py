"""Ground floor of repliq: data types, text utilities, configuration, stores and model cache.

Nothing here imports from retriever/, ranker/, rl/ or dialog/.
"""

__version__ = "0.1.0"
