from __future__ import annotations

import base64
import ipaddress

from cryptography import x509

from spotrun_dev import webhook_certs


def test_certs_satisfy_cert_controller_and_loopback_tls() -> None:
    certs = webhook_certs.generate()
    ca = x509.load_pem_x509_certificate(certs.ca_crt)
    tls = x509.load_pem_x509_certificate(certs.tls_crt)
    # cert-controller verifies the CA against the DNS name "training-operator-ca".
    ca_sans = ca.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ca_sans.get_values_for_type(x509.DNSName) == ["training-operator-ca"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    sans = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "training-operator.kubeflow.svc" in sans.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    tls.verify_directly_issued_by(ca)
    # Go's x509.ParsePKCS1PrivateKey needs the traditional RSA PEM.
    assert certs.ca_key.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    data = certs.secret_data()
    assert sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert base64.b64decode(data["tls.crt"]) == certs.tls_crt
