"""Every table, in SQLAlchemy Core. Changes here need an Alembic migration."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from nurture.store.types import BigId, Json, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # write | admin
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),  # shown in listings; not enough to use
    Column("name", String(200), nullable=False, server_default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)

contacts = Table(
    "contacts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("user_id", String(255), unique=True),
    Column("email", String(320)),
    Column("phone", String(32)),
    Column("country", String(2)),
    Column("timezone", String(64)),
    Column("locale", String(35)),
    Column("traits", Json, nullable=False),
    # Trait values that failed validation, by trait path: kept as given in `traits`.
    Column("trait_issues", Json, nullable=False),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Set when this contact was merged into another; the row stays as a tombstone.
    Column("merged_into", BigId),
    Index(None, "email"),
    Index(None, "phone"),
    Index(None, "merged_into"),  # tombstones of a contact (profile, export, erase, merge)
)

identities = Table(
    "identities",
    metadata,
    Column("kind", String(16), nullable=False),  # user_id | anonymous_id
    Column("value", String(255), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("kind", "value"),
    Index(None, "contact_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", String(255)),  # track event name, or page/screen name
    Column("contact_id", BigId, nullable=False),
    Column("user_id", String(255)),
    Column("anonymous_id", String(255)),
    Column("group_id", String(255)),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("original_timestamp", UTCDateTime),
    Column("properties", Json),
    Column("traits", Json),
    Column("context", Json),
    UniqueConstraint("message_id"),
    Index(None, "contact_id", "timestamp"),
    # Segments: "who did X (how often, when)" reads this index only, grouped by contact.
    Index(None, "event", "type", "contact_id", "timestamp"),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("group_id", String(255), nullable=False, unique=True),
    Column("name", String(500)),
    Column("traits", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

account_members = Table(
    "account_members",
    metadata,
    Column("account_id", BigId, nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("joined_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("account_id", "contact_id"),
    Index(None, "contact_id"),
)

contact_merges = Table(
    "contact_merges",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("from_contact_id", BigId, nullable=False),
    Column("into_contact_id", BigId, nullable=False),
    Column("reason", String(16), nullable=False),  # identify | alias
    Column("message_id", String(255)),
    Column("merged_at", UTCDateTime, nullable=False),
    Index(None, "into_contact_id"),
)

rejected_events = Table(
    "rejected_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("source", String(500), nullable=False),  # http:/v1/batch, import:file.jsonl:12, ...
    Column("code", String(64), nullable=False),
    Column("path", String(500)),
    Column("message", Text, nullable=False),
    Column("message_id", String(255)),
    # The input as received: the request body, or the one message re-serialised as JSON.
    Column("raw", Text),
    Column("size", Integer, nullable=False),
    Column("replayed_at", UTCDateTime),
    Column("replay_result", String(32)),  # accepted | duplicate | rejected
    Index(None, "replayed_at", "id"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("hash", String(64), primary_key=True),  # sha256(salt + normalised address)
    Column("kind", String(16), nullable=False),  # email | phone
    # erased | bounced | complained | stop | manual
    Column("reason", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("detail", Text),  # the bounce diagnostic, the reply, who added it
)

erasures = Table(
    "erasures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("contact_id", BigId, nullable=False),
    Column("events_deleted", Integer, nullable=False),
    Column("erased_at", UTCDateTime, nullable=False),
)

# Definitions kept as data: segments, computed traits, stage models and score models,
# whether they came from project files or through the admin API.
definitions = Table(
    "definitions",
    metadata,
    Column("kind", String(32), nullable=False),  # segment | computed | stage_model | score_model
    Column("key", String(200), nullable=False),
    Column("name", String(500), nullable=False, server_default=""),
    Column("body", Json, nullable=False),
    Column("source", String(16), nullable=False),  # file | api | preset
    Column("status", String(16), nullable=False, server_default="active"),  # active | failed
    Column("error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("evaluated_at", UTCDateTime),
    PrimaryKeyConstraint("kind", "key"),
)

segment_memberships = Table(
    "segment_memberships",
    metadata,
    Column("segment_key", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("entered_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("segment_key", "contact_id"),
    Index(None, "contact_id"),
)

segment_changes = Table(
    "segment_changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("segment_key", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("change", String(8), nullable=False),  # entered | exited
    Column("changed_at", UTCDateTime, nullable=False),
    Index(None, "segment_key", "changed_at"),
    Index(None, "contact_id"),
)

contact_stages = Table(
    "contact_stages",
    metadata,
    Column("model", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("stage", String(200), nullable=False),
    Column("since", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("model", "contact_id"),
    Index(None, "contact_id"),
)

stage_changes = Table(
    "stage_changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("from_stage", String(200)),
    Column("to_stage", String(200), nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Index(None, "model", "changed_at"),
    Index(None, "contact_id"),
)

contact_scores = Table(
    "contact_scores",
    metadata,
    Column("model", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("score", Float, nullable=False),
    Column("temperature", String(64), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("model", "contact_id"),
    Index(None, "contact_id"),
)

score_changes = Table(
    "score_changes",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("model", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("from_temperature", String(64)),
    Column("to_temperature", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Index(None, "model", "changed_at"),
    Index(None, "contact_id"),
)

# Consent per channel and topic, with its proof. A missing row means "unknown".
consents = Table(
    "consents",
    metadata,
    Column("contact_id", BigId, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("topic", String(100), nullable=False),
    Column("state", String(16), nullable=False),  # granted | denied | pending
    Column("source", String(200)),
    Column("ip", String(64)),
    Column("wording", Text),
    Column("recorded_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("contact_id", "channel", "topic"),
)

# Contacts whose memberships, stages and scores need evaluating: written in the ingest
# transaction that stored their events, deleted in the transaction that evaluated them.
pending_evaluations = Table(
    "pending_evaluations",
    metadata,
    Column("contact_id", BigId, primary_key=True, autoincrement=False),
    Column("queued_at", UTCDateTime, nullable=False),
    # Raised each time the contact is queued again before being evaluated.
    Column("seq", Integer, nullable=False, server_default="0"),
    # Evaluate every definition (a new or merged contact), not only those the arrived
    # events can change.
    Column("full", Boolean, nullable=False, server_default=false()),
    Index(None, "queued_at"),
)

# Which events arrived for a queued contact since its last evaluation, by (type, name):
# real-time evaluation only re-evaluates the segments that read them.
pending_arrivals = Table(
    "pending_arrivals",
    metadata,
    Column("contact_id", BigId, nullable=False),
    Column("type", String(16), nullable=False),
    Column("event", String(255), nullable=False),  # "" for messages without a name
    PrimaryKeyConstraint("contact_id", "type", "event"),
)

# Population-wide values the evaluators share (RFM quintile bounds), by key.
evaluation_state = Table(
    "evaluation_state",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("value", Json, nullable=False),
    Column("computed_at", UTCDateTime, nullable=False),
)

# -- journeys ----------------------------------------------------------------------------
# A journey: its draft, which version is published, and whether it runs.
journeys = Table(
    "journeys",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("name", String(500), nullable=False, server_default=""),
    Column("status", String(16), nullable=False),  # draft | active | paused | archived
    Column("draft", Json),  # the definition being edited; None once published unchanged
    Column("version", Integer),  # the published version new enrolments start on
    Column("source", String(16), nullable=False),  # file | api
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Date and schedule triggers: the moment up to which entries have been made.
    Column("scanned_to", UTCDateTime),
)

# Published versions, immutable: running enrolments finish on the one they started on.
journey_versions = Table(
    "journey_versions",
    metadata,
    Column("journey_key", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("body", Json, nullable=False),
    Column("published_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("journey_key", "version"),
)

# One row per contact per entry into a journey; nothing of a journey waits in memory.
enrolments = Table(
    "enrolments",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("journey_key", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("contact_id", BigId, nullable=False),
    # active | completed | converted | exited | failed (parked with its error)
    Column("status", String(16), nullable=False),
    Column("control", Boolean, nullable=False),  # holdout: enrolled, never messaged
    Column("step", String(200)),  # the step to run at due_at
    Column("due_at", UTCDateTime),
    Column("seq", Integer, nullable=False),  # steps run so far: names each run once
    Column("attempts", Integer, nullable=False),  # failed tries of the current step
    Column("last_error", Text),
    Column("entry_key", String(255), nullable=False),  # what started it (idempotent entry)
    # One live enrolment per contact and journey, unless its re-entry is `always`.
    Column("exclusive", Boolean, nullable=False),
    Column("context", Json, nullable=False),
    Column("entered_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("end_reason", String(500)),
    Column("converted_at", UTCDateTime),
    Column("revenue", Float),
    UniqueConstraint("journey_key", "entry_key"),
    Index(
        "ix_enrolments_due",
        "due_at",
        sqlite_where=text("status = 'active'"),
        postgresql_where=text("status = 'active'"),
    ),
    Index(
        "uq_enrolments_live",
        "journey_key",
        "contact_id",
        unique=True,
        sqlite_where=text("status = 'active' AND exclusive"),
        postgresql_where=text("status = 'active' AND exclusive"),
    ),
    Index(None, "contact_id", "status"),
    Index(None, "journey_key", "status"),
    # Enrolments ended in a time range (the journey report's rollups, analytics/rollups.py).
    Index(
        "ix_enrolments_journey_ended",
        "journey_key",
        "ended_at",
        sqlite_where=text("ended_at IS NOT NULL"),
        postgresql_where=text("ended_at IS NOT NULL"),
    ),
)

# Every step an enrolment ran, once (the primary key is the proof): metrics per step.
journey_steps = Table(
    "journey_steps",
    metadata,
    Column("enrolment_id", BigId, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("journey_key", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("step", String(200), nullable=False),
    Column("contact_id", BigId, nullable=False),
    Column("outcome", String(200), nullable=False),
    Column("executed_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("enrolment_id", "seq"),
    Index(None, "contact_id"),
)

# Messages journeys decided to send, written in the transaction of the step; dispatch
# sends them. The idempotency key names the step run, so a retried step writes nothing.
outbox = Table(
    "outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(255), nullable=False, unique=True),
    Column("contact_id", BigId, nullable=False),
    Column("enrolment_id", BigId),
    Column("journey_key", String(200)),
    Column("version", Integer),
    Column("step", String(200)),
    Column("channel", String(16), nullable=False),
    Column("template", String(200)),
    Column("variant", String(200)),
    Column("kind", String(16), nullable=False),  # marketing | transactional | notification
    Column("topic", String(100)),
    Column("recipient", String(320)),  # a person to notify; None: the contact
    Column("payload", Json, nullable=False),
    # queued -> sending -> sent -> delivered | bounced | complained; or skipped | failed.
    # A held or delayed message stays queued with a later send_after and its rule set.
    Column("status", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("send_after", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # Answers asking to slow down (429, Throttling): not failed tries, but not endless either.
    Column("throttles", Integer, nullable=False, server_default="0"),
    Column("rule", String(32)),  # the policy rule or error code that last held it
    Column("reason", Text),  # what a person reads: which rule, or the provider's answer
    Column("provider", String(32)),
    Column("provider_id", String(255)),
    Column("address", String(320)),  # where it went: the email, phone or push endpoint
    Column("lease_until", UTCDateTime),  # a dispatcher holds it while sending
    Column("sent_at", UTCDateTime),
    Column("updated_at", UTCDateTime),
    # A lease ran out after the provider may have accepted it: sent again with the same
    # idempotency key, and marked, because a provider without one may deliver it twice.
    Column("flagged", Boolean, nullable=False, server_default=false()),
    Index(None, "status", "send_after"),
    Index(None, "contact_id", "channel", "sent_at"),
    Index(None, "journey_key", "step"),
    # Feedback finds its message by the provider's id; a queued message has none, and a
    # due step inserting one adds no entry here (migration 0015).
    Index(
        None,
        "provider_id",
        sqlite_where=text("provider_id IS NOT NULL"),
        postgresql_where=text("provider_id IS NOT NULL"),
    ),
    # Messages not sent, by when they were made (the rollups count them so).
    Index(
        "ix_outbox_unsent",
        "created_at",
        "journey_key",
        sqlite_where=text("sent_at IS NULL"),
        postgresql_where=text("sent_at IS NULL"),
    ),
)

# Every consent change with its proof (the current state is in `consents`).
consent_history = Table(
    "consent_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("contact_id", BigId, nullable=False),
    Column("channel", String(16), nullable=False),
    Column("topic", String(100), nullable=False),
    Column("state", String(16), nullable=False),
    Column("source", String(200)),
    Column("ip", String(64)),
    Column("wording", Text),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index(None, "contact_id"),
)

push_subscriptions = Table(
    "push_subscriptions",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("contact_id", BigId, nullable=False),
    Column("endpoint", String(2000), nullable=False, unique=True),
    Column("p256dh", String(200), nullable=False),
    Column("auth", String(100), nullable=False),
    Column("user_agent", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expired_at", UTCDateTime),  # the push service answered 404/410
    Index(None, "contact_id"),
)

# Provider feedback (delivery, bounce, complaint, open, click, reply) as received, once
# per provider event; applied to its message when the message's send is recorded, so
# feedback that arrives first waits here instead of being lost.
message_feedback = Table(
    "message_feedback",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("provider", String(32), nullable=False),
    Column("event_key", String(255), nullable=False),  # the provider's event id, or a hash
    Column("provider_id", String(255)),  # the provider's message id
    Column("outbox_id", BigId),
    Column("type", String(32), nullable=False),  # delivered | bounced | complained | ...
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("payload", Json, nullable=False),
    Column("applied_at", UTCDateTime),
    UniqueConstraint("provider", "event_key"),
    Index(None, "provider_id"),
    Index(None, "outbox_id"),
    Index(None, "applied_at"),
)

# Events journeys react to (triggers, goals, exits, waits), queued in the transaction
# that stored them; the journey worker consumes them in order.
journey_inbox = Table(
    "journey_inbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("message_id", String(255), nullable=False),  # of the event, in `events`
    Column("contact_id", BigId, nullable=False),
    Column("queued_at", UTCDateTime, nullable=False),
)

# -- experiments (analytics/winners.py) -------------------------------------------------
# A split step's automatic winner, decided once per journey version and step: the primary
# key makes the first writer win when several workers decide at the same time.
experiment_winners = Table(
    "experiment_winners",
    metadata,
    Column("journey_key", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("step", String(200), nullable=False),
    Column("winner", String(200), nullable=False),  # the path name
    Column("decided_at", UTCDateTime, nullable=False),
    Column("statistics", Json, nullable=False),  # the figures the decision rests on
    PrimaryKeyConstraint("journey_key", "version", "step"),
)
# -- end experiments ----------------------------------------------------------------------

# -- clv (analytics/clv_store.py) ------------------------------------------------------
# A fitted customer-lifetime-value model (BG/NBD + Gamma-Gamma), one row per key: what
# `clv_predictions` were computed with.
clv_models = Table(
    "clv_models",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("parameters", Json, nullable=False),  # {bgnbd: {r, alpha, a, b}, gamma_gamma: ...}
    Column("log_likelihood", Float, nullable=False),  # of the BG/NBD fit
    Column("customers", Integer, nullable=False),
    Column("fit", Json, nullable=False),  # both fits' statistics, calibration end, horizon
    Column("settings", Json, nullable=False),  # the clv setting used
    Column("fitted_at", UTCDateTime, nullable=False),
)

# Each customer's predictions under a model, replaced whole by each fit. `T` is the time
# from the first purchase to the calibration end, in the model's unit (as in the papers).
clv_predictions = Table(
    "clv_predictions",
    metadata,
    Column("contact_id", BigId, nullable=False),
    Column("model", String(64), nullable=False),
    Column("x", Integer, nullable=False),  # repeat purchase days
    Column("t_x", Float, nullable=False),
    Column("T", Float, nullable=False),
    Column("monetary", Float),  # mean revenue of the repeat purchases; none when x = 0
    Column("p_alive", Float, nullable=False),
    Column("expected_purchases", Float, nullable=False),
    Column("expected_spend", Float),  # none without a spend model
    Column("expected_value", Float),
    Column("computed_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("contact_id", "model"),
    Index(None, "model", "expected_value"),  # top customers
)
# Analytics rows kept per contact: what erasure removes.
ANALYTICS_BY_CONTACT = (clv_predictions,)
# -- end clv ----------------------------------------------------------------------------

# -- journey metrics rollups (analytics/rollups.py) -------------------------------------
# Which 15-minute buckets of which journey ('' for messages outside journeys) have rows
# that changed since their rollup was last computed. Triggers on enrolments, journey_steps,
# outbox and message_feedback write them (migration 0013), so no write path can forget.
# `tx` is the writing transaction on PostgreSQL (0 on SQLite): a refresh deletes exactly
# the marks it saw, never one of a transaction it could not see.
metric_marks = Table(
    "metric_marks",
    metadata,
    Column("journey_key", String(200), nullable=False),
    Column("bucket", UTCDateTime, nullable=False),
    Column("tx", BigInteger, nullable=False),
    PrimaryKeyConstraint("journey_key", "bucket", "tx"),
)

# The journey report's counts per journey and bucket of UTC time (15 minutes, and their sums
# per hour and per UTC day, so that a report adds up few rows), by kind:
# entered | converted (by version, with the control share and revenue), ended (by status,
# reason, step, version, control), run (steps run, by version and step), message (by
# journey, version, step, template, variant, channel and status: sent and not sent, and
# the feedback folded per message). A pure function of the rows; rebuilt per bucket.
metric_rollups = Table(
    "metric_rollups",
    metadata,
    Column("journey_key", String(200), nullable=False),
    Column("bucket", UTCDateTime, nullable=False),
    Column("span", Integer, nullable=False),  # minutes: 15, 60 or 1440 (a UTC day)
    Column("kind", String(16), nullable=False),
    Column("version", Integer),
    Column("step", String(200)),
    Column("template", String(200)),
    Column("variant", String(200)),
    Column("channel", String(16)),
    Column("status", String(16)),
    Column("end_reason", String(500)),
    Column("control", Boolean),
    Column("n", BigInteger, nullable=False),
    Column("control_n", BigInteger, nullable=False),
    Column("unsent", BigInteger, nullable=False),
    Column("revenue", Float, nullable=False),
    Column("opened", BigInteger, nullable=False),
    Column("opens", BigInteger, nullable=False),
    Column("machine_opened", BigInteger, nullable=False),
    Column("machine_opens", BigInteger, nullable=False),
    Column("clicked", BigInteger, nullable=False),
    Column("clicks", BigInteger, nullable=False),
    Column("machine_clicked", BigInteger, nullable=False),
    Column("machine_clicks", BigInteger, nullable=False),
    Column("unsubscribed", BigInteger, nullable=False),
    Column("complained", BigInteger, nullable=False),
    Index(None, "journey_key", "span", "bucket"),
)
# -- end journey metrics rollups --------------------------------------------------------

# Every row journeys keep per contact: what erasure removes.
JOURNEYS_BY_CONTACT = (enrolments, journey_steps, outbox, journey_inbox)
# Messaging rows kept per contact: what erasure removes.
MESSAGES_BY_CONTACT = (consent_history, push_subscriptions)

# Every row evaluation keeps per contact: what erasure removes and a reset forgets.
EVALUATION_BY_CONTACT = (
    segment_memberships,
    segment_changes,
    contact_stages,
    stage_changes,
    contact_scores,
    score_changes,
    pending_evaluations,
    pending_arrivals,
)

# -- analytics: covering indexes for journey and message metrics (migration 0012) -------
# Each report query reads one of these instead of its table, grouping by its leading
# columns so that SQLite streams instead of sorting (analytics/journey_queries.py).
# Those of rows a due step does not write (converted or ended enrolments, sent messages)
# are partial (migration 0015): a step, which updates its enrolment and inserts a
# message, adds no entry to them.
_CONVERTED = text("converted_at IS NOT NULL")
_ENDED = text("ended_at IS NOT NULL")
_SENT = text("sent_at IS NOT NULL")
Index(
    "ix_enrolments_entered",
    enrolments.c.journey_key,
    enrolments.c.version,
    enrolments.c.entered_at,
    enrolments.c.control,
)
Index(
    "ix_enrolments_converted",
    enrolments.c.journey_key,
    enrolments.c.version,
    enrolments.c.converted_at,
    enrolments.c.control,
    enrolments.c.revenue,
    sqlite_where=_CONVERTED,
    postgresql_where=_CONVERTED,
)
Index(
    "ix_enrolments_ended",
    enrolments.c.journey_key,
    enrolments.c.status,
    enrolments.c.end_reason,
    enrolments.c.step,
    enrolments.c.version,
    enrolments.c.control,
    enrolments.c.ended_at,
    sqlite_where=_ENDED,
    postgresql_where=_ENDED,
)
# Steps run, per step and time (the rollups' ranges, experiments), with the version.
Index(
    "ix_journey_steps_runs",
    journey_steps.c.journey_key,
    journey_steps.c.step,
    journey_steps.c.executed_at,
    journey_steps.c.version,
)
Index(
    "ix_outbox_journey_message",
    outbox.c.journey_key,
    outbox.c.version,
    outbox.c.step,
    outbox.c.template,
    outbox.c.variant,
    outbox.c.channel,
    outbox.c.status,
    outbox.c.sent_at,
    outbox.c.created_at,
    outbox.c.id,
    sqlite_where=_SENT,
    postgresql_where=_SENT,
)
Index(
    "ix_outbox_journey_sent",
    outbox.c.journey_key,
    outbox.c.sent_at,
    outbox.c.status,
    outbox.c.version,
    outbox.c.step,
    outbox.c.template,
    outbox.c.variant,
    outbox.c.channel,
    outbox.c.created_at,
    outbox.c.id,
    sqlite_where=_SENT,
    postgresql_where=_SENT,
)
Index("ix_message_feedback_outbox_type", message_feedback.c.outbox_id, message_feedback.c.type)
# -- end of analytics indexes ------------------------------------------------------------
