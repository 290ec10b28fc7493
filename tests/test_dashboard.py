"""--dashboard: the URL, where the token is, and loopback unless asked otherwise (no token printed)."""
from asl_ray.search.__main__ import build_parser
from asl_ray.search.session import dashboard_help


def test_dashboard_defaults_to_loopback():
    args = build_parser().parse_args([])
    assert args.dashboard_host == "127.0.0.1" and args.dashboard_port == 8265


def test_login_instructions_name_the_token_source_never_the_token(monkeypatch):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    text = dashboard_help("127.0.0.1:8265")
    assert text.startswith("Ray dashboard: http://127.0.0.1:8265")
    assert "ray get-auth-token" in text and "auth_token" in text
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret-value")
    text = dashboard_help("127.0.0.1:8265")
    assert "$RAY_AUTH_TOKEN" in text and "s3cret-value" not in text
