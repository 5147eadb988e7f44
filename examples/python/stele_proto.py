"""What every Stele example shares: stubs generated from the proto at run time,
the key -> partition function, and Stele's error details decoded from a status.

The stubs are generated from ../../proto/stele/v1/stele.proto (or from the
directory in STELE_PROTO_DIR) by grpcio-tools into a temporary directory, so
nothing generated is committed and the examples always match the proto.
See docs/producer-protocol.md for the protocol these examples follow.
"""

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

PROTO_DIR = os.environ.get(
    "STELE_PROTO_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"),
)


def _generate():
    out = tempfile.mkdtemp(prefix="stele-stubs-")
    atexit.register(shutil.rmtree, out, True)
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            PROTO_DIR,
            "--python_out=" + out,
            "--grpc_python_out=" + out,
            os.path.join(PROTO_DIR, "stele", "v1", "stele.proto"),
        ]
    )
    sys.path.insert(0, out)


_generate()

import grpc  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from stele.v1 import stele_pb2 as pb  # noqa: E402
from stele.v1 import stele_pb2_grpc as rpc  # noqa: E402

__all__ = ["grpc", "pb", "rpc", "connect", "partition_for_key", "error_of", "detail_fields", "emit", "arguments"]


def arguments(description):
    """The command line every example takes: the server and the topic."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", default="127.0.0.1:7077", help="the server's HOST:PORT (default %(default)s)")
    parser.add_argument("--topic", default="orders", help="the topic (default %(default)s)")
    return parser


def connect(target):
    """A stub on an insecure channel to `target`, once the channel is ready."""
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    return rpc.SteleStub(channel)


def emit(kind, **fields):
    """Prints one JSON line: what the example did, for people and for tests."""
    print(json.dumps({"kind": kind, **fields}, sort_keys=True), flush=True)


def partition_for_key(key, partitions):
    """The partition of `key` (bytes): FNV-1a 64 of the key bytes modulo the
    partition count, exactly as the server routes it."""
    hash_value = 0xCBF29CE484222325
    for byte in key:
        hash_value ^= byte
        hash_value = (hash_value * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return hash_value % partitions


def detail_fields(detail):
    """A stele.v1.ErrorDetail as a dict: the code by number and by name, and
    the fields the server set (optional fields only when present)."""
    name = pb.ErrorCode.Name(detail.code) if detail.code in pb.ErrorCode.values() else str(detail.code)
    fields = {"code": detail.code, "reason": name.removeprefix("ERROR_CODE_"), "message": detail.message}
    for field in (
        "actual_sequence",
        "expected_producer_sequence",
        "current_epoch",
        "earliest_offset",
        "high_watermark",
        "original_partition",
        "original_offset",
        "original_sequence",
    ):
        if detail.HasField(field):
            fields[field] = getattr(detail, field)
    if detail.limit_name:
        fields.update(limit_name=detail.limit_name, limit_value=detail.limit_value, limit_max=detail.limit_max)
    return fields


def error_of(error):
    """Stele's error from a failed call (a grpc.RpcError): the gRPC code, and
    the stele.v1.ErrorDetail and google.rpc.ErrorInfo packed in the
    google.rpc.Status of the `grpc-status-details-bin` trailer, with the
    `stele-error-code` text trailer. A failure that never reached Stele (a
    lost connection) has no detail: its `code` is 0."""
    found = {"grpc_code": error.code().name, "code": 0, "reason": "", "message": error.details() or ""}
    status = rpc_status.from_call(error)
    for any_detail in status.details if status is not None else ():
        if any_detail.Is(pb.ErrorDetail.DESCRIPTOR):
            detail = pb.ErrorDetail()
            any_detail.Unpack(detail)
            found.update(detail_fields(detail))
        elif any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
            found["error_info"] = {"reason": info.reason, "domain": info.domain, "code": info.metadata.get("code")}
    for key, value in error.trailing_metadata() or ():
        if key == "stele-error-code":
            found["trailer"] = value
    return found
