"""Regenerate the gRPC stubs for every .proto in this directory (`make proto`, `python -m secmesh.proto.generate`).

Stubs are generated with grpcio-tools pinned in pyproject's `dev` extra, so regeneration is
byte-identical; imports are rewritten to be package-relative so that our protos never land in
the global import namespace under a bare name (see pitfall P1 in shared/notes).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from grpc_tools import protoc
import grpc_tools

PROTO_DIR = Path(__file__).resolve().parent


def main(out_dir: Path = PROTO_DIR) -> int:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        print("no .proto files", file=sys.stderr)
        return 0
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", f"--pyi_out={out_dir}", *map(str, protos)]
    if protoc.main(args) != 0:
        return 1
    # make `import foo_pb2` in *_pb2_grpc.py package-relative
    for grpc_file in out_dir.glob("*_pb2_grpc.py"):
        text = grpc_file.read_text()
        fixed = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", text, flags=re.M)
        grpc_file.write_text(fixed)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR))
