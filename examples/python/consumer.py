"""A consumer that follows a durable cursor, in Python with grpcio.

It reads each partition from the cursor's committed offset (GetCursor; the
partition's earliest offset when never committed), processes the events in
offset order (here: prints them), and commits the offset after the last
processed event (CommitCursor) once a batch is processed. A consumer stopped
at any point (--max-events, a crash) resumes after a restart where the cursor
says: an event committed is never delivered again, and one processed but not
yet committed is delivered again (at least once).

Usage: consumer.py [--target HOST:PORT] [--topic T] [--cursor NAME]
                   [--max-events N] [--exit-when-caught-up] [--batch N]
"""

import time

from stele_proto import arguments, connect, emit, grpc, pb


def committed_offsets(stub, topic, cursor):
    """Where to resume in each partition: the cursor's committed offset, or
    the earliest retained offset where it never committed (or does not exist)."""
    description = stub.DescribeTopic(pb.DescribeTopicRequest(topic=topic), timeout=10)
    offsets = {partition.partition: partition.earliest_offset for partition in description.partitions}
    try:
        found = stub.GetCursor(pb.GetCursorRequest(topic=topic, cursor=cursor), timeout=10).cursor
        for partition in found.partitions:
            if partition.HasField("committed_offset"):
                offsets[partition.partition] = max(partition.committed_offset, offsets[partition.partition])
    except grpc.RpcError as error:
        # A cursor never committed does not exist yet: it starts at earliest.
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return offsets


def lag(stub, topic, cursor):
    found = stub.GetCursor(pb.GetCursorRequest(topic=topic, cursor=cursor), timeout=10).cursor
    return {str(partition.partition): partition.lag for partition in found.partitions}


def main():
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--cursor", default="example-consumer", help="the durable cursor's name")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many events (0: never)")
    parser.add_argument("--exit-when-caught-up", action="store_true", help="stop at the high watermark")
    parser.add_argument("--batch", type=int, default=100, help="most events per read")
    parser.add_argument("--poll-ms", type=int, default=500, help="wait between polls when caught up")
    args = parser.parse_args()
    stub = connect(args.target)

    offsets = committed_offsets(stub, args.topic, args.cursor)
    emit("resumed", cursor=args.cursor, offsets={str(p): o for p, o in sorted(offsets.items())})
    processed = 0
    while True:
        caught_up = True
        for partition in sorted(offsets):
            wanted = args.batch if not args.max_events else min(args.batch, args.max_events - processed)
            if wanted == 0:
                break
            read = stub.Read(
                pb.ReadRequest(topic=args.topic, partition=partition, from_offset=offsets[partition], max_events=wanted),
                timeout=10,
            )
            for event in read.events:
                # Processing: a real consumer does its work here, idempotently
                # by (partition, offset), since delivery is at least once.
                emit(
                    "event",
                    partition=event.partition,
                    offset=event.offset,
                    key=event.key.decode(errors="replace"),
                    sequence=event.sequence,
                    type=event.type,
                    payload=event.payload.decode(errors="replace"),
                )
                processed += 1
            if read.events:
                # Commit only what was processed: the offset after the last event.
                next_offset = read.events[-1].offset + 1
                stub.CommitCursor(
                    pb.CommitCursorRequest(topic=args.topic, cursor=args.cursor, offsets={partition: next_offset}),
                    timeout=10,
                )
                offsets[partition] = next_offset
                emit("committed", partition=partition, next_offset=next_offset)
            if offsets[partition] < read.high_watermark:
                caught_up = False
        if args.max_events and processed >= args.max_events:
            emit("stopped", processed=processed, offsets={str(p): o for p, o in sorted(offsets.items())})
            return
        if caught_up:
            if args.exit_when_caught_up:
                emit(
                    "caught_up",
                    processed=processed,
                    offsets={str(p): o for p, o in sorted(offsets.items())},
                    lag=lag(stub, args.topic, args.cursor),
                )
                return
            time.sleep(args.poll_ms / 1000)


if __name__ == "__main__":
    main()
