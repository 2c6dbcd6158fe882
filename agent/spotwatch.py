"""A spot machine's reclaim notice, from the cloud's instance metadata.

EC2 announces a spot interruption about two minutes ahead at
`http://169.254.169.254/latest/meta-data/spot/instance-action`: 404 until then, then 200 with
`{"action": "terminate" | "stop" | "hibernate", "time": "<UTC>"}`. Instance metadata v2 wants a session
token first (PUT /latest/api/token with a TTL header), sent back as X-aws-ec2-metadata-token; an endpoint
that refuses the PUT (v1 only) is read without one. The agent polls the URL every `spot_poll` seconds
and, on a notice, stops as on SIGTERM: its attempts are preempted (the ranks checkpoint) and reported as
interrupted, so their runs are requeued, resumed elsewhere, and counted towards the scheduler's
spot_fallback_after. Tests point `spot_notice_url` at a local fake endpoint.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("gridlab.agent.spotwatch")

EC2_NOTICE_URL = "http://169.254.169.254/latest/meta-data/spot/instance-action"
TOKEN_PATH = "/latest/api/token"  # noqa: S105 - a path, not a secret
TOKEN_TTL = "21600"  # noqa: S105 - seconds the session token lives
TIMEOUT = 2.0  # seconds per request: the metadata service answers in milliseconds, or is not there
MAX_BODY = 64 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an error here, never followed to whatever answers 200


# Never through a proxy (HTTP_PROXY would send 169.254.169.254 elsewhere, whose 200 is no notice), no redirects.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@dataclass(frozen=True)
class Notice:
    action: str  # terminate, stop, hibernate
    time: str  # when, as the cloud says it (UTC)

    def describe(self) -> str:
        return f"spot interruption: the machine will {self.action}" + (f" at {self.time}" if self.time else "")


def notice_url(setting: str) -> str:
    """The URL to poll for a config value: "" (off), "ec2", or a URL."""
    if setting.strip().lower() == "ec2":
        return EC2_NOTICE_URL
    url = setting.strip()
    if url and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"spot_notice_url must be 'ec2' or an http(s) URL, got {setting!r}")
    return url


def _token(url: str) -> str:
    """An IMDSv2 session token, or "" where the endpoint has none (v1)."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(  # noqa: S310 - scheme checked by notice_url
        f"{parts.scheme}://{parts.netloc}{TOKEN_PATH}",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": TOKEN_TTL},
    )
    try:
        with _OPENER.open(request, timeout=TIMEOUT) as reply:
            return reply.read(4096).decode().strip()
    except OSError:  # refused (v1 only), or no answer (a hop limit): try a plain read without one
        return ""


def check(url: str) -> Notice | None:
    """One poll: the notice, or None while there is none. Raises OSError when the endpoint is unreachable, and
    ValueError when it answers 200 with something that is not a notice (a JSON object with an action)."""
    token = _token(url)
    headers = {"X-aws-ec2-metadata-token": token} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=TIMEOUT) as reply:
            body = reply.read(MAX_BODY)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None  # no interruption scheduled
        raise
    doc = json.loads(body or b"null")  # ValueError when not JSON
    if not isinstance(doc, dict) or not isinstance(doc.get("action"), str) or not doc["action"]:
        raise ValueError(f"not a reclaim notice: {body[:200]!r}")
    return Notice(doc["action"], str(doc.get("time", "")))


async def watch(url: str, poll: float, on_notice: Callable[[Notice], None]) -> None:
    """Poll until a notice comes (then call `on_notice` once and return) or the task is cancelled."""
    failing = False
    while True:
        try:
            notice = await asyncio.to_thread(check, url)
        except (OSError, ValueError) as exc:  # unreachable, or an odd answer: keep watching
            if not failing:
                log.warning("spot notice endpoint unreachable; still polling", url=url, error=str(exc))
            failing = True
            notice = None
        else:
            if failing:
                log.info("spot notice endpoint reachable again", url=url)
            failing = False
        if notice is not None:
            log.warning("spot interruption notice", action=notice.action, time=notice.time)
            on_notice(notice)
            return
        await asyncio.sleep(poll)
