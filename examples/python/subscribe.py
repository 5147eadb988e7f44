"""A subscription, in Python with grpcio: catch up, then follow the tail live.

Subscribe streams the events of every partition (or of --partitions) from a
start position, in offset order per partition; `caught_up` arrives once every
followed partition has been read up to the high watermark it had when the
subscription started; heartbeats arrive while nothing happens. Filters
(--types, --key-prefix) are applied on the server.

Usage: subscribe.py [--target HOST:PORT] [--topic T]
                    [--start earliest|latest|cursor:NAME|time:UNIX_MS]
                    [--types A,B] [--key-prefix P] [--max-events N]
"""

from stele_proto import arguments, connect, emit, pb


def start_position(text):
    if text == "earliest":
        return pb.StartPosition(earliest=pb.Empty())
    if text == "latest":
        return pb.StartPosition(latest=pb.Empty())
    if text.startswith("cursor:"):
        return pb.StartPosition(cursor=text[len("cursor:"):])
    if text.startswith("time:"):
        return pb.StartPosition(timestamp_ms=int(text[len("time:"):]))
    raise SystemExit(f"unknown start {text!r}: earliest, latest, cursor:NAME or time:UNIX_MS")


def main():
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--start", default="earliest", help="where to start (default %(default)s)")
    parser.add_argument("--types", default="", help="only these event types, comma-separated")
    parser.add_argument("--key-prefix", default="", help="only keys starting with this")
    parser.add_argument("--max-events", type=int, default=0, help="stop after this many events (0: never)")
    parser.add_argument("--heartbeat-ms", type=int, default=5000, help="heartbeat period while idle")
    args = parser.parse_args()
    stub = connect(args.target)

    stream = stub.Subscribe(
        pb.SubscribeRequest(
            topic=args.topic,
            start=start_position(args.start),
            event_types=[name for name in args.types.split(",") if name],
            key_prefix=args.key_prefix.encode(),
            heartbeat_ms=args.heartbeat_ms,
        )
    )
    received = 0
    for message in stream:
        item = message.WhichOneof("item")
        if item == "events":
            batch = message.events
            for event in batch.events:
                emit(
                    "event",
                    partition=event.partition,
                    offset=event.offset,
                    key=event.key.decode(errors="replace"),
                    sequence=event.sequence,
                    type=event.type,
                    payload=event.payload.decode(errors="replace"),
                )
                received += 1
                if args.max_events and received >= args.max_events:
                    stream.cancel()
                    emit("stopped", received=received)
                    return
            # Where this partition continues (past events the filters skipped):
            # the offset to resume from, or to commit to a cursor.
            emit("next", partition=batch.partition, next_offset=batch.next_offset)
        elif item == "caught_up":
            emit("caught_up", next_offsets={str(p): o for p, o in sorted(message.caught_up.next_offsets.items())})
        elif item == "heartbeat":
            emit("heartbeat", high_watermarks={str(p): o for p, o in sorted(message.heartbeat.high_watermarks.items())})


if __name__ == "__main__":
    main()
