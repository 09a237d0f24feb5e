"""A small PKI for tests of who the gateway is (remote_id, hybrid authentication): one CA,
RSA gateway certificates it issued for the real gateway and for another name, a client
certificate, and a second CA an impostor controls; :func:`write_pem` writes them beside a
client profile."""

from __future__ import annotations

import datetime
import ipaddress
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from tunvpn.ike.certs import Credential

NOW = datetime.datetime.now(datetime.UTC)


def name(cn: str, org: str = "tunvpn test") -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        # the engine tests run at a fixed clock in 2027; real sessions now
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Pki:
    """``ca`` issued ``gateway`` (vpn.example + the given addresses), ``other_gateway``
    (evil.example: a legitimate certificate of the same CA for another name) and ``client``;
    ``rogue_ca`` issued ``rogue_gateway``, which claims vpn.example and the addresses too."""

    def __init__(self, gateway_ips: tuple[str, ...]) -> None:
        ca_key = _rsa()
        self.ca = certificate(name("tunvpn test CA"), ca_key, name("tunvpn test CA"), ca_key, ca=True)
        key = _rsa()
        self.gateway = Credential(
            certificate(
                name("vpn.example"), key, self.ca.subject, ca_key, dns=("vpn.example",), ips=gateway_ips
            ),
            key,
        )
        key = _rsa()
        self.other_gateway = Credential(
            certificate(name("evil.example"), key, self.ca.subject, ca_key, dns=("evil.example",)), key
        )
        key = _rsa()
        self.client = Credential(
            certificate(name("alice"), key, self.ca.subject, ca_key, dns=("alice.example",)), key
        )
        rogue_key = _rsa()
        self.rogue_ca = certificate(
            name("tunvpn test CA"), rogue_key, name("tunvpn test CA"), rogue_key, ca=True
        )
        key = _rsa()
        self.rogue_gateway = Credential(
            certificate(
                name("vpn.example"),
                key,
                self.rogue_ca.subject,
                rogue_key,
                dns=("vpn.example",),
                ips=gateway_ips,
            ),
            key,
        )


@cache
def pki(*gateway_ips: str) -> Pki:
    """One PKI per set of gateway addresses (RSA keys are slow to make)."""
    return Pki(gateway_ips)


def write_pem(tmp_path: Path, credential: Credential | None, ca: x509.Certificate) -> str:
    """The profile lines of a client certificate (or none: hybrid) and the CA."""
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    if credential is None:
        return 'ca = "ca.pem"\n'
    (tmp_path / "me.pem").write_bytes(credential.certificate.public_bytes(Encoding.PEM))
    key = credential.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "me.key").write_bytes(key)
    (tmp_path / "me.key").chmod(0o600)
    return 'cert = "me.pem"\nkey = "me.key"\nca = "ca.pem"\n'
