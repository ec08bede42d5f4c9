"""Messages: templates and locales, the outbox's dispatch, send-time policy and tracking."""
