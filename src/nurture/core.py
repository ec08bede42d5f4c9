"""The core object: settings, clock, database and the services built on them.

Doors (HTTP API, CLI) receive one `Nurture` and call its services; they hold no
business logic of their own.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import cached_property, partial
from typing import Any

from sqlalchemy import Connection

from nurture.analytics.rollups import RollupRunner
from nurture.channels.base import Channel, Failed
from nurture.channels.config import ChannelsConfig, build_channels
from nurture.channels.subscriptions import PushSubscriptions
from nurture.clock import Clock, SystemClock
from nurture.contacts.privacy import PrivacyService
from nurture.contacts.service import ContactService
from nurture.ingest.rejected import RejectedStore
from nurture.ingest.service import BatchResult, IngestStore, ParsedBatch, parse_batch
from nurture.ingest.writer import IngestWriter
from nurture.journeys.runner import JourneyRunner
from nurture.journeys.runtime import JourneyRuntime, Options
from nurture.journeys.service import JourneyService
from nurture.keys import KeyStore
from nurture.lifecycle.service import LifecycleService
from nurture.messages.compose import Composer, Sender
from nurture.messages.consent import ConsentService
from nurture.messages.dispatch import Dispatcher, DispatchOptions
from nurture.messages.feedback import FeedbackService
from nurture.messages.feedback_hooks import ProviderHooks
from nurture.messages.policy_config import PolicyConfig
from nurture.messages.providers import FeedbackConfig
from nurture.messages.runner import DispatchRunner
from nurture.messages.service import MessageService
from nurture.messages.suppression import Suppressions
from nurture.messages.templates import TemplateService
from nurture.messages.tracking import Tracker, TrackingConfig
from nurture.project import Project
from nurture.segments.engine import Engine
from nurture.segments.runner import EvaluationRunner
from nurture.segments.service import SegmentService
from nurture.settings import Settings, load_settings, secret
from nurture.store import Database
from nurture.webhooks import HttpWebhookCaller, WebhookCaller


class Nurture:
    """One running Nurture: use `start()` before ingesting and `stop()` at the end."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        db: Database | None = None,
        background: bool = False,
        webhooks: WebhookCaller | None = None,
        channels: dict[str, Channel] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.clock = clock or SystemClock()
        self.db = db or Database(
            self.settings.database_url, sqlite_synchronous=self.settings.sqlite_synchronous
        )
        self.keys = KeyStore(self.db, self.clock)
        self.writer = IngestWriter(
            self.db,
            self.clock,
            IngestStore(self.settings.default_phone_region),
            max_messages=self.settings.ingest_group_max_messages,
        )
        self.contacts = ContactService(self.db, self.clock)
        self.privacy = PrivacyService(self.db, self.clock)
        self.push_subscriptions = PushSubscriptions(self.db, self.clock)
        self.suppressions = Suppressions(
            self.db, self.clock, region=self.settings.default_phone_region
        )
        # Validated again because tests build Settings with model_construct (no validation).
        self.policy = PolicyConfig.model_validate(self.settings.policy)
        self.consent = ConsentService(
            self.db, self.clock, self.link_secret, confirm_ttl=self.policy.confirm_expires
        )
        self.rejected = RejectedStore(self.db, self)
        self.engine = Engine(self.db, self.clock, threads=self.settings.evaluation_threads)
        self.segments = SegmentService(self.db, self.clock, self.engine)
        self.lifecycle = LifecycleService(self.db, self.clock, self.engine)
        self.journey_runtime = JourneyRuntime(
            self.db,
            self.clock,
            self.engine,
            webhooks or HttpWebhookCaller(),
            Options(
                default_timezone=self.settings.default_timezone,
                step_attempts=self.settings.journey_step_attempts,
                batch=self.settings.journey_batch,
                secret=secret,
            ),
        )
        self.journeys = JourneyService(self.journey_runtime, self.settings.project_dir)
        self.templates = TemplateService(
            self.db,
            self.clock,
            self.settings.project_dir,
            engine=self.engine,
            default_timezone=self.settings.default_timezone,
        )
        self.messages = MessageService(self.db, self.clock)
        # Tracking links and provider feedback (docs/tracking.md).
        self.tracker = Tracker(
            self.settings.base_url, self.link_secret, self.settings.tracking or TrackingConfig()
        )
        self.feedback = FeedbackService(self.db, self.clock, self.suppressions, self.consent)
        self.provider_hooks = ProviderHooks(
            self.settings.feedback or FeedbackConfig(), self.settings.base_url, self.clock, secret
        )
        self._channels = channels
        self.project = Project(
            self.settings.project_dir, self.db, self.clock, self.journeys, self.templates
        )
        # The evaluator thread runs only where asked (the server); tests and commands
        # call the engine themselves.
        self.runner: EvaluationRunner | None = None
        if background and self.settings.evaluate_in_process:
            self.runner = EvaluationRunner(
                self.engine,
                refresh_seconds=self.settings.evaluation_refresh_seconds,
                batch=self.settings.evaluation_batch,
            )
            self.writer.on_queued.append(self.runner.notify)
            if self.settings.evaluate_at_ingest:
                self.writer.in_transaction.append(
                    partial(self.engine.evaluate_at_ingest, limit=self.settings.evaluate_at_ingest)
                )
        self.journey_runner: JourneyRunner | None = None
        if background and self.settings.journeys_in_process:
            self.journey_runner = JourneyRunner(self.journey_runtime)
            self.writer.on_commit.append(self.journey_runner.notify)
            # Evaluation's system events (segment.entered, ...) trigger journeys too.
            wake = self.journey_runner.notify
            self.engine.on_evaluated.append(lambda _waits: wake())
        self.dispatch_runner: DispatchRunner | None = None
        if background and self.settings.dispatch_in_process:
            self.dispatch_runner = DispatchRunner(self.dispatcher)
            dispatch = self.dispatch_runner.notify
            self.journey_runtime.on_steps.append(lambda _timing: dispatch())
        self.rollup_runner: RollupRunner | None = None
        if background and self.settings.rollups_in_process:
            self.rollup_runner = RollupRunner(
                self.db, self.clock, poll_seconds=self.settings.rollup_seconds
            )
        self._started = False

    @cached_property
    def channels_config(self) -> ChannelsConfig:
        # Validated again: settings built with model_construct (tests) keep plain dicts.
        return ChannelsConfig.model_validate(self.settings.channels)

    @cached_property
    def channels(self) -> dict[str, Channel]:
        """The adapter of each channel, built when first needed, so that a missing
        provider secret stops sending, not every command."""
        if self._channels is None:
            self._channels = build_channels(self.channels_config, secret=secret)
        return self._channels

    @cached_property
    def dispatcher(self) -> Dispatcher:
        """Sends the outbox (`run_due`); the dispatch thread and `nurture worker` use it."""
        config = self.channels_config
        sender = Sender(
            email_from=config.email_from or Sender.email_from,
            reply_to=config.reply_to,
            sms_from=config.sms_from,
        )
        return Dispatcher(
            self.db,
            self.clock,
            channels=self.channels,
            composer=Composer(
                self.templates,
                self.tracker,
                sender,
                engine=self.engine,
                default_timezone=self.settings.default_timezone,
            ),
            policy=self.policy,
            default_timezone=self.settings.default_timezone,
            on_recorded=self.feedback.apply_pending,
            on_bounce=self._suppress_bounce,
            options=DispatchOptions(
                batch=self.settings.dispatch_batch, attempts=self.settings.dispatch_attempts
            ),
            rates=config.rates(),
        )

    def _suppress_bounce(self, conn: Connection, channel: str, address: str, why: Failed) -> None:
        # A provider refused the address itself at send time (unknown user, not a mobile).
        if channel == "email":
            self.suppressions.add("email", address, "bounced", why.error, conn=conn)
        elif channel in ("sms", "voice"):
            # Twilio 21610: the number replied STOP to us before (START lifts it).
            if why.code == "twilio_21610":
                self.suppressions.add("phone", address, "stop", why.error, conn=conn)
            else:
                self.suppressions.add("phone", address, "bounced", why.error, conn=conn)
        elif channel == "push":  # the browser dropped the subscription (404/410)
            self.push_subscriptions.expire(conn, address)

    def link_secret(self) -> str:
        """The key that signs links in messages: `secret_key`, else one derived from the
        installation's random salt (kept in the database, so every process agrees)."""
        if self.settings.secret_key is not None:
            return self.settings.secret_key.get_secret_value()
        salt = self.db.meta_value("salt")
        if salt is None:
            raise RuntimeError("the database has no salt; run migrations first")
        return hashlib.sha256(f"links:{salt}".encode()).hexdigest()

    def start(self) -> Nurture:
        """Migrate the schema and start the ingest writer (idempotent)."""
        if not self._started:
            self.db.migrate()
            self.db.start_checkpointer()
            self.writer.start()
            if self.runner is not None:
                self.runner.start()
            if self.journey_runner is not None:
                self.journey_runner.start()
            if self.dispatch_runner is not None:
                self.dispatch_runner.start()
            if self.rollup_runner is not None:
                self.rollup_runner.start()
            self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            if self.runner is not None:
                self.runner.stop()
            if self.journey_runner is not None:
                self.journey_runner.stop()
            if self.dispatch_runner is not None:
                self.dispatch_runner.stop()
            if self.rollup_runner is not None:
                self.rollup_runner.stop()
            self.writer.stop()
            self.db.stop_checkpointer()
            self._started = False
        self.db.dispose()

    def __enter__(self) -> Nurture:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def parse(
        self,
        raws: list[Any],
        *,
        source: str,
        default_type: str | None = None,
        received_at: datetime | None = None,
        **batch: Any,
    ) -> ParsedBatch:
        """Validate messages as the HTTP API would (no I/O). `received_at` defaults to
        now; a replay passes the time the input first arrived."""
        return parse_batch(
            raws,
            received_at=received_at or self.clock.now(),
            source=source,
            max_message_bytes=self.settings.max_message_bytes,
            default_type=default_type,
            **batch,
        )

    def ingest(self, raws: list[Any], *, source: str = "api", **batch: Any) -> BatchResult:
        """Validate and store messages; returns after the commit."""
        return self.writer.ingest(self.parse(raws, source=source, **batch))
