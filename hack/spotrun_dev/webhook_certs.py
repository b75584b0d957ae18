"""Serving certificates for the training operator's admission webhook on loopback.

The training operator (v1.8+) runs cert-controller, which keeps a CA and a serving cert in
the Secret ``kubeflow/training-operator-webhook-cert`` and injects the CA into its
ValidatingWebhookConfiguration; it blocks its controllers until that is done. In a real
cluster the apiserver reaches the webhook through a Service; here the operator is a local
process, so the webhook configuration uses ``url: https://127.0.0.1:<port>/...``. We
pre-create the Secret with certificates cert-controller accepts as valid (the CA carries
the SAN ``training-operator-ca``, the serving cert ``training-operator.kubeflow.svc``) and
that also carry the IP SAN 127.0.0.1, so the apiserver's TLS check passes and every
PyTorchJob really goes through the operator's validation webhook.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "training-operator-ca"
SERVICE_DNS = "training-operator.kubeflow.svc"
VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class WebhookCerts:
    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes

    def secret_data(self) -> dict[str, str]:
        """Base64 data of the Secret, in the keys cert-controller reads."""
        raw = {
            "ca.crt": self.ca_crt,
            "ca.key": self.ca_key,
            "tls.crt": self.tls_crt,
            "tls.key": self.tls_key,
        }
        return {k: base64.b64encode(v).decode() for k, v in raw.items()}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    # cert-controller parses the CA key with x509.ParsePKCS1PrivateKey.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def generate(now: dt.datetime | None = None) -> WebhookCerts:
    """A fresh CA and serving certificate, valid for ten years."""
    now = now or dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls_key = _key()
    tls_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVICE_DNS)]))
        .issuer_name(ca_subject)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(SERVICE_DNS),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return WebhookCerts(
        ca_crt=ca_cert.public_bytes(pem),
        ca_key=_pkcs1(ca_key),
        tls_crt=tls_cert.public_bytes(pem),
        tls_key=_pkcs1(tls_key),
    )
