"""TLS to PostgreSQL, verified: sslmode=verify-full against a server whose certificate comes
from a CA made here. The server refuses every connection without TLS, so a success proves
the connection was encrypted; a wrong CA or host name is refused, and nothing falls back."""

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEM = serialization.Encoding.PEM


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, *, ca: bool, sans=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


class CertificateAuthority:
    def __init__(self, name: str):
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = _certificate(name, name, self.key.public_key(), self.key, ca=True)

    def pem(self) -> bytes:
        return self.certificate.public_bytes(PEM)

    def issue(self, *sans) -> tuple[bytes, bytes]:
        """A server certificate for these subject alternative names, and its key, as PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate("postgres", self.name, key.public_key(), self.key, ca=False, sans=sans)
        key_pem = key.private_bytes(
            PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(PEM), key_pem


LOCALHOST = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


@pytest.fixture
def tls_cluster(postgres_cluster):
    """The throwaway server, now with TLS only, its certificate signed by a CA of the test's."""
    authority = CertificateAuthority("hello-test-ca")
    postgres_cluster.stop()
    postgres_cluster.require_tls(*authority.issue(*LOCALHOST))
    postgres_cluster.start()
    return postgres_cluster, authority


def verify_full_url(cluster, ca_file, host: str = "127.0.0.1") -> str:
    url = cluster.url.replace("@127.0.0.1:", f"@{host}:")
    return f"{url}?sslmode=verify-full&sslrootcert={ca_file}"


def test_verify_full_with_the_servers_ca_connects(app_server, tls_cluster, tmp_path):
    cluster, authority = tls_cluster
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.pem())
    server = app_server(DATABASE_URL=verify_full_url(cluster, ca_file), DB_TIMEOUT_SECONDS="2")
    assert server.get("/readyz").status == 200
    assert server.post("/visits").status == 201


def assert_refused_over_tls(app_server, url: str, libpq_says: str) -> None:
    """The app answers 503 'database TLS failed', and logs libpq's own words for why."""
    server = app_server(DATABASE_URL=url, DB_TIMEOUT_SECONDS="2")
    ready = server.get("/readyz")
    assert (ready.status, ready.json()["reason"]) == (503, "database TLS failed")
    lost = next(e for e in server.log_events() if e["event"] == "database_lost")
    assert libpq_says in lost["detail"]


def test_a_certificate_from_another_ca_is_refused_with_the_reason_logged(
    app_server, tls_cluster, tmp_path
):
    cluster, _ = tls_cluster
    ca_file = tmp_path / "other-ca.pem"
    ca_file.write_bytes(CertificateAuthority("some-other-ca").pem())
    url = verify_full_url(cluster, ca_file)
    assert_refused_over_tls(app_server, url, "certificate verify failed")


def test_a_certificate_for_another_host_name_is_refused_with_the_reason_logged(
    app_server, postgres_cluster, tmp_path
):
    authority = CertificateAuthority("hello-test-ca")
    postgres_cluster.stop()
    postgres_cluster.require_tls(*authority.issue(x509.DNSName("db.example.com")))
    postgres_cluster.start()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(authority.pem())
    url = verify_full_url(postgres_cluster, ca_file, host="localhost")
    assert_refused_over_tls(app_server, url, "does not match host name")


def test_a_server_without_tls_is_refused_instead_of_used_in_plaintext(
    app_server, postgres_cluster, tmp_path
):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(CertificateAuthority("hello-test-ca").pem())
    url = verify_full_url(postgres_cluster, ca_file)
    assert_refused_over_tls(app_server, url, "does not support SSL")
