"""TLS for every connection and mTLS for agents, with a CA and certificates made here.

One TLS cluster with mTLS for agents serves the module: a real agent with its own
certificate runs a run end to end for a user who has none; every wrong credential (a
client trusting another CA, a plaintext client, an agent with no certificate, with one
from another CA, or with one naming another agent) is refused with words that say why.
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gridlab.client import errors
from gridlab.client.localcluster import LocalCluster, TLSFiles
from gridlab.client.sdk import Client
from gridlab.common import auth, tls
from gridlab.common.config import ConfigError, SchedulerConfig, load
from gridlab.v1 import agent_pb2, agent_pb2_grpc, artifacts_pb2, artifacts_pb2_grpc

PY = sys.executable
Code = grpc.StatusCode


@dataclass
class Issued:
    cert: Path
    key: Path


class CA:
    """A certificate authority that writes what it issues as PEM files under `root`."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._build(self.subject, self.key.public_key(), ca=True).sign(self.key, hashes.SHA256())
        self.path = root / f"{name}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _build(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, *, ca: bool) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )

    def issue(self, cn: str, sans: list[x509.GeneralName] | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key.public_key(), ca=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        out = Issued(self.root / f"{self.name}-{cn}.pem", self.root / f"{self.name}-{cn}.key")
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        out.key.write_bytes(key_pem)
        return out


@dataclass
class PKI:
    ca: CA
    other: CA  # unrelated: nothing it signs is trusted
    server: Issued
    ws1: Issued  # CN ws1
    ws2_by_uri: Issued  # CN "node", URI SAN spiffe://lab/ws2: names agent spiffe://lab/ws2 only
    ws1_other_ca: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca, other = CA(root, "lab-ca"), CA(root, "other-ca")
    loopback = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return PKI(
        ca=ca,
        other=other,
        server=ca.issue("scheduler", loopback),
        ws1=ca.issue("ws1", [x509.DNSName("ws1")]),
        ws2_by_uri=ca.issue("node", [x509.UniformResourceIdentifier("spiffe://lab/ws2")]),
        ws1_other_ca=other.issue("ws1", [x509.DNSName("ws1")]),
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[LocalCluster]:
    """A TLS scheduler with mTLS for agents, and agent ws1 connected with its certificate."""
    files = TLSFiles(ca=pki.ca.path, cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.path)
    with LocalCluster(tmp_path_factory.mktemp("tls"), heartbeat_timeout=10, tls=files) as c:
        c.start_scheduler()
        assert c.agent_address
        assert c.agent_address != c.address
        c.start_agent("ws1", fake_gpus="1xA100:80", tls_cert=pki.ws1.cert, tls_key=pki.ws1.key)
        yield c


def agent_channel(cluster: LocalCluster, ca: Path, cert: Issued | None, *, port: str = "agent") -> grpc.Channel:
    address = cluster.agent_address if port == "agent" else cluster.address
    pair = (cert.key.read_bytes(), cert.cert.read_bytes()) if cert else (None, None)
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), private_key=pair[0], certificate_chain=pair[1])
    return grpc.secure_channel(address, creds)


def hello(channel: grpc.Channel, cluster: LocalCluster, name: str) -> grpc.RpcError | None:
    """Open Connect as agent `name`; the error it ends with, or None when welcomed."""
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    msg = agent_pb2.AgentMessage(hello=agent_pb2.Hello(name=name, pool="onprem"))
    metadata = auth.metadata(auth.read_secret(cluster.agent_token_file))
    call = stub.Connect(iter([msg]), metadata=metadata, timeout=5)
    try:
        first = next(call)
    except grpc.RpcError as err:
        return err
    assert first.WhichOneof("msg") == "welcome"
    call.cancel()
    return None


# --- one real agent, one real run ------------------------------------------------------


def test_a_tls_cluster_runs_a_run_end_to_end_for_a_user_without_a_certificate(cluster: LocalCluster, pki: PKI) -> None:
    token = cluster.client().create_token("alice")
    with cluster.client(token) as client:  # TLS, verified with the CA; no client certificate
        code = (
            "import os, pathlib\n"
            "pathlib.Path(os.environ['GRIDLAB_CHECKPOINT_DIR'], 'step1.ckpt').write_bytes(b'w' * 1000)\n"
            "pathlib.Path(os.environ['GRIDLAB_ARTIFACT_DIR'], 'out.txt').write_text('done')\n"
            "for i in range(50): print(f'line {i}')\n"
        )
        run = client.submit([PY, "-c", code], name="tls")
        assert run.wait(timeout=60).state == "SUCCEEDED"
        assert list(run.logs()) == [f"line {i}" for i in range(50)]
        # The agent's uploads (UploadBlob, RecordCheckpoint, RecordArtifacts) passed the name check.
        deadline = time.monotonic() + 20
        while not (run.checkpoints() and run.artifacts()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [c.name for c in run.checkpoints()] == ["step1.ckpt"]
        assert [a.file.path for a in run.artifacts()] == ["out.txt"]


# --- clients ----------------------------------------------------------------------------


def test_a_client_trusting_another_ca_is_refused_with_a_clear_error(cluster: LocalCluster, pki: PKI) -> None:
    client = Client(cluster.address, cluster.admin_token, tls_ca=pki.other.path)
    with client, pytest.raises(errors.Unavailable) as excinfo:
        client.whoami()
    message = str(excinfo.value)
    assert message.startswith(f"TLS: the certificate of the scheduler at {cluster.address} is not signed by")
    assert str(pki.other.path) in message
    assert "the tls_ca argument" in message


def test_a_plaintext_client_against_a_tls_scheduler_is_told_to_give_its_ca(cluster: LocalCluster) -> None:
    client = Client(cluster.address, cluster.admin_token)
    with client, pytest.raises(errors.Unavailable, match="if it serves TLS, give its CA bundle with --tls-ca FILE"):
        client.whoami()


def test_a_missing_or_unusable_ca_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(errors.ClientConfigError, match=r"tls_ca: cannot read .*nope\.pem.*the tls_ca argument"):
        Client("h:1", "t", tls_ca=tmp_path / "nope.pem")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(errors.ClientConfigError, match="is not a PEM file with a CERTIFICATE block"):
        Client("h:1", "t", tls_ca=tmp_path / "junk.pem")


# --- agents under mTLS ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cert", "port", "name", "code", "words"),
    [
        ("ws1", "agent", "ws2", Code.PERMISSION_DENIED, "names 'ws1', not agent 'ws2'"),
        ("ws2_by_uri", "agent", "spiffe://lab/ws2", None, ""),  # a URI SAN names it
        ("ws2_by_uri", "agent", "node", None, ""),  # and so does the CN
        (None, "agent", "ws1", Code.UNAVAILABLE, ""),  # no certificate: the handshake fails
        ("ws1_other_ca", "agent", "ws1", Code.UNAVAILABLE, ""),  # another CA's: the handshake fails
        (None, "user", "ws1", Code.UNAUTHENTICATED, "requires agents to present a client certificate"),
    ],
)
def test_agents_need_a_certificate_from_the_client_ca_naming_them(
    cluster: LocalCluster, pki: PKI, cert: str | None, port: str, name: str, code: Code | None, words: str
) -> None:
    issued = getattr(pki, cert) if cert else None
    with agent_channel(cluster, pki.ca.path, issued, port=port) as channel:
        err = hello(channel, cluster, name)
    if code is None:
        assert err is None
        return
    assert err is not None
    assert err.code() == code, err
    assert words in (err.details() or "")


def test_uploads_and_logs_are_checked_against_the_certificate_too(cluster: LocalCluster, pki: PKI) -> None:
    metadata = auth.metadata(auth.read_secret(cluster.agent_token_file))
    with agent_channel(cluster, pki.ca.path, pki.ws1) as channel:
        gateway = agent_pb2_grpc.AgentGatewayStub(channel)
        with pytest.raises(grpc.RpcError) as excinfo:
            gateway.PushLogs(iter([agent_pb2.PushLogsRequest(agent_name="ws2")]), metadata=metadata, timeout=5)
        assert excinfo.value.code() == Code.PERMISSION_DENIED
        artifacts = artifacts_pb2_grpc.ArtifactsStub(channel)
        request = artifacts_pb2.RecordCheckpointRequest(agent_name="ws2", attempt_id="x")
        with pytest.raises(grpc.RpcError) as excinfo:
            artifacts.RecordCheckpoint(request, metadata=metadata, timeout=5)
        assert excinfo.value.code() == Code.PERMISSION_DENIED
        assert "not agent 'ws2'" in (excinfo.value.details() or "")


def test_an_agent_daemon_with_another_agents_certificate_exits_refused(cluster: LocalCluster, pki: PKI) -> None:
    proc = cluster.start_agent("ws3", tls_cert=pki.ws1.cert, tls_key=pki.ws1.key, wait=False)
    assert proc.wait(timeout=30) == 3  # EXIT_REFUSED: retrying cannot help
    log = (cluster.logs / "agent-ws3.log").read_text()
    assert "not agent 'ws3'" in log
    assert "ws3" not in {a.name for a in cluster.list_agents()}


# --- configuration ----------------------------------------------------------------------


def test_tls_settings_are_checked_at_start_with_the_key_named(tmp_path: Path, pki: PKI) -> None:
    def server(**keys: str) -> None:
        config = load(SchedulerConfig, env_prefix="GRIDLAB_SCHEDULER_", environ={}, overrides=keys)
        tls.server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca, agent_listen=config.agent_listen)

    cert, key = str(pki.server.cert), str(pki.server.key)
    with pytest.raises(ConfigError, match="tls_cert is set but tls_key is not"):
        server(tls_cert=cert)
    with pytest.raises(ConfigError, match="tls_client_ca needs agent_listen"):
        server(tls_cert=cert, tls_key=key, tls_client_ca=str(pki.ca.path))
    with pytest.raises(ConfigError, match=r"tls_key: .* is not a PEM file with a PRIVATE KEY block"):
        server(tls_cert=cert, tls_key=cert)
    with pytest.raises(ConfigError, match="tls_cert is set but tls_ca is not"):
        tls.channel_credentials("", cert, key)
    assert tls.channel_credentials("") is None  # plaintext stays the default
