"""Writes stele.json, the Grafana dashboard, from the panel list below.

Edit this file and run `python3 deploy/grafana/generate_dashboard.py`; commit both.
tests/metrics.rs checks that every query names a metric the server exposes.
"""

import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'
T = '{instance=~"$instance", topic=~"$topic"}'
TI = 'instance=~"$instance", topic=~"$topic"'
E = 'instance=~"$instance", endpoint=~"$endpoint"'
G = 'instance=~"$instance", group=~"$group"'
R = "$__rate_interval"
panels = []
pid = [0]
y = [0]

def row(title):
    pid[0] += 1
    panels.append({"type": "row", "title": title, "id": pid[0], "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1

col = [0]
def panel(title, description, targets, unit="short", kind="timeseries", width=8, extra=None):
    pid[0] += 1
    if col[0] + width > 24:
        col[0] = 0
        y[0] += 8
    p = {
        "type": kind, "title": title, "description": description, "id": pid[0],
        "datasource": DS,
        "gridPos": {"h": 8, "w": width, "x": col[0], "y": y[0]},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}} if kind == "timeseries" else {},
        "targets": [{"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if extra:
        p["fieldConfig"]["defaults"].update(extra)
    panels.append(p)
    col[0] += width

def end_row():
    col[0] = 0
    y[0] += 8

def q(quantile, metric, by, selector):
    return f'histogram_quantile({quantile}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{R}])))'

row("Appends")
panel("Append requests by result", "Append requests per second (one key each) by result: ok, duplicate, sequence_conflict, fenced, rejected (client must change something), error (server-side failure).",
      [(f'sum by (result) (rate(stele_append_requests_total{T}[{R}]))', "{{result}}")], "reqps")
panel("Events appended", "Events per second written (result ok), by topic.",
      [(f'sum by (topic) (rate(stele_append_events_total{{{TI}, result="ok"}}[{R}]))', "{{topic}}")], "short")
panel("Bytes appended", "Bytes per second of event types, payloads, headers and idempotency ids written (result ok), by topic.",
      [(f'sum by (topic) (rate(stele_append_bytes_total{{{TI}, result="ok"}}[{R}]))', "{{topic}}")], "Bps")
end_row()
panel("Append latency", "Time from receiving an append call to its acknowledgement: p50 and p99 by topic.",
      [(q(0.5, "stele_append_duration_seconds", "topic", TI), "p50 {{topic}}"),
       (q(0.99, "stele_append_duration_seconds", "topic", TI), "p99 {{topic}}")], "s")
panel("Append server errors", "Share of append requests that failed on the server (I/O, full disk, poisoned partition, corruption).",
      [(f'sum by (topic) (rate(stele_append_requests_total{{{TI}, result="error"}}[{R}])) / sum by (topic) (rate(stele_append_requests_total{T}[{R}]))', "{{topic}}")], "percentunit")
panel("Conflicts and rejections", "Sequence conflicts, fenced producers, duplicates and rejected requests per second: client behaviour, not server health.",
      [(f'sum by (topic, result) (rate(stele_append_requests_total{{{TI}, result=~"sequence_conflict|fenced|duplicate|rejected"}}[{R}]))', "{{topic}} {{result}}")], "reqps")
end_row()

row("Durability")
panel("fsync latency", "Duration of each fdatasync of a segment: p50, p99 and p99.9. Slow fsync means slow acknowledgements under durability always.",
      [(q(0.5, "stele_fsync_duration_seconds", "topic", TI), "p50 {{topic}}"),
       (q(0.99, "stele_fsync_duration_seconds", "topic", TI), "p99 {{topic}}"),
       (q(0.999, "stele_fsync_duration_seconds", "topic", TI), "p99.9 {{topic}}")], "s")
panel("fsync rate", "fdatasyncs per second by topic.",
      [(f'sum by (topic) (rate(stele_fsync_duration_seconds_count{T}[{R}]))', "{{topic}}")], "ops")
panel("Group commit size", "Mean appends and events acknowledged per group commit (durability always): how many appends share one fdatasync.",
      [(f'sum by (topic) (rate(stele_group_commit_appends_sum{T}[{R}])) / sum by (topic) (rate(stele_group_commit_appends_count{T}[{R}]))', "appends {{topic}}"),
       (f'sum by (topic) (rate(stele_group_commit_events_sum{T}[{R}])) / sum by (topic) (rate(stele_group_commit_events_count{T}[{R}]))', "events {{topic}}"),
       (q(0.99, "stele_group_commit_appends", "topic", TI), "p99 appends {{topic}}")], "short")
end_row()

row("Storage")
panel("High watermark", "One past the newest acknowledged offset, per partition.",
      [(f'stele_partition_high_watermark{T}', "{{topic}}/{{partition}}")], "short")
panel("Retained events", "High watermark minus earliest retained offset, per partition.",
      [(f'stele_partition_high_watermark{T} - stele_partition_earliest_offset{T}', "{{topic}}/{{partition}}")], "short")
panel("Bytes on disk", "Bytes of segment data by topic.",
      [(f'sum by (topic) (stele_partition_size_bytes{T})', "{{topic}}")], "bytes")
end_row()
panel("Disk space", "Available and total bytes of the data directory's filesystem.",
      [(f'stele_disk_available_bytes{{{I}}}', "available {{instance}}"), (f'stele_disk_capacity_bytes{{{I}}}', "capacity {{instance}}")], "bytes")
panel("Disk used", "Share of the data directory's filesystem in use.",
      [(f'1 - stele_disk_available_bytes{{{I}}} / stele_disk_capacity_bytes{{{I}}}', "{{instance}}")], "percentunit", kind="gauge",
      extra={"min": 0, "max": 1, "thresholds": {"mode": "absolute", "steps": [
          {"color": "green", "value": None}, {"color": "orange", "value": 0.8}, {"color": "red", "value": 0.9}]}})
panel("Segments", "Segment files per topic (sealed and active).",
      [(f'sum by (topic) (stele_partition_segments{T})', "{{topic}}")], "short")
end_row()
panel("Segment rolls and retention", "Segments started per hour, and sealed segments deleted by retention per hour.",
      [(f'sum by (topic) (increase(stele_segment_rolls_total{T}[1h]))', "rolls {{topic}}"),
       (f'sum by (topic) (increase(stele_retention_deleted_segments_total{T}[1h]))', "deleted {{topic}}")], "short")
panel("Retention deleted bytes", "Bytes deleted by retention per hour.",
      [(f'sum by (topic) (increase(stele_retention_deleted_bytes_total{T}[1h]))', "{{topic}}")], "bytes")
panel("Corruption detected", "Damaged stored bytes found since the process started: files repaired at open, partitions quarantined at open, and corruption errors returned by requests. Anything above 0 needs the corruption runbook.",
      [(f'sum by (topic) (stele_corruption_detected_total{{{I}}})', "{{topic}}")], "short", kind="stat",
      extra={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}})
end_row()
panel("Quarantined partitions", "Partitions opened quarantined: recovery found damage it may not repair, so they serve only the offsets before it and refuse appends. The other partitions are unaffected. See the corruption runbook (stele repair, or a restore from backup).",
      [(f'max by (instance, topic, partition) (stele_partition_quarantined{T})', "{{instance}} {{topic}} p{{partition}}")], "short", kind="stat", width=24,
      extra={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}})
end_row()

row("Consumers")
panel("Cursor lag", "Events between each cursor's committed offset and the high watermark, summed over partitions.",
      [(f'sum by (topic, cursor) (stele_cursor_lag_events{T})', "{{topic}} {{cursor}}")], "short")
panel("Cursor progress", "Committed offsets per second (events consumed), by cursor.",
      [(f'sum by (topic, cursor) (deriv(stele_cursor_committed_offset{T}[5m]))', "{{topic}} {{cursor}}")], "short")
panel("Active subscriptions", "Open subscriptions by topic.",
      [(f'sum by (topic) (stele_subscriptions_active{T})', "{{topic}}")], "short")
end_row()
panel("Subscription throughput", "Events per second sent to subscribers, by topic.",
      [(f'sum by (topic) (rate(stele_subscription_events_total{T}[{R}]))', "{{topic}}")], "short", width=12)
panel("Read throughput", "Events per second read from storage, by topic: Read and ReadKey calls, subscriptions, webhook and consumer group deliveries.",
      [(f'sum by (topic) (rate(stele_read_events_total{T}[{R}]))', "{{topic}}")], "short", width=12)
end_row()

row("Consumer groups")
panel("Group lag", "Events of each group's topic not yet settled (acked or parked) by the group, over all partitions.",
      [(f'max by (group, topic) (stele_group_lag_events{{{G}}})', "{{group}} ({{topic}})")], "short")
panel("In flight by member", "Deliveries each member instance holds and has not settled, and the group's total. A member that holds deliveries while its group acks nothing is stuck until its leases expire.",
      [(f'max by (group, member) (stele_group_member_in_flight{{{G}}})', "{{group}} {{member}}"),
       (f'max by (group) (stele_group_in_flight{{{G}}})', "total {{group}}")], "short")
panel("Members", "Member instances connected to each group. With none, nothing is delivered and the lag only grows.",
      [(f'max by (group) (stele_group_members{{{G}}})', "{{group}}")], "short")
end_row()
panel("Acked", "Deliveries acked per second, by group.",
      [(f'sum by (group) (rate(stele_group_acked_total{{{G}}}[{R}]))', "{{group}}")], "ops")
panel("Redeliveries and parked", "Deliveries made again (after a retry, an expired lease or a member leaving) and events parked in the dead-letter topic, per second, by group.",
      [(f'sum by (group) (rate(stele_group_redeliveries_total{{{G}}}[{R}]))', "redelivered {{group}}"),
       (f'sum by (group) (rate(stele_group_parked_total{{{G}}}[{R}]))', "parked {{group}}")], "ops")
panel("Oldest unsettled age", "Time since the append of the oldest event each group has read and not settled. It grows a second per second while one event stays unsettled (a stuck delivery, a blocked key); a replay of old events starts it high.",
      [(f'max by (group) (stele_group_oldest_unsettled_age_seconds{{{G}}})', "{{group}}")], "s")
end_row()
panel("Blocked keys", "Keys stopped under on_exhausted block until `stele group redrive`; the group's other keys flow on.",
      [(f'max by (group) (stele_group_blocked_keys{{{G}}})', "{{group}}")], "short", width=24)
end_row()

row("Webhooks")
panel("Deliveries by outcome", "Webhook delivery attempts per second by endpoint and outcome (success, retry, permanent_failure, dead_lettered).",
      [(f'sum by (endpoint, outcome) (rate(stele_webhook_deliveries_total{{{E}}}[{R}]))', "{{endpoint}} {{outcome}}")], "reqps")
panel("Deliveries by status class", "Webhook responses per second by endpoint and status class (2xx, 3xx, 4xx, 5xx, timeout, connection).",
      [(f'sum by (endpoint, status_class) (rate(stele_webhook_deliveries_total{{{E}}}[{R}]))', "{{endpoint}} {{status_class}}")], "reqps")
panel("Attempts", "HTTP requests per second made to each endpoint.",
      [(f'sum by (endpoint) (rate(stele_webhook_attempts_total{{{E}}}[{R}]))', "{{endpoint}}")], "reqps")
end_row()
panel("Delivery latency", "Time from an event's append to its successful delivery: p50 and p99.",
      [(q(0.5, "stele_webhook_delivery_latency_seconds", "endpoint", E), "p50 {{endpoint}}"),
       (q(0.99, "stele_webhook_delivery_latency_seconds", "endpoint", E), "p99 {{endpoint}}")], "s")
panel("Retry delay", "Delay before retries: p50 and p99.",
      [(q(0.5, "stele_webhook_retry_delay_seconds", "endpoint", E), "p50 {{endpoint}}"),
       (q(0.99, "stele_webhook_retry_delay_seconds", "endpoint", E), "p99 {{endpoint}}")], "s")
panel("Webhook lag", "Events appended but not yet delivered, per endpoint.",
      [(f'max by (endpoint) (stele_webhook_lag_events{{{E}}})', "{{endpoint}}")], "short")
end_row()
panel("Circuit state", "Circuit breaker per endpoint: closed (deliveries flow), half open (probing), open (paused).",
      [(f'max by (endpoint) (stele_webhook_circuit_state{{{E}}})', "{{endpoint}}")], "short", kind="state-timeline", width=12,
      extra={"mappings": [{"type": "value", "options": {
          "0": {"text": "closed", "color": "green"}, "1": {"text": "half open", "color": "orange"}, "2": {"text": "open", "color": "red"}}}]})
panel("Dead-lettered events", "Events given up on per hour, per endpoint.",
      [(f'sum by (endpoint) (increase(stele_webhook_dead_lettered_total{{{E}}}[1h]))', "{{endpoint}}")], "short", width=12)
end_row()

row("Server")
panel("Calls by method", "gRPC calls finished per second by method (Stele, health, reflection).",
      [(f'sum by (method) (rate(stele_rpc_handled_total{{{I}}}[{R}]))', "{{method}}")], "reqps")
panel("Errors by code", "gRPC calls finished per second with a status other than OK, by method and code.",
      [(f'sum by (method, code) (rate(stele_rpc_handled_total{{{I}, code!="OK"}}[{R}]))', "{{method}} {{code}}")], "reqps")
panel("Unary latency", "Time from a unary call's request to the end of its response: p50 and p99 by method.",
      [(q(0.5, "stele_rpc_duration_seconds", "method", I), "p50 {{method}}"),
       (q(0.99, "stele_rpc_duration_seconds", "method", I), "p99 {{method}}")], "s")
end_row()
panel("Calls in flight", "Calls being handled by method; for AppendSession, Subscribe and Consume, the streams open.",
      [(f'sum by (method) (stele_rpc_in_flight{{{I}}})', "{{method}}")], "short")
panel("CPU", "CPU time (user and system) per second of wall time: 1 is one core busy.",
      [(f'rate(process_cpu_seconds_total{{{I}}}[{R}])', "{{instance}}")], "short")
panel("Memory", "Resident memory of the server (memory maps of segments count as they are read).",
      [(f'process_resident_memory_bytes{{{I}}}', "{{instance}}")], "bytes")
end_row()
panel("Open files", "Open file descriptors (segments, indexes, journals, connections) against the limit.",
      [(f'process_open_fds{{{I}}}', "open {{instance}}"), (f'process_max_fds{{{I}}}', "limit {{instance}}")], "short")
panel("Threads", "OS threads: a worker per partition (two under durability always), the runtime's and the blocking pool's.",
      [(f'process_threads{{{I}}}', "{{instance}}")], "short")
panel("Build", "The version each instance runs, and since when.",
      [(f'max by (instance, version) (stele_build_info{{{I}}}) * on (instance) group_left process_start_time_seconds{{{I}}} * 1000', "{{instance}} {{version}}")],
      "dateTimeAsIso", kind="stat")
end_row()

def variable(name, label, query):
    return {"name": name, "label": label, "type": "query", "datasource": DS,
            "query": {"query": query, "refId": name}, "definition": query,
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "refresh": 2, "sort": 1}

dashboard = {
    "title": "Stele",
    "uid": "stele-overview",
    "description": "Stele event log: appends, durability, storage, consumers, consumer groups and webhook delivery. Alerts: deploy/prometheus/alerts.yml; runbooks: docs/runbooks/.",
    "tags": ["stele"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "templating": {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        variable("instance", "Instance", "label_values(stele_build_info, instance)"),
        variable("topic", "Topic", "label_values(stele_partition_high_watermark{instance=~\"$instance\"}, topic)"),
        variable("endpoint", "Webhook endpoint", "label_values(stele_webhook_attempts_total, endpoint)"),
        variable("group", "Consumer group", "label_values(stele_group_members, group)"),
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "stele.json"), "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")

