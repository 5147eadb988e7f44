// A subscription, in Node.js with @grpc/grpc-js: catch up, then follow the tail live.
//
// Subscribe streams the events of every partition from a start position, in
// offset order per partition; `caught_up` arrives once every partition has
// been read up to the high watermark it had when the subscription started;
// heartbeats arrive while nothing happens. Filters (--types, --key-prefix)
// are applied on the server.
//
// Usage: node subscribe.js [--target HOST:PORT] [--topic T]
//   [--start earliest|latest|cursor:NAME|time:UNIX_MS] [--types A,B]
//   [--key-prefix P] [--max-events N] [--heartbeat-ms MS]
"use strict";

const { connect, emit, grpc, parseArguments, run } = require("./stele");

function startPosition(text) {
  if (text === "earliest") return { earliest: {} };
  if (text === "latest") return { latest: {} };
  if (text.startsWith("cursor:")) return { cursor: text.slice("cursor:".length) };
  if (text.startsWith("time:")) return { timestamp_ms: Number(text.slice("time:".length)) };
  throw new Error(`unknown start ${JSON.stringify(text)}: earliest, latest, cursor:NAME or time:UNIX_MS`);
}

function sortedObject(map) {
  return Object.fromEntries(Object.entries(map).sort((a, b) => Number(a[0]) - Number(b[0])));
}

async function main() {
  const args = parseArguments({ start: "earliest", types: "", "key-prefix": "", "max-events": 0, "heartbeat-ms": 5000 });
  const client = await connect(args.target);
  const maxEvents = args["max-events"];
  const stream = client.Subscribe({
    topic: args.topic,
    start: startPosition(args.start),
    event_types: args.types.split(",").filter((name) => name),
    key_prefix: Buffer.from(args["key-prefix"]),
    heartbeat_ms: args["heartbeat-ms"],
  });
  let received = 0;
  await new Promise((resolve, reject) => {
    stream.on("data", (message) => {
      if (message.item === "events") {
        const batch = message.events;
        for (const event of batch.events) {
          emit("event", {
            partition: event.partition,
            offset: event.offset,
            key: event.key.toString(),
            sequence: event.sequence,
            type: event.type,
            payload: event.payload.toString(),
          });
          received += 1;
          if (maxEvents && received >= maxEvents) {
            stream.cancel();
            emit("stopped", { received });
            resolve();
            return;
          }
        }
        // Where this partition continues (past events the filters skipped):
        // the offset to resume from, or to commit to a cursor.
        emit("next", { partition: batch.partition, next_offset: batch.next_offset });
      } else if (message.item === "caught_up") {
        emit("caught_up", { next_offsets: sortedObject(message.caught_up.next_offsets) });
      } else if (message.item === "heartbeat") {
        emit("heartbeat", { high_watermarks: sortedObject(message.heartbeat.high_watermarks) });
      }
    });
    stream.on("error", (error) => (error.code === grpc.status.CANCELLED ? resolve() : reject(error)));
    stream.on("end", resolve);
  });
  client.close();
}

run(main);
