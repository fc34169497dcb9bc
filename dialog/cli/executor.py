"""`--executor`, `--ray-address` and `--actors`: the same three flags on every batch job that can run on Ray."""

from __future__ import annotations

import argparse

from core.executor import EXECUTORS, ExecutorConfig


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    defaults = ExecutorConfig()
    group = parser.add_argument_group("executor", "where the model step runs (README: Running batch jobs on Ray)")
    group.add_argument("--executor", choices=EXECUTORS, default=defaults.kind,
                       help="local: this process (default; on one machine Ray's overhead rarely pays); "
                       "ray: a pool of Ray Data actors, each holding the model once")
    group.add_argument("--ray-address", default=defaults.ray_address,
                       help="Ray cluster to join (e.g. auto, ray://head:10001); default: a private local Ray")
    group.add_argument("--actors", type=int, default=defaults.actors,
                       help=f"Ray actors, one CPU and one model copy each (default {defaults.actors})")


def executor_config(args: argparse.Namespace) -> ExecutorConfig:
    config = ExecutorConfig(kind=args.executor, ray_address=args.ray_address, actors=args.actors)
    config.validate()
    return config
