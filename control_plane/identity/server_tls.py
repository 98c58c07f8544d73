"""The control plane's secure port: TLS with a short-lived certificate from its own CA, renewed before it expires.

`--secure-listen` adds a second port to the one gRPC server (same services:
ADS, Registration, Identity, the admin API), like istiod's 15012 next to
15010. Only the server is authenticated: client certificates are not
requested, so the admin API keeps its bearer tokens, Enroll its join tokens
and Renew its signature proof. Clients verify the certificate with the trust
bundle (`agentmesh ca bundle`) and the name `control-plane.<trust domain>`
(or one of `--secure-san`); see agentmesh/identity/control_plane_tls.py.

The certificate (control_plane/identity/ca.py `issue_server_certificate`)
lives `ttl` (24 h by default) and is replaced at half of its life by `run()`;
grpc asks `_fetch` before every handshake, so new connections get the new
certificate while open ones (long-lived ADS and registration streams) keep
going. `_fetch` also renews when `run()` is late, so a handshake is never
offered an expired certificate. A failed renewal keeps the current
certificate, logs an error and is retried.

Metric: `agentmesh_control_plane_certificate_expiry_timestamp_seconds`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

import grpc
from prometheus_client import CollectorRegistry, Gauge

from control_plane.identity.ca import CertificateAuthority, Clock, ServerCertificate, utc_now

log = logging.getLogger("agentmesh.control_plane.server_tls")

DEFAULT_SERVER_CERT_TTL: Final = dt.timedelta(hours=24)
RENEW_FRACTION: Final = 0.5
# A failed renewal is tried again after this long, or sooner when the certificate has less left.
RETRY_DELAY: Final = 30.0
MIN_DELAY: Final = 0.1


class ServerTls:
    """The secure port's certificate: issued at construction, renewed at half of its life; `credentials()` for grpc.

    Thread-safe: grpc calls `_fetch` from its own threads while `run()` renews on the event loop.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        extra_names: Sequence[str] = (),
        ttl: dt.timedelta = DEFAULT_SERVER_CERT_TTL,
        registry: CollectorRegistry | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._ca = ca
        self._extra_names = tuple(extra_names)
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._expiry = (
            Gauge(
                "agentmesh_control_plane_certificate_expiry_timestamp_seconds",
                "When the certificate of the control plane's secure port expires (Unix time).",
                registry=registry,
            )
            if registry is not None
            else None
        )
        self._current, self._due = self._issue()  # raises ValueError for a bad name or ttl
        self._served: ServerCertificate | None = None
        self.renewals = 0

    def __repr__(self) -> str:
        current = self._current
        return f"ServerTls(names={list(current.names)}, serial={current.serial}, not_after={current.not_after})"

    @property
    def current(self) -> ServerCertificate:
        return self._current

    @property
    def renewal_due(self) -> dt.datetime:
        """When `run()` replaces the current certificate."""
        return self._due

    def _issue(self) -> tuple[ServerCertificate, dt.datetime]:
        issued_at = self._clock()
        certificate = self._ca.issue_server_certificate(self._extra_names, ttl=self._ttl)
        if self._expiry is not None:
            self._expiry.set(certificate.not_after.timestamp())
        return certificate, issued_at + (certificate.not_after - issued_at) * RENEW_FRACTION

    def renew_if_due(self) -> bool:
        """Replaces the certificate when its renewal point has passed; True when it did. Never raises."""
        with self._lock:
            if self._clock() < self._due:
                return False
            previous = self._current
            try:
                self._current, self._due = self._issue()
            except Exception:
                log.exception(
                    "cannot renew the secure port's certificate; keeping the current one",
                    extra={"serial": previous.serial, "not_after": previous.not_after.isoformat()},
                )
                self._due = self._clock() + dt.timedelta(seconds=self._retry_delay(previous))
                return False
            self.renewals += 1
        log.info(
            "secure port certificate renewed",
            extra={
                "serial": self._current.serial,
                "not_after": self._current.not_after.isoformat(),
                "previous_serial": previous.serial,
            },
        )
        return True

    def _retry_delay(self, current: ServerCertificate) -> float:
        left = (current.not_after - self._clock()).total_seconds()
        return max(MIN_DELAY, min(RETRY_DELAY, left / 4)) if left > 0 else RETRY_DELAY

    async def run(self) -> None:
        """Renews the certificate at each renewal point until cancelled."""
        while True:
            wait = (self._due - self._clock()).total_seconds()
            await asyncio.sleep(max(MIN_DELAY, wait))
            self.renew_if_due()

    def credentials(self) -> grpc.ServerCredentials:
        """TLS server credentials that follow renewal handshake by handshake; no client certificate is requested."""
        with self._lock:
            current = self._current
            self._served = current
        # grpc's stubs say the fetcher returns a configuration; None (keep the current one) is documented too.
        fetch: Callable[[], grpc.ServerCertificateConfiguration] = self._fetch  # type: ignore[assignment]
        return grpc.dynamic_ssl_server_credentials(_configuration(current), fetch, require_client_authentication=False)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpc calls this before every handshake on the secure port (from its own thread): new config or None."""
        try:
            self.renew_if_due()
            with self._lock:
                current = self._current
                if current is self._served:
                    return None
                self._served = current
            return _configuration(current)
        except Exception:  # an exception here would only fail the handshake, with grpc's own log line
            log.exception("cannot build the secure port's TLS configuration; keeping the previous one")
            return None


def _configuration(certificate: ServerCertificate) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(certificate.private_key_pem, certificate.chain_pem)])
