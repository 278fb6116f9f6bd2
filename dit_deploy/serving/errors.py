"""Typed errors of the serving client: what went wrong between a client and a Triton server."""

from __future__ import annotations

from ..errors import DITError


class ServerError(DITError):
    """Triton answered with an error, or could not be reached.

    Attributes:
        url: the server's URL as the client was given it.
        status: the HTTP status (``"400"``) or gRPC code (``"StatusCode.INVALID_ARGUMENT"``);
            ``None`` when no answer came.
        server_message: Triton's own message (or the network error's).
    """

    def __init__(
        self, message: str, *, url: str, status: str | None = None, server_message: str = ""
    ) -> None:
        super().__init__(message)
        self.url, self.status, self.server_message = url, status, server_message


class RequestError(ServerError):
    """The server refused this one request (bad image, empty text, wrong type); it keeps serving."""


class ServerUnavailableError(ServerError):
    """Nothing answers at the URL (connection refused or reset, server stopping or gone)."""


class ServerTimeoutError(ServerError):
    """The server did not answer within the client's time-out."""
