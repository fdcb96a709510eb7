"""Loopback ports that never answer a connect: a listener whose accept queue is full, so the
kernel drops every further SYN and a client's connect() waits for its whole timeout, as it does
for a host that is down. Shared by the in-process tests and the script's getaddrinfo shim."""
import contextlib
import socket
import time
from typing import Iterator, List


@contextlib.contextmanager
def unanswering_ports(count: int) -> Iterator[List[int]]:
    """Yield `count` loopback ports on 127.0.0.1 whose connects hang until they time out."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            listener = stack.enter_context(socket.socket())
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            ports.append(listener.getsockname()[1])
            for _ in range(4):  # fills the queue; the later ones hang in SYN_SENT themselves
                filler = stack.enter_context(socket.socket())
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
        time.sleep(0.1)  # the fillers' handshakes complete (or get dropped) in the kernel
        for port in ports:
            _assert_unanswering(port)
        yield ports


def _assert_unanswering(port: int) -> None:
    probe = socket.socket()
    probe.settimeout(0.1)
    with probe:
        try:
            probe.connect(("127.0.0.1", port))
        except socket.timeout:
            return
    raise AssertionError("port %d answered a connect: its queue is not full" % port)
