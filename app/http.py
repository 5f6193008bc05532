"""Shared TLS contexts for the outgoing HTTP clients (Google, OpenAI, Gmail, health probes).

Every httpx/httpx2 client builds its own `ssl.SSLContext` unless given one, and building one
means parsing the whole CA bundle (~60-250 ms of CPU). A worker creates several clients at
startup and one OAuth client per Google sign-in, so the contexts are built once per process
here and passed as `verify=`. They are exactly what the libraries would build by default
(same CA bundle, SSL_CERT_FILE / SSL_CERT_DIR honoured, hostnames and certificates
verified): only the repeated loading goes away. An SSLContext is safe to share between
clients and event loops.
"""

from __future__ import annotations

import functools
import ssl

import httpx
import httpx2


@functools.cache
def httpx_tls_context() -> ssl.SSLContext:
    """The context httpx (0.28) clients use by default: certifi's CA bundle."""
    return httpx.create_ssl_context()


@functools.cache
def httpx2_tls_context() -> ssl.SSLContext:
    """The context httpx2 clients (openai, authlib) use by default: the system CA store."""
    return httpx2.create_ssl_context()
