"""Remote images over HTTPS (manager/api/images.py) trust what every other client of the
dashboard trusts."""

from __future__ import annotations

from manager.api import images
from manager.net import tls_context


def test_https_images_are_verified_against_the_process_ca_bundle() -> None:
    """Bug: remote images used Python's default TLS context. The python.org build of
    Python for macOS has no CA store until its "Install Certificates" script is run, so
    every https image failed verification there while the rest of the dashboard (httpx,
    certifi's CAs) worked."""
    connection = images._PinnedHTTPS("images.example.com", 443, "127.0.0.1", 5.0)
    assert connection._tls is tls_context()  # test_net checks that one verifies
