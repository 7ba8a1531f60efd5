"""Every Prometheus metric the twin exports, defined in one place.

Conventions: the ``bgmock_`` prefix, base units in the name (``_seconds``),
``_total`` on counters (prometheus-client adds it), and label values from small
fixed sets: never a transaction id, account or bankgood number. Dashboards and
alert rules are written against the names below.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

# KMinion-style buckets: start at 5 ms and double up past the payment SLA, so a 2 s
# flow and a 40 s stall both land in a real bucket.
LATENCY_BUCKETS = tuple(round(0.005 * 2**i, 3) for i in range(15))  # 5 ms .. 81.92 s
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
JOB_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# --- the twin itself -------------------------------------------------------------
TWIN_INFO = Info(
    "bgmock_twin",
    "Version, mode, instance of this twin and how it follows payments "
    "(following: kafka, or rest_polling when it runs without Kafka).",
)
SLO_TARGET = Gauge(
    "bgmock_slo_target",
    "Alert thresholds from the twin's settings (slo: success_ratio, p95_seconds, "
    "outbox_pending, outbox_age_seconds, consumer_lag, step_deadline_seconds, sla_seconds, "
    "reconciliation_max_age_seconds: three reconciliation intervals and a minute).",
    ["slo"],
)
TWIN_READY = Gauge("bgmock_twin_ready", "1 when the daemon is ready (scheduler running).")
FLEET_LEASE_HELD = Gauge(
    "bgmock_fleet_lease_held",
    "1 on the replica that holds the lease of a fleet-wide job (lease: canary, books), "
    "0 on the others; summed over the fleet, 1 while the job has a runner.",
    ["lease"],
)

# --- health probes -----------------------------------------------------------------
SERVICE_UP = Gauge(
    "bgmock_service_up", "1 if the last probe of the service succeeded.", ["service"]
)
PROBE_DURATION = Histogram(
    "bgmock_probe_duration_seconds", "Duration of health probes.", ["service"],
    buckets=PROBE_BUCKETS,
)
PROBE_FAILURES = Counter(
    "bgmock_probe_failures", "Failed health probes by reason.", ["service", "reason"]
)
SERVICE_LAST_UP = Gauge(
    "bgmock_service_last_up_timestamp_seconds",
    "Unix time of the last successful probe of the service.", ["service"],
)

# --- scheduler ---------------------------------------------------------------------
# The label is "task", not "job": a "job" label would clash with Prometheus' own.
JOB_RUNS = Counter(
    "bgmock_scheduler_job_runs", "Scheduled job runs by result.", ["task", "result"]
)
JOB_DURATION = Histogram(
    "bgmock_scheduler_job_duration_seconds", "Duration of scheduled job runs.", ["task"],
    buckets=JOB_BUCKETS,
)
JOB_MISSED = Counter(
    "bgmock_scheduler_job_missed", "Job runs skipped because they were too late.", ["task"]
)
JOB_MAX_INSTANCES = Counter(
    "bgmock_scheduler_job_max_instances",
    "Job runs skipped because the previous run was still going.", ["task"],
)

# --- REST calls to BGMock --------------------------------------------------------------
REST_REQUESTS = Counter(
    "bgmock_rest_requests", "REST calls to BGMock services by route template and status code.",
    ["service", "method", "route", "code"],
)
REST_DURATION = Histogram(
    "bgmock_rest_request_duration_seconds", "Duration of REST calls to BGMock services.",
    ["service", "method", "route"], buckets=LATENCY_BUCKETS,
)

# --- control API -----------------------------------------------------------------------
API_REQUESTS = Counter(
    "bgmock_api_requests", "Requests to the twin's control API.", ["method", "route", "code"]
)
API_AUTH_FAILURES = Counter(
    "bgmock_api_auth_failures",
    "Control-API requests refused for a missing or wrong bearer token.",
    ["reason"],
)
for _reason in ("missing", "scheme", "wrong_token"):
    API_AUTH_FAILURES.labels(reason=_reason)
API_RATE_LIMITED = Counter(
    "bgmock_api_rate_limited",
    "Control-API requests refused by a limit: kind is mutate or read (per-client budgets, "
    "429) or in_flight (too many requests at once, 503); client is authenticated, "
    "anonymous or any.",
    ["kind", "client"],
)
API_CONNECTIONS_CLOSED = Counter(
    "bgmock_api_connections_closed",
    "Control-API connections the twin closed: read_timeout (request headers or body not "
    "received in time) or evicted (the oldest idle connection, to admit a new one).",
    ["reason"],
)
for _reason in ("read_timeout", "evicted"):
    API_CONNECTIONS_CLOSED.labels(reason=_reason)

# --- Kafka -------------------------------------------------------------------------------
KAFKA_MESSAGES = Counter(
    "bgmock_kafka_messages",
    "Kafka events seen, by topic, payment status and whether the twin sent the payment.",
    ["topic", "status", "origin"],
)
KAFKA_MESSAGES_INVALID = Counter(
    "bgmock_kafka_messages_invalid", "Kafka messages skipped as invalid.", ["topic", "reason"]
)
KAFKA_CLIENT_ERRORS = Counter(
    "bgmock_kafka_client_errors", "Errors reported by the twin's Kafka clients.",
    ["client", "reason"],
)
KAFKA_CONSUMER_LAG = Gauge(
    "bgmock_kafka_consumer_lag", "Consumer group lag in messages, summed over partitions.",
    ["group", "topic"],
)
KAFKA_CONSUMER_LAG_ANOMALIES = Counter(
    "bgmock_kafka_consumer_lag_anomalies",
    "Negative lag readings clamped to zero (odd broker watermarks).", ["group", "topic"],
)
KAFKA_CONSUMER_LAG_SECONDS = Gauge(
    "bgmock_kafka_consumer_lag_seconds",
    "Age of the group's oldest unconsumed event per topic (the worst partition), "
    "interpolated from the high watermark's history; 0 without lag.", ["group", "topic"],
)
KAFKA_CONSUMER_GROUP_STATUS = Gauge(
    "bgmock_kafka_consumer_group_status",
    "Burrow-style status of the group over its window of readings: 1 for the current "
    "status (OK, UNKNOWN, WARN, STALL, STOP, MISSING, ERR), 0 for the others.",
    ["group", "status"],
)
KAFKA_CONSUMER_GROUP_MISSING = Gauge(
    "bgmock_kafka_consumer_group_missing",
    "1 while a watched group has no committed offset on the broker (a wrong name, or a "
    "group that never ran).", ["group"],
)
KAFKA_CONSUMER_LAST_PROGRESS = Gauge(
    "bgmock_kafka_consumer_last_progress_timestamp_seconds",
    "Unix time the group's committed offsets last moved (or it had no lag).", ["group"],
)

# --- synthetic payments ----------------------------------------------------------------
PAYMENTS_SUBMITTED = Counter(
    "bgmock_payments_submitted", "Synthetic payments submitted.", ["channel", "route"]
)
PAYMENTS_COMPLETED = Counter(
    "bgmock_payments_completed",
    "Synthetic payments that reached an outcome, by kind: normal payments should "
    "succeed, the deliberate failure kinds should not.",
    ["channel", "route", "kind", "outcome"],
)
PAYMENT_DURATION = Histogram(
    "bgmock_payment_duration_seconds",
    "Intended send time to settled at the source bank of normal (not deliberately "
    "failing) payments, on the twin's monotonic clock.",
    ["channel", "route"], buckets=LATENCY_BUCKETS,
)
PAYMENT_STEP_DURATION = Histogram(
    "bgmock_payment_step_duration_seconds",
    "Time from the previous step to this one.", ["step"], buckets=LATENCY_BUCKETS,
)
PAYMENTS_IN_FLIGHT = Gauge("bgmock_payments_in_flight", "Synthetic payments not yet finished.")
PAYMENTS_STUCK = Gauge(
    "bgmock_payments_stuck", "Payments past their step deadline, by the step they wait for.",
    ["step"],
)
PAYMENTS_DROPPED = Counter(
    "bgmock_payments_dropped",
    "Payments due but not sent because the concurrency bound was reached.",
)
PAYMENTS_UNCONFIRMED = Gauge(
    "bgmock_payments_unconfirmed",
    "REST payments whose 202 never reached the twin, still being looked for at the bank.",
)
PAYMENTS_REMATCHED = Counter(
    "bgmock_payments_rematched",
    "Unconfirmed REST payments resolved without their 202, by how: initiated_event, "
    "bank_database, or not_sent (a killed twin's payment the bank never stored).",
    ["matched_by"],
)
PAYMENT_TRIPLES_SHARED = Counter(
    "bgmock_payment_triples_shared",
    "Payments sent while another in flight had the same payer, bankgood number and "
    "amount (a fixed amount; re-matching either would be ambiguous).",
)
SEND_LAG = Histogram(
    "bgmock_payment_send_lag_seconds", "Actual minus intended send time.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SIMULATIONS_ACTIVE = Gauge("bgmock_simulations_active", "Simulations currently running.")
LEDGER_WRITE_ERRORS = Counter(
    "bgmock_ledger_write_errors", "Failed writes to the twin's ledger database."
)
LEDGER_DROPPED = Counter(
    "bgmock_ledger_dropped", "Ledger writes dropped because the buffer was full."
)
LEDGER_BUFFERED = Gauge(
    "bgmock_ledger_buffered",
    "Ledger rows not yet stored: waiting for the database (the books are unknown while "
    "rows written before a reconciliation stay unwritten).",
)
LEDGER_SPILLED = Counter(
    "bgmock_ledger_spilled_rows",
    "Unwritten ledger rows kept in a spill file when the twin stopped.",
)
LEDGER_SPILL_RESTORED = Counter(
    "bgmock_ledger_spill_restored_rows",
    "Rows read back from spill files into the ledger at start.",
)

# --- books -----------------------------------------------------------------------------
BALANCE_DRIFT = Gauge(
    "bgmock_balance_drift", "Sum of |expected - actual| balance of the twin's accounts.", ["bank"]
)
DRIFTING_ACCOUNTS = Gauge(
    "bgmock_balance_drifting_accounts", "Twin accounts whose balance differs from the model.",
    ["bank"],
)
ACCOUNT_BALANCE = Gauge(
    "bgmock_account_balance",
    "Sum of the balances of the twin's accounts at a bank, as the bank reports them "
    "(accounts read at the last reconciliation).", ["bank"],
)
ACCOUNT_RESERVED = Gauge(
    "bgmock_account_reserved",
    "Sum of the reserved balances of the twin's accounts at a bank, as reported.", ["bank"],
)
ACCOUNT_BALANCE_EXPECTED_MIN = Gauge(
    "bgmock_account_balance_expected_min",
    "Lower bound of the same sum as the twin's books expect it (payments in flight "
    "widen the range).", ["bank"],
)
ACCOUNT_BALANCE_EXPECTED_MAX = Gauge(
    "bgmock_account_balance_expected_max",
    "Upper bound of the same sum as the twin's books expect it.", ["bank"],
)
INVARIANT_VIOLATIONS = Gauge(
    "bgmock_invariant_violations", "Current violations per reconciliation check.", ["check"]
)
INVARIANT_DETECTIONS = Counter(
    "bgmock_invariant_violations_detected", "Every violation detection.", ["check"]
)
RECONCILIATION_UNKNOWN = Gauge(
    "bgmock_reconciliation_check_unknown",
    "1 when a check could not run (its data source was unreachable).", ["check"],
)
RECONCILIATION_LAST_RUN = Gauge(
    "bgmock_reconciliation_last_run_timestamp_seconds", "Unix time of the last reconciliation."
)
OUTBOX_PENDING = Gauge(
    "bgmock_outbox_pending", "Unpublished outbox rows.", ["service"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "bgmock_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.", ["service"]
)

# --- embedded emulator (only exported when the daemon runs it) ----------------------------
EMULATOR_EVENTS = Counter(
    "bgmock_emulator_events",
    "Events consumed by the emulated services, by what the handler did (handled, duplicate, "
    "foreign_key, null_key, invalid, unknown_transaction, error).",
    ["service", "topic", "result"],
)
EMULATOR_OUTBOX_PUBLISHED = Counter(
    "bgmock_emulator_outbox_published", "Outbox rows the emulated services published.",
    ["service"],
)
EMULATOR_OPTIMISTIC_LOCK_FAILURES = Counter(
    "bgmock_emulator_optimistic_lock_failures",
    "Account writes of the emulated banks that lost a race on the account's version "
    "(origin: rest, answered 500 with nothing stored; listener, the record retried).",
    ["service", "origin"],
)
EMULATOR_OUTBOX_FAILURES = Counter(
    "bgmock_emulator_outbox_publish_failures",
    "Outbox publishing rounds that failed (reason: bus, database, unexpected).",
    ["service", "reason"],
)
