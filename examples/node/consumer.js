// A consumer that follows a durable cursor, in Node.js with @grpc/grpc-js.
//
// It reads each partition from the cursor's committed offset (GetCursor; the
// partition's earliest offset when never committed), processes the events in
// offset order (here: prints them), and commits the offset after the last
// processed event (CommitCursor) once a batch is processed. A consumer stopped
// at any point (--max-events, a crash) resumes after a restart where the
// cursor says: an event committed is never delivered again, and one processed
// but not yet committed is delivered again (at least once).
//
// Usage: node consumer.js [--target HOST:PORT] [--topic T] [--cursor NAME]
//   [--max-events N] [--exit-when-caught-up] [--batch N] [--poll-ms MS]
"use strict";

const { call, connect, emit, grpc, parseArguments, run } = require("./stele");

// Where to resume in each partition: the cursor's committed offset, or the
// earliest retained offset where it never committed (or does not exist).
async function committedOffsets(client, topic, cursor) {
  const description = await call(client, "DescribeTopic", { topic });
  const offsets = new Map(description.partitions.map((partition) => [partition.partition, partition.earliest_offset]));
  try {
    const found = (await call(client, "GetCursor", { topic, cursor })).cursor;
    for (const partition of found.partitions) {
      if (partition._committed_offset === "committed_offset") {
        offsets.set(partition.partition, Math.max(partition.committed_offset, offsets.get(partition.partition)));
      }
    }
  } catch (error) {
    // A cursor never committed does not exist yet: it starts at earliest.
    if (error.code !== grpc.status.NOT_FOUND) throw error;
  }
  return offsets;
}

function offsetsObject(offsets) {
  return Object.fromEntries([...offsets.entries()].sort((a, b) => a[0] - b[0]).map(([p, o]) => [String(p), o]));
}

async function main() {
  const args = parseArguments({
    cursor: "example-consumer",
    "max-events": 0,
    "exit-when-caught-up": false,
    batch: 100,
    "poll-ms": 500,
  });
  const client = await connect(args.target);
  const { topic, cursor } = args;
  const maxEvents = args["max-events"];
  const offsets = await committedOffsets(client, topic, cursor);
  emit("resumed", { cursor, offsets: offsetsObject(offsets) });
  let processed = 0;
  for (;;) {
    let caughtUp = true;
    for (const partition of [...offsets.keys()].sort((a, b) => a - b)) {
      const wanted = maxEvents ? Math.min(args.batch, maxEvents - processed) : args.batch;
      if (wanted === 0) break;
      const read = await call(client, "Read", { topic, partition, from_offset: offsets.get(partition), max_events: wanted });
      for (const event of read.events) {
        // Processing: a real consumer does its work here, idempotently by
        // (partition, offset), since delivery is at least once.
        emit("event", {
          partition: event.partition,
          offset: event.offset,
          key: event.key.toString(),
          sequence: event.sequence,
          type: event.type,
          payload: event.payload.toString(),
        });
        processed += 1;
      }
      if (read.events.length > 0) {
        // Commit only what was processed: the offset after the last event.
        const nextOffset = read.events[read.events.length - 1].offset + 1;
        await call(client, "CommitCursor", { topic, cursor, offsets: { [partition]: nextOffset } });
        offsets.set(partition, nextOffset);
        emit("committed", { partition, next_offset: nextOffset });
      }
      if (offsets.get(partition) < read.high_watermark) caughtUp = false;
    }
    if (maxEvents && processed >= maxEvents) {
      emit("stopped", { processed, offsets: offsetsObject(offsets) });
      break;
    }
    if (caughtUp) {
      if (args["exit-when-caught-up"]) {
        const found = (await call(client, "GetCursor", { topic, cursor })).cursor;
        const lag = Object.fromEntries(found.partitions.map((partition) => [String(partition.partition), partition.lag]));
        emit("caught_up", { processed, offsets: offsetsObject(offsets), lag });
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, args["poll-ms"]));
    }
  }
  client.close();
}

run(main);
