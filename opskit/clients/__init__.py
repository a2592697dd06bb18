"""Clients for the cloud services opskit calls from the laptop (S3 today).

Each client takes its endpoint from configuration (so the lab's stand-ins can serve it), times
out, retries transient failures with backoff, and turns failures into `ApiError`.
"""

from __future__ import annotations

from opskit.core.errors import OpsError


class ApiError(OpsError):
    """A call to a cloud API failed (after retries); the message names the call and target,
    never a credential."""
