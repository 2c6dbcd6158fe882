"""Channel and server options both sides agree on (keepalive, message size)."""

from __future__ import annotations

# One message, each way, on every channel and the server: gRPC's default receive limit, kept (files travel
# in chunks of at most 1 MiB, log pushes and StreamLogs replies in batches of about 1 MiB). Set for sending
# too, so an oversized request fails RESOURCE_EXHAUSTED at its sender, not after crossing the network; and
# a peer's oversized message is refused RESOURCE_EXHAUSTED before any handler (or its memory) sees it.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_MESSAGE_LIMITS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

# Keepalive finds dead TCP connections; the application heartbeat decides liveness.
AGENT_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    *_MESSAGE_LIMITS,
]

# schedctl and the SDK hold streams open that may carry nothing for hours (WatchRuns,
# StreamLogs with follow); pings during a call find a scheduler host that died without
# a TCP reset within keepalive_time + keepalive_timeout, instead of never. No pings
# between calls: an idle SDK client costs the scheduler nothing.
CLIENT_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # The channel retries a lost connection on its own schedule; capped so that a stream
    # resumes within seconds of a scheduler restart rather than gRPC's default two minutes.
    ("grpc.max_reconnect_backoff_ms", 5_000),
    *_MESSAGE_LIMITS,
]

SERVER_OPTIONS = [
    # Pings closer together than this, with no data sent, are strikes; a few strikes and
    # the server ends the connection (GOAWAY too_many_pings). Below every channel's
    # keepalive_time above, so that their pings are never taken for abuse. (gRPC's name
    # for GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS; any other spelling is
    # silently ignored and leaves gRPC's default of five minutes.)
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    *_MESSAGE_LIMITS,
    ("grpc.so_reuseport", 0),
]
