// An idempotent producer that retries safely, in Node.js with @grpc/grpc-js.
//
// It follows docs/producer-protocol.md: OpenProducer gives an id and an epoch;
// every append carries a ProducerStamp with the next sequence of its partition
// (the key's partition: FNV-1a 64 of the key modulo the partition count); at
// most 5 appends per partition are unanswered at once (the server remembers
// that many recent appends per producer and partition); an append whose answer
// is unknown (UNAVAILABLE, a deadline, a lost reply) is sent again with the
// same stamp, and the server answers a retry of a stored append with
// `duplicate = true` and the original positions; a refused append does not use
// up its sequence; a fenced producer stops.
//
// The demonstration: a batch of appends in AppendBatch calls whose first reply
// is "lost" (the call reaches the server, the answer is dropped here) and
// resent, with a compare-and-set append in it that loses (refused; the appends
// after it in its partition are stamped again from its sequence); one unary
// Append whose reply is lost and resent; then a second instance opens the same
// producer name, which fences the first. Every step prints a JSON line.
//
// Usage: node producer.js [--target HOST:PORT] [--topic T] [--name N] [--count C]
//   [--keys K] [--partitions P] [--lose-batch-reply N] [--no-lose-append-reply]
//   [--no-conflict] [--no-fence]
"use strict";

const { ErrorCode, call, connect, detailFields, emit, errorOf, parseArguments, partitionForKey, run } = require("./stele");

// The server remembers this many recent appends per producer and partition
// (ProducerStamp in the proto): never have more unanswered in one partition.
const IN_FLIGHT_PER_PARTITION_MAX = 5;

// Stele codes that an append may be retried after, with the same stamp.
const RETRIABLE_CODES = new Set([
  ErrorCode.ERROR_CODE_DISK_FULL,
  ErrorCode.ERROR_CODE_POISONED,
  ErrorCode.ERROR_CODE_CLOSED,
  ErrorCode.ERROR_CODE_BACKEND_UNAVAILABLE,
]);

// The request reached the server but its answer never came back.
class ReplyLost extends Error {}

// Another instance opened this producer with a newer epoch: stop.
class Fenced extends Error {
  constructor(error) {
    super(error.message);
    this.error = error;
  }
}

// The server refused an append for its content; nothing was stored.
class Refused extends Error {
  constructor(error) {
    super(error.message);
    this.error = error;
  }
}

// Whether a failed call may have been stored, or not reached the server: then
// the same request is sent again, with the same stamps.
function retriable(error) {
  if (error instanceof ReplyLost) return true;
  const found = errorOf(error);
  if (found.grpc_code === "UNAVAILABLE" || found.grpc_code === "DEADLINE_EXCEEDED") return true;
  if (RETRIABLE_CODES.has(found.code)) return true;
  // A broken HTTP/2 stream surfaces as these, without a Stele code.
  return ["UNKNOWN", "CANCELLED", "INTERNAL"].includes(found.grpc_code) && found.code === 0;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function resultFields(result) {
  return {
    partition: result.partition,
    first_offset: result.first_offset,
    first_sequence: result.first_sequence,
    last_sequence: result.last_sequence,
    duplicate: result.duplicate,
  };
}

function ackFields(key, partition, sequence, result, attempts) {
  return {
    ...resultFields(result),
    key: key.toString(),
    local_partition: partition,
    producer_sequence: sequence,
    attempts,
  };
}

// Calls the server, and drops the reply of the calls numbered in `lose`
// (1-based, per RPC name) after printing what was sent and what the server
// answered.
function lossyTransport(client, lose) {
  const calls = {};
  return async (method, request) => {
    calls[method] = (calls[method] || 0) + 1;
    const response = await call(client, method, request);
    if ((lose[method] || []).includes(calls[method])) {
      const results =
        method === "AppendBatch"
          ? response.outcomes.map((outcome) =>
              outcome.outcome === "result" ? resultFields(outcome.result) : { error: detailFields(outcome.error) },
            )
          : [resultFields(response.result)];
      const sent = (method === "AppendBatch" ? request.appends : [request]).map((append) => ({
        key: append.key.toString(),
        producer_sequence: append.producer.sequence,
      }));
      emit("reply_lost", { rpc: method, call: calls[method], sent, results });
      throw new ReplyLost(method);
    }
    return response;
  };
}

// An idempotent producer of one topic, under a stable name.
class Producer {
  static async open(client, topic, name, transport, attemptsMax = 8) {
    const opened = await call(client, "OpenProducer", { topic, name });
    const description = await call(client, "DescribeTopic", { topic });
    return new Producer(topic, opened, description.partitions.length, transport || ((method, request) => call(client, method, request)), attemptsMax);
  }

  constructor(topic, opened, partitions, transport, attemptsMax) {
    this.topic = topic;
    this.producerId = opened.producer_id;
    this.epoch = opened.epoch;
    this.partitions = partitions;
    // The sequence the next append of each partition carries; a new epoch starts at 0.
    this.nextSequence = new Array(partitions).fill(0);
    this.call = transport;
    this.attemptsMax = attemptsMax;
  }

  stamp(sequence) {
    return { producer_id: this.producerId, epoch: this.epoch, sequence };
  }

  // Sends `request` until it is answered: an unknown outcome is retried
  // unchanged, so a stored append is answered as a duplicate.
  async retrying(method, request) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return [await this.call(method, request), attempt];
      } catch (error) {
        if (!retriable(error) || attempt === this.attemptsMax) throw error;
        await sleep(Math.min(50 * 2 ** attempt, 2000));
      }
    }
  }

  // Appends `events` to `key` with a unary Append; resolves with the ack.
  // Rejects with Fenced when a newer instance took over, Refused when the
  // server refused the append (nothing stored; its sequence is used by the next one).
  async send(key, events, expected) {
    const partition = partitionForKey(key, this.partitions);
    const sequence = this.nextSequence[partition];
    const request = { topic: this.topic, key, events, expected, producer: this.stamp(sequence) };
    let response;
    let attempts;
    try {
      [response, attempts] = await this.retrying("Append", request);
    } catch (error) {
      if (error instanceof ReplyLost) throw error;
      const found = errorOf(error);
      if (found.code === ErrorCode.ERROR_CODE_PRODUCER_FENCED) throw new Fenced(found);
      // Still unknown after every attempt: it may be stored.
      if (retriable(error)) throw error;
      throw new Refused(found);
    }
    this.nextSequence[partition] = sequence + 1;
    return ackFields(key, partition, sequence, response.result, attempts);
  }

  // Appends every [key, events, expected] of `appends` (`expected` an
  // ExpectedSequence or undefined), in order per partition, in
  // AppendBatch calls of at most IN_FLIGHT_PER_PARTITION_MAX appends per
  // partition. Resolves with one entry per append: an ack, or { error }.
  // Rejects with Fenced when a newer instance took over.
  async sendAll(appends) {
    const waiting = Array.from({ length: this.partitions }, () => []);
    appends.forEach(([key], index) => waiting[partitionForKey(key, this.partitions)].push(index));
    const answers = new Array(appends.length).fill(null);
    const attempts = new Array(appends.length).fill(0);
    while (waiting.some((indexes) => indexes.length > 0)) {
      // One call: the first appends waiting in each partition, stamped with
      // consecutive sequences from the partition's next one.
      const sent = [];
      waiting.forEach((indexes, partition) =>
        indexes
          .slice(0, IN_FLIGHT_PER_PARTITION_MAX)
          .forEach((index, offset) => sent.push([partition, index, this.nextSequence[partition] + offset])),
      );
      const request = {
        topic: this.topic,
        appends: sent.map(([, index, sequence]) => ({
          key: appends[index][0],
          events: appends[index][1],
          expected: appends[index][2],
          producer: this.stamp(sequence),
        })),
      };
      const [response, calls] = await this.retrying("AppendBatch", request);
      const failed = new Set();
      let backoff = false;
      sent.forEach(([partition, index, sequence], position) => {
        const outcome = response.outcomes[position];
        attempts[index] += calls;
        const remove = () => waiting[partition].splice(waiting[partition].indexOf(index), 1);
        if (failed.has(partition)) {
          // Refused only because an earlier append of its partition was
          // (PRODUCER_OUT_OF_ORDER): it waits, and gets that sequence next.
          if (outcome.outcome === "result") throw new Error(`append ${index} stored after a refused one of its partition`);
          return;
        }
        if (outcome.outcome === "result") {
          answers[index] = ackFields(appends[index][0], partition, sequence, outcome.result, attempts[index]);
          this.nextSequence[partition] = sequence + 1;
          remove();
          return;
        }
        const error = detailFields(outcome.error);
        failed.add(partition);
        if (outcome.error.code === ErrorCode.ERROR_CODE_PRODUCER_FENCED) throw new Fenced(error);
        if (RETRIABLE_CODES.has(outcome.error.code)) {
          // It may be stored: past the attempts, re-open and read what was before going on.
          if (attempts[index] >= this.attemptsMax) throw new Error(`append ${index} unknown after ${attempts[index]} attempts`);
          backoff = true;
          return;
        }
        // Refused for good: nothing stored, the sequence is not used up.
        answers[index] = { key: appends[index][0].toString(), error };
        remove();
      });
      if (backoff) await sleep(100);
    }
    return answers;
  }
}

function orderEvent(number) {
  return { type: "order_placed", payload: Buffer.from(`{"n": ${number}}`) };
}

async function main() {
  const args = parseArguments({
    name: "example-producer",
    count: 12,
    keys: 4,
    partitions: 3,
    "lose-batch-reply": 1,
    "lose-append-reply": true,
    conflict: true,
    fence: true,
  });
  const client = await connect(args.target);
  try {
    await call(client, "CreateTopic", { topic: args.topic, settings: { partitions: args.partitions } });
    emit("topic_created", { topic: args.topic, partitions: args.partitions });
  } catch (error) {
    const found = errorOf(error);
    if (found.code !== ErrorCode.ERROR_CODE_TOPIC_EXISTS) throw error;
    emit("topic_exists", { topic: args.topic, error: found });
  }

  const lose = { AppendBatch: [args["lose-batch-reply"]], Append: args["lose-append-reply"] ? [1] : [] };
  const producer = await Producer.open(client, args.topic, args.name, lossyTransport(client, lose));
  emit("opened", { producer_id: producer.producerId, epoch: producer.epoch, partitions: producer.partitions });

  const batch = [];
  for (let number = 0; number < args.count; number += 1) {
    batch.push([Buffer.from(`order-${number % args.keys}`), [orderEvent(number)], undefined]);
  }
  if (args.conflict) {
    // A compare-and-set append that loses (the key's last sequence is not
    // 99): refused, nothing stored; the appends after it in its partition
    // come back PRODUCER_OUT_OF_ORDER and are sent again with its sequence.
    const amended = { type: "order_amended", payload: Buffer.from('{"conflict": true}') };
    batch.splice(1, 0, [Buffer.from("order-1"), [amended], { exact: 99 }]);
  }
  for (const answer of await producer.sendAll(batch)) emit(answer.error ? "refused" : "ack", answer);

  emit("ack", await producer.send(Buffer.from("order-single"), [orderEvent(args.count)]));

  if (args.fence) {
    // A second instance under the same name: OpenProducer gives a newer
    // epoch, and the first instance's next append is refused as fenced.
    const successor = await Producer.open(client, args.topic, args.name);
    emit("reopened", { producer_id: successor.producerId, epoch: successor.epoch });
    try {
      await producer.send(Buffer.from("order-single"), [orderEvent(args.count + 1)]);
      emit("not_fenced");
    } catch (error) {
      if (!(error instanceof Fenced)) throw error;
      emit("fenced", error.error);
    }
    emit("ack", await successor.send(Buffer.from("order-single"), [orderEvent(args.count + 1)]));
  }
  emit("done");
  client.close();
}

module.exports = { Producer };

if (require.main === module) run(main);
