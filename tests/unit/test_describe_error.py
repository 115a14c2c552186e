"""`backends.base.describe_error`: the one way every backend says what failed, in one line, without secrets."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

from backends.base import describe_error


def raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as exc:
        return exc


def verify_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    error.verify_message = "self-signed certificate in certificate chain"
    return error


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)"), "connection refused"),
        (
            raised_from(RuntimeError("Error 111 connecting"), ConnectionRefusedError(errno.ECONNREFUSED, "x")),
            "connection refused",
        ),  # a library's error, raised from the socket's
        (raised_from(RuntimeError("Timeout connecting to server"), TimeoutError()), "timed out"),
        (TimeoutError(), "timed out"),
        (
            raised_from(RuntimeError("handshake"), verify_error()),
            "tls: certificate verify failed: self-signed certificate in certificate chain",
        ),
        (
            raised_from(ConnectionError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] ..."), verify_error()),  # aiormq's
            "tls: certificate verify failed: self-signed certificate in certificate chain",
        ),
        (ValueError("Port could not be cast\n to integer value."), "port could not be cast to integer value"),
        (RuntimeError("ACCESS_REFUSED - Login was refused"), "ACCESS_REFUSED - Login was refused"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_one_line_that_says_what_failed(exc: BaseException, text: str) -> None:
    assert describe_error(exc) == text


def test_secrets_are_masked() -> None:
    exc = RuntimeError("AUTH s3cret failed for user:s3cret")
    assert describe_error(exc, ("s3cret", None, "")) == "AUTH *** failed for user:***"


def test_a_name_not_resolved_says_so() -> None:
    exc = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert (
        describe_error(raised_from(RuntimeError("Error -2 connecting to nowhere:6379"), exc))
        == "name or service not known"
    )
