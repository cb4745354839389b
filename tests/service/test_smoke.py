from tests.support.live_server import ThreadServer


def test_health_needs_no_key(api_server: ThreadServer) -> None:
    import httpx

    assert httpx.get(f"{api_server.url}/healthz").json()["status"] == "ok"
