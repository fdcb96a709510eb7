"""The one watchdog thread behind every request deadline (deadline.py): deadlines fire on time
in any order of arrival, finished ones neither fire nor pile up, no thread is started per
request, and a forked child gets a watchdog of its own. Sockets are real socketpairs: a fired
deadline shows as a blocked recv returning at once."""
import os
import socket
import threading
import time

from oauth_usage_tracker import deadline as module

LONG = 60.0  # a deadline no test waits for


def _blocked_read(pair_end: socket.socket, limit: float = 30.0) -> float:
    """Block on recv until the socket is shut down (or `limit` passes); return the wait."""
    pair_end.settimeout(limit)
    started = time.monotonic()
    assert pair_end.recv(1) == b""
    return time.monotonic() - started


def test_a_sooner_deadline_fires_while_a_later_one_waits():
    deadlines = module.Deadlines()
    left, right = socket.socketpair()
    idle_left, idle_right = socket.socketpair()
    with left, right, idle_left, idle_right:
        with deadlines.guard(LONG, abortable=True) as later:
            later.attach(idle_left)
            with deadlines.guard(0.3, abortable=True) as sooner:
                sooner.attach(left)
                waited = _blocked_read(left)
            assert sooner.reason == module.TIMED_OUT
            assert later.reason is None
        assert 0.2 <= waited < 20.0
        idle_right.sendall(b"x")
        assert idle_left.recv(1) == b"x"  # the later deadline's socket was never touched


def test_a_finished_deadline_never_fires_and_its_socket_is_left_alone():
    deadlines = module.Deadlines()
    left, right = socket.socketpair()
    with left, right:
        with deadlines.guard(0.2, abortable=True) as finished:
            finished.attach(left)
        # A second deadline due later: once it fired, the first one's moment had long passed.
        other_left, other_right = socket.socketpair()
        with other_left, other_right:
            with deadlines.guard(0.4, abortable=True) as later:
                later.attach(other_left)
                _blocked_read(other_left)
        assert finished.reason is None
        right.sendall(b"y")
        assert left.recv(1) == b"y"


def test_requests_start_no_thread_each_and_finished_deadlines_do_not_pile_up():
    deadlines = module.Deadlines()
    with deadlines.guard(LONG, abortable=False):
        pass  # the watchdog now exists
    threads = threading.active_count()
    for _ in range(2000):
        with deadlines.guard(LONG, abortable=True):
            pass
    assert threading.active_count() == threads
    assert len(module._watchdog()._heap) <= 200


def test_stop_reads_still_cuts_a_read_and_spares_a_post():
    deadlines = module.Deadlines()
    read_left, read_right = socket.socketpair()
    post_left, post_right = socket.socketpair()
    with read_left, read_right, post_left, post_right:
        with deadlines.guard(LONG, abortable=True) as read, \
                deadlines.guard(LONG, abortable=False) as post:
            read.attach(read_left)
            post.attach(post_left)
            deadlines.stop_reads()
            assert _blocked_read(read_left) < 20.0
            assert read.reason == module.STOPPING and post.reason is None
            post_right.sendall(b"z")
            assert post_left.recv(1) == b"z"


def test_a_forked_child_gets_a_watchdog_of_its_own():
    deadlines = module.Deadlines()
    with deadlines.guard(LONG, abortable=True):
        pid = os.fork()  # the parent's watchdog thread and a pending deadline exist now
        if pid == 0:
            code = 1
            try:
                left, right = socket.socketpair()
                with module.Deadlines().guard(0.2, abortable=True) as child:
                    child.attach(left)
                    _blocked_read(left, limit=20.0)
                code = 0 if child.reason == module.TIMED_OUT else 2
            finally:
                os._exit(code)
    started = time.monotonic()
    while time.monotonic() - started < 60:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the child's deadline never fired")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
