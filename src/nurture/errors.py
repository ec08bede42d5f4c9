"""One exception tree. Every error has a stable code, a message a person can act on,
and where it applies, the path of the bad field (`batch[3].timestamp`)."""

from __future__ import annotations


class NurtureError(Exception):
    """Base of every error Nurture raises on purpose."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, path: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "path": self.path}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(NurtureError):
    """A setting is missing or wrong."""

    code = "invalid_setting"


class ValidationError(NurtureError):
    """Input does not have the shape or values it must have."""

    code = "invalid"


class PayloadTooLarge(NurtureError):
    """A request or one message is over its size limit."""

    code = "payload_too_large"
    http_status = 413


class Unauthorized(NurtureError):
    """No credentials, or credentials that do not match a key."""

    code = "unauthorized"
    http_status = 401


class Forbidden(NurtureError):
    """A valid key that may not do this."""

    code = "forbidden"
    http_status = 403


class NotFound(NurtureError):
    """The thing asked for does not exist."""

    code = "not_found"
    http_status = 404


class StorageUnavailable(NurtureError):
    """The database cannot be reached or refused the work."""

    code = "storage_unavailable"
    http_status = 503
