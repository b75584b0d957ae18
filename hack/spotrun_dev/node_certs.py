"""Client certificates for real kubelets, signed by the local cluster's CA.

Each kubelet authenticates as ``system:node:<name>`` in ``system:nodes``, so the apiserver's
Node authorizer and NodeRestriction admission treat it as they treat an EKS node.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def write_node_cert(node: str, ca_crt: Path, ca_key: Path, out_dir: Path) -> tuple[Path, Path]:
    """``out_dir/kubelet-client.{crt,key}`` for ``node``; returns (cert, key)."""
    with warnings.catch_warnings():
        # kwokctl's CA has serial number 0, which cryptography warns about.
        warnings.simplefilter("ignore")
        ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, rsa.RSAPrivateKey):
        raise ValueError(f"{ca_key}: expected an RSA key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    crt_path, key_path = out_dir / "kubelet-client.crt", out_dir / "kubelet-client.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return crt_path, key_path
