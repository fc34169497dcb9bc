"""CLI sub-commands; each module has ``register(subparsers)`` and handlers ``(args, settings) -> int``."""
