#!/usr/bin/env bash
# TLS interoperability with a client nobody on the project wrote: Python stubs
# generated from proto/stele/v1/stele.proto by grpcio-tools (from PyPI) talk to
# `target/debug/stele serve` over TLS, with certificates made by openssl.
#
# Checks, each printed on its own line, then "python-tls: N passed, N failed":
#   - the server runs with --auth required and a bootstrap token from
#     `stele token generate`; every call sends it as gRPC access-token call
#     credentials (`authorization: Bearer ...`), and a call without it is
#     UNAUTHENTICATED with `stele-error-code: 28`;
#   - a secure channel trusting the CA creates a topic, appends and reads back;
#   - with --tls-client-auth optional, a client certificate of the client CA is
#     accepted and one of another CA is refused; a plaintext channel is refused;
#   - after the certificate is replaced by one of a new CA and the server gets
#     SIGHUP, a client trusting the new CA connects and one trusting the old
#     CA does not, while the channel opened before the reload keeps working.
# The virtual environment is kept under target/python-venv (reused when its
# package list matches). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
venv="$target/python-venv"
packages="grpcio grpcio-tools"
binary="$target/debug/stele"

if [ "$(cat "$venv/.ready" 2>/dev/null || true)" != "$packages" ]; then
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $packages
    echo "$packages" >"$venv/.ready"
fi
if [ ! -x "$binary" ]; then
    cargo build -p stele --bin stele
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A CA, a server certificate for localhost and 127.0.0.1 signed by it, a
# client certificate of the same CA, one of a stranger CA, and a second
# server CA and certificate for the reload.
authority() { # NAME
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=$1" -keyout "$work/$1.key" -out "$work/$1.pem" 2>/dev/null
}
issue() { # CA NAME EXTENSIONS
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$2" -keyout "$work/$2.key" -out "$work/$2.csr" 2>/dev/null
    printf '%s\n' "$3" >"$work/$2.ext"
    openssl x509 -req -in "$work/$2.csr" -CA "$work/$1.pem" -CAkey "$work/$1.key" -CAcreateserial \
        -days 2 -extfile "$work/$2.ext" -out "$work/$2.pem" 2>/dev/null
}
server_ext='subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth'
client_ext='extendedKeyUsage=clientAuth'
authority ca
authority stranger-ca
authority new-ca
issue ca server "$server_ext"
issue new-ca new-server "$server_ext"
issue ca client "$client_ext"
issue stranger-ca stranger "$client_ext"
cp "$work/server.pem" "$work/tls.pem"
cp "$work/server.key" "$work/tls.key"

"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$work" --grpc_python_out="$work" \
    proto/stele/v1/stele.proto

"$venv/bin/python" - "$binary" "$work" <<'PYTHON'
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading

BINARY, WORK = sys.argv[1], sys.argv[2]
sys.path.insert(0, WORK)

import grpc  # noqa: E402
from stele.v1 import stele_pb2 as pb  # noqa: E402
from stele.v1 import stele_pb2_grpc as rpc  # noqa: E402

WAIT_SECONDS = 30
passed = 0
failed = 0


def check(name, condition, detail=""):
    global passed, failed
    if condition:
        passed += 1
        print(f"ok: {name}")
    else:
        failed += 1
        print(f"FAILED: {name} {detail}")


def read(name):
    with open(os.path.join(WORK, name), "rb") as file:
        return file.read()


environment = {name: value for name, value in os.environ.items() if not name.startswith("STELE_")}
environment.pop("RUST_LOG", None)
# --auth required with a bootstrap token made by the command: every call below
# sends it the standard way, as gRPC access-token call credentials.
TOKEN = subprocess.run(
    [BINARY, "token", "generate"], check=True, capture_output=True, text=True, env=environment
).stdout.strip()
with open(os.path.join(WORK, "admin.token"), "w") as token_file:
    token_file.write(TOKEN + "\n")
server = subprocess.Popen(
    [
        BINARY, "serve",
        "--data-dir", os.path.join(WORK, "data"),
        "--listen", "127.0.0.1:0",
        "--tls-cert", os.path.join(WORK, "tls.pem"),
        "--tls-key", os.path.join(WORK, "tls.key"),
        "--tls-client-ca", os.path.join(WORK, "ca.pem"),
        "--tls-client-auth", "optional",
        "--auth", "required",
        "--bootstrap-token-file", os.path.join(WORK, "admin.token"),
        "--audit-log", "off",
    ],
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    env=environment,
)
lines = queue.Queue()


def pump():
    for line in server.stderr:
        sys.stderr.write("server: " + line)
        lines.put(line.rstrip("\n"))


threading.Thread(target=pump, daemon=True).start()


def wait_for(prefix):
    while True:
        line = lines.get(timeout=WAIT_SECONDS)
        if line.startswith(prefix):
            return line


def channel(ca, identity=None, token=TOKEN):
    key, chain = (read(identity + ".key"), read(identity + ".pem")) if identity else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=key, certificate_chain=chain)
    if token is not None:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(target, credentials)


def refused(opened):
    try:
        rpc.SteleStub(opened).ListTopics(pb.ListTopicsRequest(), timeout=10)
        return False
    except grpc.RpcError as error:
        return error.code() == grpc.StatusCode.UNAVAILABLE


try:
    # "stele: listening on 127.0.0.1:PORT, data in DIR"
    listening = wait_for("stele: listening on ")
    address = listening[len("stele: listening on "):].split(",")[0]
    target = "localhost:" + address.rsplit(":", 1)[1]

    secure = channel("ca.pem")
    grpc.channel_ready_future(secure).result(timeout=WAIT_SECONDS)
    stub = rpc.SteleStub(secure)
    created = stub.CreateTopic(pb.CreateTopicRequest(topic="tls", settings=pb.TopicSettings(partitions=1)))
    check("create a topic over TLS", created.settings.partitions == 1, str(created))
    appended = stub.Append(
        pb.AppendRequest(topic="tls", key=b"order-1", events=[pb.Event(type="created", payload=b'{"total": 7}')])
    )
    read_back = stub.Read(
        pb.ReadRequest(topic="tls", partition=appended.result.partition, from_offset=appended.result.first_offset)
    )
    check(
        "the appended event reads back over TLS",
        [(event.key, event.type, event.payload) for event in read_back.events[:1]]
        == [(b"order-1", "created", b'{"total": 7}')],
        str(read_back),
    )

    try:
        rpc.SteleStub(channel("ca.pem", token=None)).ListTopics(pb.ListTopicsRequest(), timeout=10)
        check("a call without a token is refused", False)
    except grpc.RpcError as error:
        trailers = dict(error.trailing_metadata() or ())
        check(
            "a call without a token is UNAUTHENTICATED with the stable code 28",
            error.code() == grpc.StatusCode.UNAUTHENTICATED and trailers.get("stele-error-code") == "28",
            f"{error.code()} {trailers}",
        )

    with_certificate = rpc.SteleStub(channel("ca.pem", "client"))
    listed = with_certificate.ListTopics(pb.ListTopicsRequest(), timeout=10)
    check("a client certificate of the client CA is accepted", "tls" in str(listed), str(listed))
    check("a client certificate of another CA is refused", refused(channel("ca.pem", "stranger")))
    check("a plaintext channel is refused", refused(grpc.insecure_channel(target)))
    check("a channel trusting another CA is refused", refused(channel("new-ca.pem")))

    # Reload on SIGHUP: the new certificate for new connections, the open
    # channel keeps its connection.
    shutil.copy(os.path.join(WORK, "new-server.key"), os.path.join(WORK, "tls.key"))
    shutil.copy(os.path.join(WORK, "new-server.pem"), os.path.join(WORK, "tls.pem"))
    server.send_signal(signal.SIGHUP)
    reloaded = wait_for("stele: SIGHUP received")
    check("SIGHUP reloads the certificate", "reloaded" in reloaded, reloaded)
    check(
        "a channel trusting the new CA connects",
        len(rpc.SteleStub(channel("new-ca.pem")).ListTopics(pb.ListTopicsRequest(), timeout=10).topics) >= 1,
    )
    check("a new channel trusting the old CA is refused", refused(channel("ca.pem")))
    again = stub.Read(pb.ReadRequest(topic="tls", partition=appended.result.partition, from_offset=0), timeout=10)
    check("the channel opened before the reload keeps working", len(again.events) == 1, str(again))
finally:
    server.send_signal(signal.SIGTERM)
    try:
        code = server.wait(timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        code = server.wait()
check("the server stops cleanly", code == 0, f"exit code {code}")
print(f"python-tls: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PYTHON
