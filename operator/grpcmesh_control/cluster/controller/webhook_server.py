"""The admission webhook's HTTP server: kopf's, with bounds on what a request may cost.

- Size: a body over ``MAX_REVIEW_BYTES`` is refused with 413 before it is read, when it says
  its length, and while it is read otherwise (aiohttp's default ``client_max_size``, which
  kopf's application keeps: the same bound).
- Shape: JSON nested past Python's recursion limit is a 400 with a reason (kopf's own server
  would answer 500); the decoded object then goes through the same bounds as every resource
  (``mesh.model.bounds``: values and depth), so validation time is that of a small document.

The API server adds its own bound, the webhook configuration's ``timeoutSeconds``.
"""

from __future__ import annotations

from typing import Any

import kopf
from aiohttp import web

__all__ = ["MAX_REVIEW_BYTES", "BoundedWebhookServer"]

MAX_REVIEW_BYTES = 1024 * 1024
"""aiohttp's default request limit. An AdmissionReview of an UPDATE carries the object and its
old version: a MeshService of up to about 500 KB (the reference ones are under 5 KB)."""


class BoundedWebhookServer(kopf.WebhookServer):
    """``kopf.WebhookServer`` whose requests are bounded (see the module)."""

    @staticmethod
    async def _serve(fn: Any, request: web.Request) -> web.Response:
        length = request.content_length
        if length is not None and length > MAX_REVIEW_BYTES:
            raise web.HTTPRequestEntityTooLarge(
                max_size=MAX_REVIEW_BYTES,
                actual_size=length,
                text=f"an AdmissionReview of {length} bytes; at most {MAX_REVIEW_BYTES}",
            )
        try:
            response: web.Response = await kopf.WebhookServer._serve(fn, request)
        except RecursionError:
            raise web.HTTPBadRequest(text="the AdmissionReview is nested too deeply") from None
        return response
