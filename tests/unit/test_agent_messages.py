"""A citizen always prints the error text the server sent (a real agent process against a
one-frame server on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from civic import protocol as p


def answering(reply: p.Message) -> tuple[int, threading.Thread]:
    """A server that reads one hello and answers it with ``reply``, for every connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def serve() -> None:
        with listener:
            for _ in range(3):
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(10)
                    (length,) = p.HEADER.unpack(conn.recv(4, socket.MSG_WAITALL))
                    conn.recv(length, socket.MSG_WAITALL)
                    conn.sendall(p.encode(reply))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def agent(port: int, home: Path, timeout: float) -> tuple[int | None, str]:
    proc = subprocess.Popen([sys.executable, "-m", "civic.citizen.agent", f"127.0.0.1:{port}",
                             "--home", str(home), "--name", "messenger"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.terminate()  # it stops cleanly (and removes its work directory)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return None, out


@pytest.mark.parametrize("code", ["internal", "busy"])
def test_a_server_error_is_printed_with_its_text(tmp_path: Path, code: str) -> None:
    port, _ = answering(p.Error(code, "the database encoding is SQL_ASCII; use UTF8"))
    status, out = agent(port, tmp_path / "home", timeout=4)
    assert status is None, out  # it keeps trying
    assert f"server error ({code}): the database encoding is SQL_ASCII; use UTF8" in out, out


def test_a_refusal_is_printed_with_its_text_and_exits_7(tmp_path: Path) -> None:
    port, _ = answering(p.Error("refused", "unknown join token"))
    status, out = agent(port, tmp_path / "home", timeout=30)
    assert status == 7, out
    assert "the server refused this citizen: unknown join token" in out, out
