"""An idempotent producer that retries safely, in Python with grpcio.

It follows docs/producer-protocol.md: OpenProducer gives an id and an epoch;
every append carries a ProducerStamp with the next sequence of its partition
(the key's partition: FNV-1a 64 of the key modulo the partition count); at most
5 appends per partition are unanswered at once (the server remembers that many
recent appends per producer and partition); an append whose answer is unknown
(UNAVAILABLE, a deadline, a lost reply) is sent again with the same stamp, and
the server answers a retry of a stored append with `duplicate = true` and the
original positions; a refused append does not use up its sequence; a fenced
producer stops.

The demonstration: a batch of appends in AppendBatch calls whose first reply is
"lost" (the call reaches the server, the answer is dropped here) and resent,
with a compare-and-set append in it that loses (refused; the appends after it
in its partition are stamped again from its sequence); one unary Append whose
reply is lost and resent; then a second instance opens the same producer name,
which fences the first. Every step prints a JSON line.

Usage: producer.py [--target HOST:PORT] [--topic T] [--name N] [--count C] ...
"""

import argparse
import time

from stele_proto import arguments, connect, emit, error_of, detail_fields, grpc, partition_for_key, pb

# The server remembers this many recent appends per producer and partition
# (ProducerStamp in the proto): never have more unanswered in one partition.
IN_FLIGHT_PER_PARTITION_MAX = 5

# Stele codes that an append may be retried after, with the same stamp.
RETRIABLE_CODES = {
    pb.ERROR_CODE_DISK_FULL,
    pb.ERROR_CODE_POISONED,
    pb.ERROR_CODE_CLOSED,
    pb.ERROR_CODE_BACKEND_UNAVAILABLE,
}


class ReplyLost(Exception):
    """The request reached the server but its answer never came back."""


class Fenced(Exception):
    """Another instance opened this producer with a newer epoch: stop."""

    def __init__(self, error):
        super().__init__(error["message"])
        self.error = error


class Refused(Exception):
    """The server refused an append for its content; nothing was stored."""

    def __init__(self, error):
        super().__init__(error["message"])
        self.error = error


def retriable(error):
    """Whether a failed call may have been stored, or not reached the server:
    then the same request is sent again, with the same stamps."""
    if isinstance(error, ReplyLost):
        return True
    found = error_of(error)
    if found["grpc_code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return True
    if found["code"] in RETRIABLE_CODES:
        return True
    # A broken HTTP/2 stream surfaces as these, without a Stele code.
    return found["grpc_code"] in ("UNKNOWN", "CANCELLED", "INTERNAL") and found["code"] == 0


class LossyTransport:
    """Calls the server, and drops the reply of the calls numbered in `lose`
    (1-based, per RPC name) after printing what was sent and what the server
    answered."""

    def __init__(self, stub, lose):
        self.stub = stub
        self.lose = lose
        self.calls = {}

    def __call__(self, method, request):
        number = self.calls.get(method, 0) + 1
        self.calls[method] = number
        response = getattr(self.stub, method)(request, timeout=10)
        if number in self.lose.get(method, ()):
            if method == "AppendBatch":
                answered = [
                    result_fields(outcome.result) if outcome.HasField("result") else {"error": detail_fields(outcome.error)}
                    for outcome in response.outcomes
                ]
            else:
                answered = [result_fields(response.result)]
            appends = request.appends if method == "AppendBatch" else [request]
            sent = [{"key": append.key.decode(), "producer_sequence": append.producer.sequence} for append in appends]
            emit("reply_lost", rpc=method, call=number, sent=sent, results=answered)
            raise ReplyLost(method)
        return response


def result_fields(result):
    return {
        "partition": result.partition,
        "first_offset": result.first_offset,
        "first_sequence": result.first_sequence,
        "last_sequence": result.last_sequence,
        "duplicate": result.duplicate,
    }


class Producer:
    """An idempotent producer of one topic, under a stable name."""

    def __init__(self, stub, topic, name, transport=None, attempts_max=8):
        self.topic = topic
        opened = stub.OpenProducer(pb.OpenProducerRequest(topic=topic, name=name), timeout=10)
        self.producer_id = opened.producer_id
        self.epoch = opened.epoch
        self.partitions = len(stub.DescribeTopic(pb.DescribeTopicRequest(topic=topic), timeout=10).partitions)
        # The sequence the next append of each partition carries; a new epoch starts at 0.
        self.next_sequence = [0] * self.partitions
        self.call = transport or (lambda method, request: getattr(stub, method)(request, timeout=10))
        self.attempts_max = attempts_max

    def stamp(self, sequence):
        return pb.ProducerStamp(producer_id=self.producer_id, epoch=self.epoch, sequence=sequence)

    def retrying(self, method, request):
        """Sends `request` until it is answered: an unknown outcome is retried
        unchanged, so a stored append is answered as a duplicate."""
        for attempt in range(1, self.attempts_max + 1):
            try:
                return self.call(method, request), attempt
            except (grpc.RpcError, ReplyLost) as error:
                if not retriable(error) or attempt == self.attempts_max:
                    raise
                time.sleep(min(0.05 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    def send(self, key, events, expected=None):
        """Appends `events` to `key` with a unary Append; returns the ack.

        Raises Fenced when a newer instance took over, Refused when the server
        refused the append (nothing stored; its sequence is used by the next one).
        """
        partition = partition_for_key(key, self.partitions)
        sequence = self.next_sequence[partition]
        request = pb.AppendRequest(
            topic=self.topic, key=key, events=events, expected=expected, producer=self.stamp(sequence)
        )
        try:
            response, attempts = self.retrying("Append", request)
        except grpc.RpcError as error:
            found = error_of(error)
            if found["code"] == pb.ERROR_CODE_PRODUCER_FENCED:
                raise Fenced(found) from error
            if retriable(error):
                # Still unknown after every attempt: it may be stored.
                raise
            raise Refused(found) from error
        self.next_sequence[partition] = sequence + 1
        return ack_fields(key, partition, sequence, response.result, attempts)

    def send_all(self, appends):
        """Appends every (key, events, expected) of `appends` (`expected` an
        ExpectedSequence or None), in order per partition, in
        AppendBatch calls of at most IN_FLIGHT_PER_PARTITION_MAX appends per
        partition. Returns one entry per append: an ack, or {"error": ...}.
        Raises Fenced when a newer instance took over."""
        waiting = [[] for _ in range(self.partitions)]
        for index, (key, _, _) in enumerate(appends):
            waiting[partition_for_key(key, self.partitions)].append(index)
        answers = [None] * len(appends)
        attempts = [0] * len(appends)
        while any(waiting):
            # One call: the first appends waiting in each partition, stamped
            # with consecutive sequences from the partition's next one.
            sent = []
            for partition, indexes in enumerate(waiting):
                for offset, index in enumerate(indexes[:IN_FLIGHT_PER_PARTITION_MAX]):
                    sent.append((partition, index, self.next_sequence[partition] + offset))
            request = pb.AppendBatchRequest(
                topic=self.topic,
                appends=[
                    pb.BatchAppend(key=key, events=events, expected=expected, producer=self.stamp(sequence))
                    for _, index, sequence in sent
                    for key, events, expected in [appends[index]]
                ],
            )
            response, calls = self.retrying("AppendBatch", request)
            failed = set()
            backoff = False
            for (partition, index, sequence), outcome in zip(sent, response.outcomes):
                attempts[index] += calls
                if partition in failed:
                    # Refused only because an earlier append of its partition was
                    # (PRODUCER_OUT_OF_ORDER): it waits, and gets that sequence next.
                    if outcome.HasField("result"):
                        raise AssertionError(f"append {index} stored after a refused one of its partition")
                    continue
                if outcome.HasField("result"):
                    answers[index] = ack_fields(appends[index][0], partition, sequence, outcome.result, attempts[index])
                    self.next_sequence[partition] = sequence + 1
                    waiting[partition].remove(index)
                    continue
                error = detail_fields(outcome.error)
                failed.add(partition)
                if outcome.error.code == pb.ERROR_CODE_PRODUCER_FENCED:
                    raise Fenced(error)
                if outcome.error.code in RETRIABLE_CODES:
                    if attempts[index] >= self.attempts_max:
                        # It may be stored: re-open and read what was before going on.
                        raise RuntimeError(f"append {index} unknown after {attempts[index]} attempts: {error}")
                    backoff = True
                    continue
                # Refused for good: nothing stored, the sequence is not used up.
                answers[index] = {"key": appends[index][0].decode(), "error": error}
                waiting[partition].remove(index)
            if backoff:
                time.sleep(0.1)
        return answers


def ack_fields(key, partition, sequence, result, attempts):
    fields = result_fields(result)
    fields.update(key=key.decode(), local_partition=partition, producer_sequence=sequence, attempts=attempts)
    return fields


def order_event(number):
    return pb.Event(type="order_placed", payload=b'{"n": %d}' % number)


def main():
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--name", default="example-producer", help="the producer's stable name")
    parser.add_argument("--count", type=int, default=12, help="events in the batch")
    parser.add_argument("--keys", type=int, default=4, help="distinct keys in the batch")
    parser.add_argument("--partitions", type=int, default=3, help="partitions, when this creates the topic")
    parser.add_argument("--lose-batch-reply", type=int, default=1, help="lose the reply of this AppendBatch call (0: none)")
    parser.add_argument("--lose-append-reply", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--conflict", action=argparse.BooleanOptionalAction, default=True, help="show a lost CAS")
    parser.add_argument("--fence", action=argparse.BooleanOptionalAction, default=True, help="show fencing")
    args = parser.parse_args()
    stub = connect(args.target)

    try:
        stub.CreateTopic(
            pb.CreateTopicRequest(topic=args.topic, settings=pb.TopicSettings(partitions=args.partitions)), timeout=10
        )
        emit("topic_created", topic=args.topic, partitions=args.partitions)
    except grpc.RpcError as error:
        found = error_of(error)
        if found["code"] != pb.ERROR_CODE_TOPIC_EXISTS:
            raise
        emit("topic_exists", topic=args.topic, error=found)

    lose = {"AppendBatch": {args.lose_batch_reply}, "Append": {1} if args.lose_append_reply else set()}
    producer = Producer(stub, args.topic, args.name, transport=LossyTransport(stub, lose))
    emit("opened", producer_id=producer.producer_id, epoch=producer.epoch, partitions=producer.partitions)

    batch = [(b"order-%d" % (number % args.keys), [order_event(number)], None) for number in range(args.count)]
    if args.conflict:
        # A compare-and-set append that loses (the key's last sequence is not
        # 99): refused, nothing stored; the appends after it in its partition
        # come back PRODUCER_OUT_OF_ORDER and are sent again with its sequence.
        amended = pb.Event(type="order_amended", payload=b'{"conflict": true}')
        batch.insert(1, (b"order-1", [amended], pb.ExpectedSequence(exact=99)))
    for answer in producer.send_all(batch):
        emit("ack" if "error" not in answer else "refused", **answer)

    emit("ack", **producer.send(b"order-single", [order_event(args.count)]))

    if args.fence:
        # A second instance under the same name: OpenProducer gives a newer
        # epoch, and the first instance's next append is refused as fenced.
        successor = Producer(stub, args.topic, args.name)
        emit("reopened", producer_id=successor.producer_id, epoch=successor.epoch)
        try:
            producer.send(b"order-single", [order_event(args.count + 1)])
            emit("not_fenced")
        except Fenced as fenced:
            emit("fenced", **fenced.error)
        emit("ack", **successor.send(b"order-single", [order_event(args.count + 1)]))
    emit("done")


if __name__ == "__main__":
    main()
