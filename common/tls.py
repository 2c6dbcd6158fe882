"""TLS and mTLS from PEM files: credentials for both daemons and the SDK, and who a TLS peer is.

Plaintext stays the default; nothing here runs unless a `tls_*` key is set. Every file
problem is a ConfigError naming the key and the file, at startup, rather than a handshake
that fails later with an OpenSSL string.

gRPC's Python API cannot ask for a client certificate without requiring one, and users
have none: with `tls_client_ca` the scheduler therefore requires certificates on a port of
its own (`agent_listen`), and refuses agent tokens that arrive without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from gridlab.common.config import ConfigError

# What an agent's certificate may name it by: the subject's CN, or a DNS or URI SAN.
PEER_NAME_KEYS = ("x509_common_name", "peer_dns", "peer_uri")


def read_pem(path: str, key: str, kind: str = "CERTIFICATE") -> bytes:
    """The bytes of PEM file `path` (config key `key`), which must hold a `kind` block."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {file}: {exc.strerror or exc}") from None
    if f"{kind}-----".encode() not in data or b"-----BEGIN " not in data:
        raise ConfigError(f"{key}: {file} is not a PEM file with a {kind} block")
    return data


def _pair(cert: str, key: str, cert_key: str, key_key: str) -> tuple[bytes, bytes] | None:
    """(private key, certificate chain) when both files are set, None when neither is."""
    if bool(cert) != bool(key):
        given, missing = (cert_key, key_key) if cert else (key_key, cert_key)
        raise ConfigError(f"{given} is set but {missing} is not: set both (the certificate and its private key)")
    if not cert:
        return None
    return read_pem(key, key_key, "PRIVATE KEY"), read_pem(cert, cert_key)


def server_credentials(
    cert: str, key: str, client_ca: str = "", *, agent_listen: str = ""
) -> tuple[grpc.ServerCredentials | None, grpc.ServerCredentials | None]:
    """Credentials for `listen` and for `agent_listen`; (None, None) serves plaintext.

    With `client_ca`, the agent port requires a client certificate signed by it; `listen`
    never asks for one (users have none).
    """
    pair = _pair(cert, key, "tls_cert", "tls_key")
    if pair is None:
        if client_ca:
            raise ConfigError("tls_client_ca needs tls_cert and tls_key: mTLS for agents runs over TLS")
        return None, None
    if client_ca and not agent_listen:
        raise ConfigError(
            "tls_client_ca needs agent_listen (HOST:PORT): gRPC cannot ask for a client certificate without "
            "requiring it, and users have none, so agents connect with theirs to a port of their own"
        )
    plain = grpc.ssl_server_credentials([pair])
    if not client_ca:
        return plain, plain
    ca = read_pem(client_ca, "tls_client_ca")
    return plain, grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=True)


def channel_credentials(
    ca: str, cert: str = "", key: str = "", *, keys: tuple[str, str, str] = ("tls_ca", "tls_cert", "tls_key")
) -> grpc.ChannelCredentials | None:
    """Credentials that verify the scheduler against CA bundle `ca` (None: plaintext), presenting
    `cert`/`key` as this side's certificate when given. `keys` name the settings in messages."""
    ca_key, cert_key, key_key = keys
    pair = _pair(cert, key, cert_key, key_key)
    if not ca:
        if pair is not None:
            raise ConfigError(
                f"{cert_key} is set but {ca_key} is not: set {ca_key} to the CA that signed the scheduler"
            )
        return None
    root = read_pem(ca, ca_key)
    if pair is None:
        return grpc.ssl_channel_credentials(root)
    return grpc.ssl_channel_credentials(root, private_key=pair[0], certificate_chain=pair[1])


def peer_names(auth_context: Mapping[str, Sequence[bytes]]) -> set[str]:
    """The names a verified peer certificate gives its holder (empty without one)."""
    return {value.decode(errors="replace") for k in PEER_NAME_KEYS for value in auth_context.get(k, ())}


def agent_peer_refusal(
    auth_context: Mapping[str, Sequence[bytes]], name: str | None
) -> tuple[grpc.StatusCode, str] | None:
    """Why a call with an agent token may not speak for agent `name` under mTLS, or None if it may.

    `name` None: any certificate from the client CA will do (calls that name no agent).
    """
    names = peer_names(auth_context)
    if not names:
        return (
            grpc.StatusCode.UNAUTHENTICATED,
            "this scheduler requires agents to present a client certificate (tls_client_ca is set): set the "
            "agent's tls_ca, tls_cert and tls_key and point it at the scheduler's agent_listen address",
        )
    if name is not None and name not in names:
        return (
            grpc.StatusCode.PERMISSION_DENIED,
            f"the client certificate names {', '.join(sorted(map(repr, names)))}, not agent {name!r}: give this "
            f"agent a certificate whose CN or a DNS/URI SAN is {name!r}, or run it with that certificate's name",
        )
    return None


def explain_failure(details: str, *, address: str, ca: str, ca_source: str = "") -> str | None:
    """Plain words for a connection failure that TLS caused, from gRPC's `details`; None if not TLS's.

    `ca` is the CA file the caller verified with ("" for a plaintext channel).
    """
    where = f" (from {ca_source})" if ca_source else ""
    host = address.rsplit(":", 1)[0].strip("[]")
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            f"TLS: the certificate of the scheduler at {address} is not signed by {ca}{where}: set tls_ca to "
            "the CA bundle that signed the scheduler's tls_cert"
        )
    if "Hostname Verification" in details or "Peer name" in details:
        return (
            f"TLS: the scheduler's certificate does not name {host}: connect with a host name or IP its "
            "certificate lists, or reissue it with that name as a SAN"
        )
    if "WRONG_VERSION_NUMBER" in details:
        return (
            f"TLS: the scheduler at {address} does not serve TLS (plaintext): unset tls_ca{where}, or give the "
            "scheduler tls_cert and tls_key"
        )
    if "security handshaker" in details:
        return f"TLS: cannot use the CA bundle {ca}{where}: is it a PEM file of CA certificates?"
    if ca and "Socket closed" in details:
        return (
            f"the scheduler at {address} closed the TLS connection: where it requires a client certificate "
            "(agent_listen with tls_client_ca), give tls_cert and tls_key signed by its tls_client_ca"
        )
    if not ca and "Socket closed" in details:
        return (
            f"the scheduler at {address} closed the connection: if it serves TLS, give its CA bundle with "
            "--tls-ca FILE, GRIDLAB_TLS_CA or tls_ca in ~/.config/gridlab/config.toml"
        )
    return None
