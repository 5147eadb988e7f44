// What every Stele example shares: the proto loaded at run time by
// @grpc/proto-loader, promise wrappers for calls, the key -> partition
// function, and Stele's error details decoded from a status.
//
// The proto is ../../proto/stele/v1/stele.proto (or the one under the
// directory in STELE_PROTO_DIR): nothing generated is committed, and the
// examples always match the proto. See docs/producer-protocol.md.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const protoDir = process.env.STELE_PROTO_DIR || path.join(__dirname, "..", "..", "proto");
const protoFile = path.join(protoDir, "stele", "v1", "stele.proto");

// 64-bit integers as Numbers: exact up to 2^53, far beyond these examples.
const definition = protoLoader.loadSync(protoFile, { keepCase: true, longs: Number, enums: Number, defaults: true, oneofs: true });
const stele = grpc.loadPackageDefinition(definition).stele.v1;

// google.rpc.Status and ErrorInfo as published in googleapis
// (google/rpc/status.proto, error_details.proto), reduced to the fields read here.
const rpcTypes = protobuf.parse(`
syntax = "proto3";
package google.rpc;
message Any { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`).root;
const Status = rpcTypes.lookupType("google.rpc.Status");
const ErrorInfo = rpcTypes.lookupType("google.rpc.ErrorInfo");
const steleTypes = new protobuf.Root().loadSync(protoFile, { keepCase: true });
const ErrorDetail = steleTypes.lookupType("stele.v1.ErrorDetail");
// ErrorCode by name (ERROR_CODE_PRODUCER_FENCED: 13) and by number.
const ErrorCode = steleTypes.lookupEnum("stele.v1.ErrorCode").values;
const errorNames = Object.fromEntries(Object.entries(ErrorCode).map(([name, code]) => [code, name]));
const grpcNames = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// The command line every example takes: --name value pairs and --flags,
// over `defaults` (whose keys use dashes, as on the command line).
function parseArguments(defaults) {
  const options = { target: "127.0.0.1:7077", topic: "orders", ...defaults };
  const argv = process.argv.slice(2);
  for (let index = 0; index < argv.length; index += 1) {
    const name = argv[index].replace(/^--/, "");
    if (name.startsWith("no-") && typeof options[name.slice(3)] === "boolean") {
      options[name.slice(3)] = false;
    } else if (typeof options[name] === "boolean") {
      options[name] = true;
    } else if (name in options) {
      const value = argv[(index += 1)];
      options[name] = typeof options[name] === "number" ? Number(value) : value;
    } else {
      throw new Error(`unknown option --${name}; options: ${Object.keys(options).join(", ")}`);
    }
  }
  return options;
}

// A client on an insecure channel to `target`, once it is ready.
async function connect(target) {
  const client = new stele.Stele(target, grpc.credentials.createInsecure());
  await new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + 30000, (error) => (error ? reject(error) : resolve())),
  );
  return client;
}

// A unary call as a promise, with a deadline.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Prints one JSON line (keys sorted): what the example did, for people and for tests.
function emit(kind, fields = {}) {
  const all = { kind, ...fields };
  const sorted = Object.fromEntries(Object.keys(all).sort().map((key) => [key, all[key]]));
  console.log(JSON.stringify(sorted));
}

// The partition of `key` (a Buffer): FNV-1a 64 of the key bytes modulo the
// partition count, exactly as the server routes it.
function partitionForKey(key, partitions) {
  let hash = 0xcbf29ce484222325n;
  for (const byte of key) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return Number(hash % BigInt(partitions));
}

// A stele.v1.ErrorDetail (with the proto's field names and oneofs marked, as
// proto-loader and protobufjs's toObject with `oneofs` give it) as an
// object: the code by number and by name, and the fields the server set.
function detailFields(detail) {
  const name = errorNames[detail.code] || String(detail.code);
  const fields = { code: detail.code, reason: name.replace(/^ERROR_CODE_/, ""), message: detail.message };
  const optional = [
    "actual_sequence",
    "expected_producer_sequence",
    "current_epoch",
    "earliest_offset",
    "high_watermark",
    "original_partition",
    "original_offset",
    "original_sequence",
  ];
  for (const field of optional) {
    // A present optional field is named by its synthetic oneof (`_actual_sequence`).
    if (detail[`_${field}`] === field) fields[field] = Number(detail[field]);
  }
  if (detail.limit_name) {
    fields.limit_name = detail.limit_name;
    fields.limit_value = Number(detail.limit_value);
    fields.limit_max = Number(detail.limit_max);
  }
  return fields;
}

// Stele's error from a failed call: the gRPC code, and the stele.v1.ErrorDetail
// and google.rpc.ErrorInfo packed in the google.rpc.Status of the
// `grpc-status-details-bin` trailer, with the `stele-error-code` text trailer.
// A failure that never reached Stele (a lost connection) has no detail: its
// `code` is 0.
function errorOf(error) {
  const found = { grpc_code: grpcNames[error.code] || String(error.code), code: 0, reason: "", message: error.details || "" };
  const metadata = error.metadata;
  const raw = metadata ? metadata.get("grpc-status-details-bin")[0] : undefined;
  const status = raw ? Status.decode(raw) : null;
  for (const any of status ? status.details : []) {
    if (any.typeUrl === "type.googleapis.com/stele.v1.ErrorDetail") {
      const detail = ErrorDetail.toObject(ErrorDetail.decode(any.value), { longs: Number, oneofs: true, defaults: true });
      Object.assign(found, detailFields(detail));
    } else if (any.typeUrl === "type.googleapis.com/google.rpc.ErrorInfo") {
      const info = ErrorInfo.decode(any.value);
      found.error_info = { reason: info.reason, domain: info.domain, code: info.metadata.code };
    }
  }
  const trailer = metadata ? metadata.get("stele-error-code")[0] : undefined;
  if (trailer !== undefined) found.trailer = String(trailer);
  return found;
}

// Runs `main`, printing a failure as a JSON line and exiting non-zero.
function run(main) {
  main().then(
    () => process.exit(0),
    (error) => {
      emit("failed", { error: String(error.stack || error) });
      process.exit(1);
    },
  );
}

module.exports = {
  grpc,
  stele,
  ErrorCode,
  parseArguments,
  connect,
  call,
  emit,
  partitionForKey,
  detailFields,
  errorOf,
  run,
};
