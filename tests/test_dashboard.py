"""--dashboard: the URL, where the token is, loopback unless asked otherwise (no token printed), and the
dashboard port: a port number, free, or a free one taken when the default is busy."""
import socket

import pytest

from asl_ray.search.__main__ import build_parser
from asl_ray.search.dashboard import DEFAULT_DASHBOARD_PORT, choose_dashboard_port, dashboard_help, port_is_free
from asl_ray.train.local_ray import api_server_url


def test_dashboard_defaults_to_loopback():
    import dataclasses
    from asl_ray.search.config import SearchConfig
    defaults = {f.name: f.default for f in dataclasses.fields(SearchConfig)}
    assert defaults["dashboard_host"] == "127.0.0.1" and not defaults["dashboard"]
    assert defaults["dashboard_port"] is dataclasses.MISSING  # worked out: 8265, or a free one
    assert not {"dashboard_host", "dashboard_port"} & set(vars(build_parser().parse_args([])))  # not given


def test_login_instructions_name_the_token_source_never_the_token(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    text = dashboard_help("http://127.0.0.1:8265")
    assert text.startswith("Ray dashboard: http://127.0.0.1:8265\n")
    assert "ray get-auth-token" in text and "auth_token" in text
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-value")
    text = dashboard_help("http://127.0.0.1:8265")
    assert "$RAY_AUTH_TOKEN" in text and "s3cret-value" not in text


def test_tunnel_hint_uses_the_dashboards_own_port():
    assert "ssh -L 40123:127.0.0.1:40123" in dashboard_help("http://127.0.0.1:40123")


def test_a_busy_default_port_gives_a_free_one_and_says_so(capsys):
    holder = socket.socket()
    try:
        try:
            holder.bind(("127.0.0.1", DEFAULT_DASHBOARD_PORT))
        except OSError:
            pass  # another Ray's dashboard has it already: busy either way
        port = choose_dashboard_port("127.0.0.1", None)
        assert port != DEFAULT_DASHBOARD_PORT and port_is_free("127.0.0.1", port)
        assert f"uses {port}" in capsys.readouterr().out
    finally:
        holder.close()


def test_a_free_requested_port_is_kept():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert choose_dashboard_port("127.0.0.1", port) == port


@pytest.mark.parametrize("host,url", [("127.0.0.1", "http://127.0.0.1:9"), ("0.0.0.0", "http://127.0.0.1:9"),
                                      ("10.1.2.3", "http://10.1.2.3:9"), ("::1", "http://[::1]:9")])
def test_the_state_api_address_reaches_the_dashboard_from_this_machine(host, url):
    assert api_server_url(host, 9) == url
