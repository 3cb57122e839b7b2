"""Certificate revocation lists, built from the issuance log (pure: `now` passed in).

A CRL is signed by the CA that issued the leaves it lists (RFC 5280 §5: no indirect CRLs), so
the current intermediate signs the CRL for the leaves it issued; leaves of a retired
intermediate are listed by that intermediate's own CRL (`secmesh ca crl --generation N`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secmesh.ca.ledger import IssuanceRecord
from secmesh.identity.keys import PrivateKey

DEFAULT_NEXT_UPDATE = _dt.timedelta(hours=24)


def build_crl(issuer_cert: x509.Certificate, issuer_key: PrivateKey, revoked: Sequence[IssuanceRecord], *,
              now: _dt.datetime, next_update: _dt.timedelta = DEFAULT_NEXT_UPDATE,
              crl_number: int | None = None) -> x509.CertificateRevocationList:
    """A v2 CRL with AKI and CRL number; each entry carries its reason unless it is `unspecified`."""
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer_cert.subject)
               .last_update(now).next_update(now + next_update)
               .add_extension(aki, critical=False)
               .add_extension(x509.CRLNumber(crl_number if crl_number is not None else int(now.timestamp())),
                              critical=False))
    for record in revoked:
        entry = (x509.RevokedCertificateBuilder().serial_number(int(record.serial, 16))
                 .revocation_date(record.revoked_at or now))
        if record.reason and record.reason != "unspecified":
            entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags(record.reason)), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    algorithm = hashes.SHA256()
    if isinstance(issuer_key, ec.EllipticCurvePrivateKey) and issuer_key.curve.key_size >= 384:
        algorithm = hashes.SHA384()
    return builder.sign(issuer_key, algorithm)  # type: ignore[arg-type]
