"""Generates the gRPC stubs from protos/ whenever the package is built or installed.

The stubs (package ``repliq.v1``) are never committed nor edited by hand: they are rebuilt from the
.proto files by grpcio-tools, so the wire contract has exactly one source of truth.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs() -> None:
    protos = sorted((ROOT / "protos").rglob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under protos/")
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}",
               f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}",
               *[str(p) for p in protos]]
    subprocess.run(command, check=True)
    for package_dir in {p.parent.relative_to(ROOT / "protos") for p in protos}:
        for level in range(1, len(package_dir.parts) + 1):
            init = ROOT.joinpath(*package_dir.parts[:level], "__init__.py")
            if not init.exists():
                init.write_text('"""Generated from protos/ at build time; do not edit."""\n')


class BuildWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


# Generated before setup() so that package discovery already sees the repliq.v1 package.
generate_stubs()
setup(cmdclass={"build_py": BuildWithStubs})
