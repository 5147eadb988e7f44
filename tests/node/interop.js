// Drives a running Stele server from Node.js with @grpc/grpc-js, a client
// nobody on the project wrote, loading proto/stele/v1/stele.proto at run time.
// It checks the error model as grpc-js users meet it: status codes, the
// `stele-error-code` trailer and `grpc-status-details-bin` decoded as a
// google.rpc.Status carrying stele.v1.ErrorDetail and google.rpc.ErrorInfo.
// Usage: node interop.js PROTO_DIR HOST:PORT
// Prints one line per check and a closing "node interop: N passed, N failed".
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const [protoDir, target] = process.argv.slice(2);
const protoFile = path.join(protoDir, "stele", "v1", "stele.proto");

// The standard google.rpc messages, as published in googleapis
// (google/rpc/status.proto and error_details.proto), reduced to the fields read here.
const rpcTypes = protobuf.parse(`
syntax = "proto3";
package google.rpc;
message Any { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
message BadRequest {
  message FieldViolation { string field = 1; string description = 2; }
  repeated FieldViolation field_violations = 1;
}
`).root;
const Status = rpcTypes.lookupType("google.rpc.Status");
const ErrorInfo = rpcTypes.lookupType("google.rpc.ErrorInfo");
const BadRequest = rpcTypes.lookupType("google.rpc.BadRequest");
const steleTypes = protobuf.loadSync(protoFile);
const ErrorDetail = steleTypes.lookupType("stele.v1.ErrorDetail");
const ErrorCode = steleTypes.lookupEnum("stele.v1.ErrorCode").values;

const definition = protoLoader.loadSync(protoFile, { keepCase: true, longs: Number, enums: Number, defaults: true });
const stele = grpc.loadPackageDefinition(definition).stele.v1;
const client = new stele.Stele(target, grpc.credentials.createInsecure());

let passed = 0;
let failed = 0;
function check(name, condition, detail = "") {
  if (condition) {
    passed += 1;
    console.log(`ok   ${name}`);
  } else {
    failed += 1;
    console.log(`FAIL ${name} ${detail}`);
  }
}

// The details of a grpc-js error (protobufjs decodes field names to camelCase): the google.rpc.Status, our ErrorDetail and
// the standard ErrorInfo and BadRequest in it, and the code trailer.
function details(error) {
  const raw = error.metadata.get("grpc-status-details-bin")[0];
  const status = raw ? Status.decode(raw) : null;
  const found = { status, trailer: error.metadata.get("stele-error-code")[0] };
  for (const any of status ? status.details : []) {
    if (any.typeUrl === "type.googleapis.com/stele.v1.ErrorDetail") found.detail = ErrorDetail.decode(any.value);
    if (any.typeUrl === "type.googleapis.com/google.rpc.ErrorInfo") found.info = ErrorInfo.decode(any.value);
    if (any.typeUrl === "type.googleapis.com/google.rpc.BadRequest") found.badRequest = BadRequest.decode(any.value);
  }
  return found;
}

function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

async function refused(method, request) {
  try {
    await call(method, request);
  } catch (error) {
    return error;
  }
  throw new Error(`${method} was not refused`);
}

function event(type) {
  return { type, payload: Buffer.from("{}") };
}

async function main() {
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 30000, (error) => (error ? reject(error) : resolve())),
  );
  await call("CreateTopic", { topic: "node", settings: { partitions: 2 } });
  const first = await call("Append", {
    topic: "node",
    key: Buffer.from("order-1"),
    expected: { no_events: {} },
    events: [event("created")],
  });
  check("first append gets sequence 0", first.result.first_sequence === 0, JSON.stringify(first));

  const conflict = await refused("Append", {
    topic: "node",
    key: Buffer.from("order-1"),
    expected: { no_events: {} },
    events: [event("created")],
  });
  const found = details(conflict);
  check("conflict is FAILED_PRECONDITION", conflict.code === grpc.status.FAILED_PRECONDITION, conflict.message);
  check(
    "grpc-status-details-bin is a google.rpc.Status agreeing with the call",
    found.status !== null && found.status.code === conflict.code && found.status.message === conflict.details,
    JSON.stringify(found.status),
  );
  check(
    "the status carries ErrorDetail with the actual sequence",
    found.detail !== undefined &&
      found.detail.code === ErrorCode.ERROR_CODE_WRONG_EXPECTED_SEQUENCE &&
      Number(found.detail.actualSequence) === 0,
    JSON.stringify(found.detail),
  );
  check(
    "the status carries the standard ErrorInfo",
    found.info !== undefined && found.info.reason === "WRONG_EXPECTED_SEQUENCE" && found.info.domain === "stele",
    JSON.stringify(found.info),
  );
  check(
    "the stele-error-code trailer holds the same code",
    found.trailer === String(ErrorCode.ERROR_CODE_WRONG_EXPECTED_SEQUENCE),
    String(found.trailer),
  );

  const badName = await refused("DescribeTopic", { topic: "not a topic!" });
  check("a malformed topic name is INVALID_ARGUMENT", badName.code === grpc.status.INVALID_ARGUMENT, badName.message);
  const longName = details(await refused("DescribeTopic", { topic: "t".repeat(300) }));
  check(
    "an oversized topic name is LIMIT_EXCEEDED with a BadRequest violation",
    longName.detail !== undefined &&
      longName.detail.code === ErrorCode.ERROR_CODE_LIMIT_EXCEEDED &&
      longName.badRequest !== undefined &&
      longName.badRequest.fieldViolations[0].field === "topic",
    JSON.stringify(longName),
  );

  // Bytes that are not a message, through grpc-js's generic call path.
  const malformed = await new Promise((resolve) => {
    client.makeUnaryRequest(
      "/stele.v1.Stele/Append",
      (bytes) => bytes,
      (bytes) => bytes,
      Buffer.from([0x0a, 0xff]),
      (error) => resolve(error),
    );
  });
  const malformedFound = malformed ? details(malformed) : {};
  check(
    "malformed request bytes are INVALID_ARGUMENT with both trailers",
    malformed !== null &&
      malformed.code === grpc.status.INVALID_ARGUMENT &&
      malformedFound.detail !== undefined &&
      malformedFound.detail.code === ErrorCode.ERROR_CODE_INVALID_ARGUMENT &&
      malformedFound.trailer === String(ErrorCode.ERROR_CODE_INVALID_ARGUMENT),
    malformed ? malformed.message : "no error",
  );

  // An AppendSession with a refused request in the middle answers every request.
  const session = client.AppendSession();
  const responses = [];
  const ended = new Promise((resolve, reject) => {
    session.on("data", (response) => responses.push(response));
    session.on("end", resolve);
    session.on("error", reject);
  });
  for (let index = 0; index < 100; index += 1) {
    session.write({
      correlation_id: index,
      topic: index === 50 ? "not a topic!" : "node",
      appends: [{ key: Buffer.from(`session-${index % 5}`), events: [event("noted")] }],
    });
  }
  session.end();
  await ended;
  check(
    "the session answers every request in order",
    responses.length === 100 && responses.every((response, index) => Number(response.correlation_id) === index),
    String(responses.length),
  );
  check(
    "the refused request is answered in-stream",
    responses[50] !== undefined && responses[50].error && responses[50].error.code === ErrorCode.ERROR_CODE_INVALID_ARGUMENT,
    JSON.stringify(responses[50]),
  );

  console.log(`node interop: ${passed} passed, ${failed} failed`);
  client.close();
  process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  console.log(`FAIL unexpected error: ${error.stack || error}`);
  console.log(`node interop: ${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
