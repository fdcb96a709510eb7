"""http: the session factory, capped bodies, and requests' exceptions turned into sentences."""
from datetime import datetime, timezone

import pytest
import requests

from oauth_usage_tracker import http as module
from oauth_usage_tracker.errors import ProviderError
from support import loopback_server

URL = "https://api.example.test/usage"
NOW = datetime(2026, 10, 1, 12, 0, 0, tzinfo=timezone.utc)


def send(session, **overrides):
    arguments = dict(what="Test usage", timeout=1, max_body=1024)
    arguments.update(overrides)
    return module.send(session, "GET", URL, **arguments)


def response(status=200, body=b"", headers=None):
    return module.HttpResponse(status, headers or {}, body)


# --- make_session ---------------------------------------------------------------------------


def test_make_session_never_retries_and_blocks_on_a_full_pool():
    session = module.make_session(3)
    try:
        adapter = session.get_adapter("https://api.example.test/")
        assert adapter.max_retries.total == 0
        assert adapter._pool_maxsize == 3
        assert adapter._pool_block is True
    finally:
        session.close()


def test_make_session_pool_size_zero_still_gives_one_connection():
    session = module.make_session(0)
    try:
        assert session.get_adapter("https://api.example.test/")._pool_maxsize == 1
    finally:
        session.close()


def test_make_session_cookie_jar_keeps_no_cookies(session, mocked_responses):
    mocked_responses.get(URL, body=b"{}", headers={"Set-Cookie": "sid=abc; Domain=api.example.test"})
    send(session)
    assert len(session.cookies) == 0


# --- BearerAuth -----------------------------------------------------------------------------


def test_bearer_auth_sets_authorization_header(session, mocked_responses):
    mocked_responses.get(URL, body=b"{}")
    send(session, auth=module.BearerAuth("tok-123"))
    assert mocked_responses.calls[0].request.headers["Authorization"] == "Bearer tok-123"


def test_bearer_auth_repr_hides_token():
    auth = module.BearerAuth("tok-secret-123")
    assert "tok-secret-123" not in repr(auth)
    assert "tok-secret-123" not in str(auth)


# --- send -----------------------------------------------------------------------------------


def test_send_passes_timeout_headers_and_returns_body(session, mocked_responses):
    mocked_responses.get(URL, body=b'{"a": 1}', status=418, headers={"X-Thing": "yes"})
    result = send(session, timeout=1.5, headers={"Accept": "application/json"})
    request = mocked_responses.calls[0].request
    assert request.req_kwargs["timeout"] == 1.5
    assert request.headers["Accept"] == "application/json"
    assert result.status == 418
    assert result.body == b'{"a": 1}'
    assert result.headers["x-thing"] == "yes"


def test_send_posts_form_data(session, mocked_responses):
    mocked_responses.post(URL, body=b"{}")
    module.send(session, "POST", URL, what="Test", timeout=1, max_body=1024,
                headers={"Content-Type": "application/x-www-form-urlencoded"}, data="a=1&b=2")
    body = mocked_responses.calls[0].request.body
    assert (body.decode() if isinstance(body, bytes) else body) == "a=1&b=2"


def test_send_body_at_cap_is_read_whole(session, mocked_responses):
    mocked_responses.get(URL, body=b"x" * 1024)
    assert len(send(session, max_body=1024).body) == 1024


def test_send_body_over_cap_raises(session, mocked_responses):
    mocked_responses.get(URL, body=b"x" * 1025)
    with pytest.raises(ProviderError) as caught:
        send(session, max_body=1024)
    assert str(caught.value) == "Test usage returned a body larger than 1 KiB (HTTP 200)"
    assert caught.value.status == 200


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_send_redirect_is_returned_not_followed(session, mocked_responses, status):
    # send() returns the response "whatever its status"; status_error() then names it.
    mocked_responses.get(URL, status=status, body=b"moved",
                         headers={"Location": "https://elsewhere.example.test/"})
    result = send(session, auth=module.BearerAuth("tok-123"))
    assert result.status == status
    assert len(mocked_responses.calls) == 1


@pytest.mark.parametrize("failure", [requests.exceptions.ReadTimeout("read timed out"),
                                     requests.exceptions.ConnectTimeout("connect timed out")])
def test_send_timeout_raises_sentence(session, mocked_responses, failure):
    mocked_responses.get(URL, body=failure)
    with pytest.raises(ProviderError) as caught:
        send(session, timeout=1)
    assert str(caught.value) == "Test usage request timed out after 1 s"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("text, reason", [
    ("[Errno 111] Connection refused", "connection refused"),
    ("('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
     "connection reset"),
    ("Failed to resolve: [Errno -2] Name or service not known", "host name not found"),
    ("something odd", "connection error"),
])
def test_send_connection_error_raises_sentence(session, mocked_responses, text, reason):
    mocked_responses.get(URL, body=requests.exceptions.ConnectionError(text))
    with pytest.raises(ProviderError) as caught:
        send(session)
    assert str(caught.value) == "Test usage request failed: %s" % reason


def test_send_broken_chunked_body_raises_sentence(session, mocked_responses):
    mocked_responses.get(URL, body=requests.exceptions.ChunkedEncodingError("broken"))
    with pytest.raises(ProviderError) as caught:
        send(session)
    assert "Test usage request failed" in str(caught.value)


# --- seconds / retry_after -------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [(15, "15 s"), (15.0, "15 s"), (2.5, "2.5 s"),
                                         (1, "1 s")])
def test_seconds_formats_durations(value, text):
    assert module.seconds(value) == text


@pytest.mark.parametrize("header, expected", [
    ("300", 300.0), (" 0 ", 0.0), ("2.5", 2.5), ("-1", None), ("nan", None), ("inf", None),
    ("soon", None), ("", None),
    ("Thu, 01 Oct 2026 12:05:00 GMT", 300.0),
    ("Thu, 01 Oct 2026 11:00:00 GMT", 0.0),
])
def test_retry_after_numbers_and_dates(header, expected):
    headers = {"Retry-After": header} if header else {}
    assert module.retry_after(response(429, headers=headers), NOW) == expected


def test_retry_after_missing_is_none():
    assert module.retry_after(response(429), NOW) is None


# --- decode_json ------------------------------------------------------------------------------


def test_decode_json_returns_object():
    assert module.decode_json(response(body=b'{"a": [1, 2]}'), "Test usage") == {"a": [1, 2]}


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_decode_json_empty_body_raises(body):
    with pytest.raises(ProviderError) as caught:
        module.decode_json(response(200, body), "Test usage")
    assert str(caught.value) == "Test usage returned an empty body (HTTP 200)"


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00", b"[" * 100000])
def test_decode_json_garbage_raises(body):
    with pytest.raises(ProviderError) as caught:
        module.decode_json(response(200, body), "Test usage")
    assert str(caught.value) == "Test usage returned a body that is not valid JSON (HTTP 200)"


def test_decode_json_html_page_raises_naming_html():
    page = response(200, b"<html><body>Please log in</body></html>", {"Content-Type": "text/html"})
    with pytest.raises(ProviderError) as caught:
        module.decode_json(page, "Test usage")
    assert str(caught.value) == "Test usage returned an HTML page instead of JSON (HTTP 200)"


def test_decode_json_cloudflare_challenge_says_cloudflare():
    page = response(200, b"<!DOCTYPE html><html><title>Just a moment...</title></html>",
                    {"Content-Type": "text/html", "cf-mitigated": "challenge"})
    with pytest.raises(ProviderError) as caught:
        module.decode_json(page, "Test usage")
    assert "HTML page" in str(caught.value)
    assert "Cloudflare" in str(caught.value)


def test_is_html_sniffs_body_without_content_type():
    assert response(200, b"  <!DOCTYPE html><html></html>").is_html
    assert response(200, b"<HTML><body></body></HTML>").is_html
    assert not response(200, b'{"html": "<html>"}').is_html


# --- status_error -----------------------------------------------------------------------------


def test_status_error_429_with_retry_after():
    error = module.status_error(response(429, b"{}", {"Retry-After": "300"}), "Claude usage")
    assert str(error) == "Claude usage API returned 429 (rate limited; retry after 300 s)"
    assert error.status == 429
    assert error.retry_after == 300


def test_status_error_429_without_retry_after():
    error = module.status_error(response(429, b"{}"), "Claude usage")
    assert str(error) == "Claude usage API returned 429 (rate limited)"
    assert error.retry_after is None


def test_status_error_5xx_says_server_error():
    error = module.status_error(response(503, b"oops"), "Codex usage")
    assert str(error) == "Codex usage API returned 503 (server error; try again later)"
    assert error.status == 503


def test_status_error_redirect_says_unexpected_redirect():
    error = module.status_error(response(301, b""), "Codex usage")
    assert str(error) == "Codex usage API returned 301 (unexpected redirect)"


def test_status_error_keeps_decoded_json_body():
    error = module.status_error(response(400, b'{"error": "x"}'), "Codex usage")
    assert str(error) == "Codex usage API returned 400"
    assert error.body == {"error": "x"}


def test_session_proxies_read_once_and_loopback_never_proxied(monkeypatch):
    from oauth_usage_tracker import http as module_http
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "mirror.example")
    with module_http.make_session(2) as session:
        assert session.trust_env is False
        assert session.proxies_for("https://api.anthropic.com/x")["https"] == \
            "http://127.0.0.1:3128"
        assert session.proxies_for("http://127.0.0.1:8080/x") == {"http": None, "https": None}
        assert session.proxies_for("https://mirror.example/x") == {"http": None, "https": None}
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9999")
        assert session.proxies_for("https://api.anthropic.com/x")["https"] == \
            "http://127.0.0.1:3128"


def test_session_honours_ca_bundle_variable(monkeypatch):
    from oauth_usage_tracker import http as module_http
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")
    with module_http.make_session(1) as session:
        assert session.verify == "/etc/ssl/custom.pem"


# --- the session's own request path (open) against what Session.request sends ----------------


def sent_by_both(mocked_responses, method, url, **arguments):
    """Send one request through make_session's path and through a plain Session's
    `Session.request` (trust_env off, as make_session has it); return both recorded requests."""
    mocked_responses.add(method, url, body=b"{}")
    mocked_responses.add(method, url, body=b"{}")
    arguments = dict(dict(what="Test", timeout=2, max_body=1024), **arguments)
    with module.make_session(1) as ours, requests.Session() as plain:
        plain.trust_env = False
        module.send(ours, method, url, **arguments)
        module.send(plain, method, url, **arguments)
    return mocked_responses.calls[0].request, mocked_responses.calls[1].request


@pytest.mark.parametrize("method, url, arguments", [
    ("GET", URL, dict(headers={"Accept": "application/json", "User-Agent": "codex-cli"},
                      auth=module.BearerAuth("tok-123"))),
    ("GET", "https://API.Example.test:443/usage/../a b?x=1", dict(auth=module.BearerAuth("t"))),
    ("POST", URL, dict(headers={"Content-Type": "application/x-www-form-urlencoded"},
                       data="grant_type=refresh_token&refresh_token=r")),
    ("POST", URL, dict(data={"a": "1"})),
    ("POST", URL, dict()),
    ("GET", "http://127.0.0.1:8080/v0/management/auth-files",
     dict(headers={"Accept": "application/json", "Accept-Encoding": "gzip"},
          auth=module.BearerAuth("k"))),
])
def test_send_prepares_what_session_request_prepares(mocked_responses, method, url, arguments):
    ours, theirs = sent_by_both(mocked_responses, method, url, **arguments)
    assert ours.method == theirs.method == method
    assert ours.url == theirs.url
    assert list(ours.headers.items()) == list(theirs.headers.items())
    assert ours.headers["Accept-Encoding"] == "identity"
    assert ours.body == theirs.body


def test_send_hands_the_adapter_what_session_request_would(mocked_responses, monkeypatch):
    # Timeout, streaming, the CA bundle variable, and the proxies from the environment.
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")
    mocked_responses.get(URL, body=b"{}")
    with module.make_session(1) as session:
        send(session, timeout=2.5)
    kwargs = mocked_responses.calls[0].request.req_kwargs
    assert kwargs["timeout"] == 2.5
    assert kwargs["stream"] is True
    assert kwargs["verify"] == "/etc/ssl/custom.pem"
    assert kwargs["cert"] is None
    assert kwargs["proxies"] == {"https": "http://127.0.0.1:3128"}


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/v1/oauth/token",
                                 "http://localhost:8080/v1/oauth/token",
                                 "https://mirror.example/usage"])
def test_send_loopback_or_no_proxy_endpoint_gets_no_proxy(mocked_responses, monkeypatch, url):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "mirror.example")
    mocked_responses.post(url, body=b"{}")
    with module.make_session(1) as session:
        module.send(session, "POST", url, what="Claude token", timeout=1, max_body=1024,
                    data="grant_type=refresh_token")
    assert mocked_responses.calls[0].request.req_kwargs["proxies"] == {}


def test_send_routes_a_remote_endpoint_through_the_environment_proxy(monkeypatch):
    # A real loopback "proxy" that records what it is asked and hangs up: the request went to
    # it (a CONNECT for the https endpoint), not to the endpoint.
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    heard = []

    def proxy():
        connection, _ = listener.accept()
        with connection:
            heard.append(connection.recv(4096))

    thread = threading.Thread(target=proxy)
    thread.start()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:%d" % listener.getsockname()[1])
    try:
        with module.make_session(1) as session, pytest.raises(ProviderError) as caught:
            send(session, timeout=5, auth=module.BearerAuth("tok-secret"))
    finally:
        thread.join(10)
        listener.close()
    assert heard and heard[0].startswith(b"CONNECT api.example.test:443 HTTP/")
    assert b"tok-secret" not in heard[0]
    assert "tok-secret" not in str(caught.value)


def test_send_reuses_the_route_worked_out_at_first_use(mocked_responses, monkeypatch):
    mocked_responses.get(URL, body=b"{}")
    mocked_responses.get(URL, body=b"{}")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    with module.make_session(1) as session:
        send(session)
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9999")
        send(session)
        assert session.route(URL) is session.route(URL)
    assert [call.request.req_kwargs["proxies"] for call in mocked_responses.calls] == \
        [{"https": "http://127.0.0.1:3128"}] * 2


def test_send_refuses_a_header_value_with_a_line_break(session, mocked_responses):
    with pytest.raises(ProviderError) as caught:
        send(session, headers={"ChatGPT-Account-Id": "a\r\nX-Evil: 1"})
    assert str(caught.value) == "Test usage request failed: a header holds characters HTTP " \
                                "cannot carry"
    assert len(mocked_responses.calls) == 0


def test_send_through_a_plain_session_uses_session_request(mocked_responses):
    mocked_responses.get(URL, body=b'{"a": 1}')
    mocked_responses.get(URL, status=302, headers={"Location": "https://elsewhere.test/"})
    with requests.Session() as plain:
        result = send(plain, auth=module.BearerAuth("tok-123"))
        redirect = send(plain)
    assert result.status == 200 and result.body == b'{"a": 1}'
    assert redirect.status == 302
    assert len(mocked_responses.calls) == 2  # the redirect was not followed
    request = mocked_responses.calls[0].request
    assert request.req_kwargs["stream"] is True
    assert request.headers["Authorization"] == "Bearer tok-123"
    assert request.headers["Accept-Encoding"] == "identity"


def test_make_session_used_directly_still_follows_no_redirect(session, mocked_responses):
    # send() never goes through Session.request; a caller that does gets no redirect either.
    mocked_responses.get(URL, status=302, body=b"moved",
                         headers={"Location": "https://elsewhere.example.test/"})
    response = session.get(URL, timeout=1)
    assert response.status_code == 302
    assert len(mocked_responses.calls) == 1


# --- WatchedAdapter.build_response --------------------------------------------------------------

ANSWERS = [
    (200, "OK", [("Content-Type", "application/json"), ("Set-Cookie", "a=1; Path=/")]),
    (200, "Fine", [("Content-Type", "text/html; charset=ISO-8859-1"),
                   ("Set-Cookie", "a=1; Domain=127.0.0.1"), ("Set-Cookie", "b=2"),
                   ("X-Twice", "one"), ("x-twice", "two")]),
    (302, "Found", [("Location", "https://elsewhere.example.test/"), ("Set-Cookie2", "c=3")]),
    (429, "Too Many Requests", [("Retry-After", "30"), ("Content-Type", "text/plain")]),
    (500, "Internal Server Error", []),
]


@pytest.fixture
def answering_server():
    """A loopback server answering each GET with the status, reason and headers of
    ANSWERS[int(path[1:])] and a short body."""
    with loopback_server(lambda path: ANSWERS[int(path[1:])]) as (url, _):
        yield url


@pytest.mark.parametrize("index", range(len(ANSWERS)))
def test_watched_adapter_builds_the_response_requests_builds_but_keeps_no_cookie(
        answering_server, index):
    """Every Response field the code reads (and the rest HTTPAdapter sets) is what requests'
    own build_response gives for the same answer; only the Response's own cookie jar stays
    empty (the answer's cookies are not parsed: nothing reads them)."""
    from requests.adapters import HTTPAdapter
    from urllib3 import PoolManager

    from oauth_usage_tracker.deadline import WatchedAdapter

    request = requests.Request("GET", "%s/%d" % (answering_server, index)).prepare()
    with PoolManager() as manager:
        # retries=False: urllib3's default retries would wait out the 429's Retry-After, 3 times.
        raw = manager.request("GET", request.url, preload_content=False, redirect=False,
                              retries=False)
        adapter = WatchedAdapter()
        ours = adapter.build_response(request, raw)
        theirs = HTTPAdapter.build_response(adapter, request, raw)
        assert ours.status_code == theirs.status_code == ANSWERS[index][0]
        assert ours.reason == theirs.reason == ANSWERS[index][1]
        assert list(ours.headers.items()) == list(theirs.headers.items())
        assert ours.headers["content-length"] == "2"
        assert (ours.encoding, ours.url, ours.raw, ours.request, ours.connection) == (
            theirs.encoding, theirs.url, theirs.raw, theirs.request, theirs.connection)
        assert ours.is_redirect == theirs.is_redirect
        assert ours.raw.read() == b"{}"
        assert len(ours.cookies) == 0
        assert len(theirs.cookies) == sum(name == "Set-Cookie" for name, _ in ANSWERS[index][2])


# --- WatchedAdapter.get_connection_with_tls_context -----------------------------------------------

def _theirs(adapter, request, verify=True, proxies=None, cert=None):
    """The pool requests' own HTTPAdapter method gives for the same adapter and request."""
    from requests.adapters import HTTPAdapter
    return HTTPAdapter.get_connection_with_tls_context(adapter, request, verify, proxies, cert)


def test_watched_adapter_gives_each_direct_url_the_pool_requests_gives():
    from oauth_usage_tracker.deadline import WatchedAdapter

    adapter = WatchedAdapter(pool_connections=4)
    urls = ["http://127.0.0.1:1/usage", "http://127.0.0.1:1/other", "https://example.test/a",
            "http://[::1]:2/x"]
    for _ in range(3):
        for url in urls:
            request = requests.Request("GET", url).prepare()
            for verify, cert in ((True, None), (False, None), ("/ca.pem", ("c.pem", "k.pem"))):
                ours = adapter.get_connection_with_tls_context(request, verify, {}, cert)
                assert ours is _theirs(adapter, request, verify, {}, cert)
                assert ours.pool is not None
    adapter.close()


def test_watched_adapter_pool_closed_with_the_adapter_or_evicted_is_worked_out_again():
    from oauth_usage_tracker.deadline import WatchedAdapter

    adapter = WatchedAdapter(pool_connections=1)
    first = requests.Request("GET", "http://127.0.0.1:1/usage").prepare()
    second = requests.Request("GET", "http://127.0.0.1:2/usage").prepare()
    kept = adapter.get_connection_with_tls_context(first, True)
    assert adapter.get_connection_with_tls_context(first, True) is kept
    adapter.get_connection_with_tls_context(second, True)  # the manager lets the first go
    again = adapter.get_connection_with_tls_context(first, True)
    assert again is not kept
    assert again is _theirs(adapter, first)
    adapter.close()  # the manager lets every pool go
    fresh = adapter.get_connection_with_tls_context(first, True)
    assert fresh is not again and fresh is _theirs(adapter, first)
    adapter.close()


def test_watched_adapter_keeps_the_managers_recently_used_order():
    """A remembered pool is looked up in the manager as requests' path looks it up, so the one
    the manager lets go for a new pool is the least recently used, as before."""
    from oauth_usage_tracker.deadline import WatchedAdapter

    adapter = WatchedAdapter(pool_connections=2)
    one, two, three = (requests.Request("GET", "http://127.0.0.1:%d/usage" % port).prepare()
                       for port in (1, 2, 3))
    first = adapter.get_connection_with_tls_context(one, True)
    adapter.get_connection_with_tls_context(two, True)
    assert adapter.get_connection_with_tls_context(one, True) is first  # now the most recent
    adapter.get_connection_with_tls_context(three, True)  # lets `two` go, not `one`
    assert adapter.get_connection_with_tls_context(one, True) is first
    assert len(adapter.poolmanager.pools) == 2
    adapter.close()


def test_watched_adapter_manager_is_the_one_http_adapter_makes():
    from requests.adapters import HTTPAdapter

    from oauth_usage_tracker.deadline import WatchedAdapter

    ours = WatchedAdapter(pool_connections=3, pool_maxsize=7, pool_block=True)
    theirs = HTTPAdapter(pool_connections=3, pool_maxsize=7, pool_block=True)
    assert isinstance(ours.poolmanager, type(theirs.poolmanager))
    assert ours.poolmanager.connection_pool_kw == theirs.poolmanager.connection_pool_kw
    assert ours.poolmanager.pools._maxsize == theirs.poolmanager.pools._maxsize == 3
    assert (ours._pool_connections, ours._pool_maxsize, ours._pool_block) == (3, 7, True)


def test_watched_adapter_request_through_a_proxy_gets_the_proxy_managers_pool():
    from oauth_usage_tracker.deadline import WatchedAdapter

    adapter = WatchedAdapter()
    request = requests.Request("GET", "http://api.example.test/usage").prepare()
    direct = adapter.get_connection_with_tls_context(request, True, {})
    proxies = {"http": "http://127.0.0.1:3128"}
    proxied = adapter.get_connection_with_tls_context(request, True, proxies)
    assert proxied is _theirs(adapter, request, True, proxies)
    assert proxied is not direct
    assert (proxied.host, proxied.port) == ("127.0.0.1", 3128)
    assert adapter.get_connection_with_tls_context(request, True, {}) is direct
    adapter.close()


def test_watched_adapter_request_url_is_what_http_adapter_gives():
    from requests.adapters import HTTPAdapter

    from oauth_usage_tracker.deadline import WatchedAdapter

    adapter = WatchedAdapter()
    for url in ["http://127.0.0.1:1/usage", "https://API.Example.test:443/usage/../a b?x=1#f",
                "http://u:p@example.test//double/slash?q=1", "https://example.test"]:
        request = requests.Request("GET", url).prepare()
        for proxies in ({}, None, {"http": "http://127.0.0.1:3128"},
                        {"https": "socks5://127.0.0.1:1080"}, {"all": "http://p.test:8080"}):
            for _ in range(2):  # the second time from what it remembered
                assert adapter.request_url(request, proxies) == \
                    HTTPAdapter.request_url(adapter, request, proxies)
    adapter.close()


def test_watched_adapter_remembers_a_bounded_number_of_urls():
    """Past its bound the adapter starts afresh: what it gives stays requests' answer, and it
    never holds more than the bound (a proxy's management URLs differ per proxy)."""
    from requests.adapters import HTTPAdapter

    from oauth_usage_tracker.deadline import _MAX_DIRECT_POOLS, WatchedAdapter

    adapter = WatchedAdapter()
    for number in range(_MAX_DIRECT_POOLS + 6):
        request = requests.Request("GET", "http://127.0.0.1:1/usage/%d" % number).prepare()
        assert adapter.get_connection_with_tls_context(request, True, {}) is \
            _theirs(adapter, request, True, {})
        assert adapter.request_url(request, {}) == HTTPAdapter.request_url(adapter, request, {})
        assert len(adapter._direct) <= _MAX_DIRECT_POOLS
        assert len(adapter._paths) <= _MAX_DIRECT_POOLS
    adapter.close()


# --- merged_headers against requests' merge_setting ----------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from requests.sessions import merge_setting  # noqa: E402
from requests.structures import CaseInsensitiveDict  # noqa: E402

_names = st.sampled_from(["Accept", "accept", "ACCEPT", "User-Agent", "user-agent",
                          "Accept-Encoding", "Connection", "X-A", "x-a", "Authorization"])
_values = st.one_of(st.none(), st.sampled_from(["*/*", "identity", "gzip", "", "a b"]))
_headers = st.lists(st.tuples(_names, _values), max_size=6)


@settings(max_examples=500, deadline=None, database=None)
@given(session=_headers, request=_headers)
def test_merged_headers_is_what_merge_setting_gives(session, request):
    """The merge open() made with CaseInsensitiveDict (and Session.request with merge_setting):
    the same names, in the same order, with the same values."""
    session_headers = CaseInsensitiveDict(dict(session))
    request_headers = dict(request)
    old = CaseInsensitiveDict(session_headers)
    old.update(request_headers)
    expected = [(name, value) for name, value in old.items() if value is not None]
    merged = module.merged_headers(session_headers, request_headers)
    assert list(merged.items()) == expected
    assert list(merged.items()) == list(merge_setting(
        request_headers, session_headers, dict_class=CaseInsensitiveDict).items())


# --- the socket's timeout ---------------------------------------------------------------------

@pytest.fixture
def keep_alive_server():
    """A loopback HTTP/1.1 server that keeps connections open and answers each GET with `{}`;
    yields its URL and the list of connections it accepted."""
    with loopback_server(lambda path: (200, "OK", []), keep_alive=True) as (url, accepted):
        yield url + "/", accepted


def test_a_kept_alive_connection_sets_its_sockets_timeout_only_when_it_changes(
        keep_alive_server, monkeypatch):
    """urllib3 sets the connection's timeout on its socket before each request and before each
    answer: the same value reaches the system only when it changed (a system call each)."""
    import socket
    url, accepted = keep_alive_server
    reached = []
    real = socket.socket.settimeout

    def settimeout(sock, value):
        reached.append(value)
        real(sock, value)
    monkeypatch.setattr(socket.socket, "settimeout", settimeout)
    session = module.make_session(1)
    try:
        for _ in range(3):
            assert module.send(session, "GET", url, what="Test", timeout=7.0,
                               max_body=1024).body == b"{}"
        # At the connect: what is left of the deadline, then the timeout; then nothing more.
        assert len(accepted) == 1 and len(reached) == 2
        assert reached[0] <= 7.0 and reached[1] == 7.0
        assert module.send(session, "GET", url, what="Test", timeout=3.0,
                           max_body=1024).body == b"{}"
        assert len(accepted) == 1 and reached[2:] == [3.0]  # a new timeout is set, once
    finally:
        session.close()


def test_the_socket_sets_a_changed_timeout_as_the_socket_module_does():
    import os

    from oauth_usage_tracker.deadline import _Socket
    with _Socket() as sock:
        # A timeout makes the descriptor non-blocking underneath (the socket module waits in
        # poll), None makes it blocking again.
        sock.settimeout(2)
        sock.settimeout(2.0)
        assert sock.gettimeout() == 2.0 and not os.get_blocking(sock.fileno())
        sock.settimeout(None)
        assert sock.gettimeout() is None and os.get_blocking(sock.fileno())
        sock.settimeout(0.5)
        assert sock.gettimeout() == 0.5 and not os.get_blocking(sock.fileno())
        for wrong, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
            with pytest.raises(error):
                sock.settimeout(wrong)
        assert sock.gettimeout() == 0.5
