"""The review server's safe defaults, through Starlette's TestClient: host binding and token, CSRF,
Content-Security-Policy, blinded and read-only modes, no identifiers in URLs or logs."""
from __future__ import annotations

import logging
import re
from html import unescape
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from fibrosis.cli.main import main
from fibrosis.io import read_csv
from fibrosis.review.app import build_app
from fibrosis.review.security import CSP, TOKEN_ENV, check_binding
from fibrosis.review.server import Settings, prepare
from helpers.review import PATIENT_ID, PATIENT_NAME

TOKEN = "s3cret-token-of-enough-length"


def client(scored, tmp_path, *, host="127.0.0.1", token=None, base="http://127.0.0.1:8765", **kw) -> TestClient:
    review, guard = prepare(Settings(scored.scores, model=scored.run, labels_out=tmp_path / "r.csv", host=host,
                                     token=token, reader="AB", **kw))
    return TestClient(build_app(review, guard), base_url=base, follow_redirects=False)


def links(html: str) -> list[str]:
    return [unescape(u) for u in re.findall(r'(?:href|src|data-next|data-prev|data-back)="([^"]*)"', html)]


def csrf(html: str) -> str:
    return re.search(r'data-csrf="([^"]+)"', html).group(1)


def first_study(c: TestClient) -> tuple[str, str]:
    """(the study view's HTML, its key)."""
    home = c.get("/")
    href = next(u for u in links(home.text) if u.startswith("/view/study/"))
    page = c.get(href)
    return page.text, re.search(r'data-key="([^"]+)"', page.text).group(1)


def test_binding_beyond_loopback_needs_a_token():
    check_binding("127.0.0.1", None)
    check_binding("::1", None)
    with pytest.raises(ValueError, match=f"needs a token: set \\${TOKEN_ENV}"):
        check_binding("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16 characters"):
        check_binding("192.168.1.5", "short")
    check_binding("0.0.0.0", TOKEN)


def test_the_cli_refuses_an_open_binding_without_a_token(scored, monkeypatch, capfd):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["review", "--scores", str(scored.scores), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--host 0.0.0.0: binding beyond this machine needs a token" in err[0]


def test_every_response_carries_the_csp(scored, tmp_path):
    c = client(scored, tmp_path)
    for url in ("/", "/static/review.js", "/view/study/nope", "/image/nope.png"):
        r = c.get(url)
        assert r.headers["content-security-policy"] == CSP, url
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "'unsafe-inline'" not in CSP and "script-src 'self'" in CSP
    html = c.get("/").text
    assert "<script>" not in html and " style=" not in html and "onclick" not in html  # nothing inline


def test_posts_need_the_pages_csrf_token_and_origin(scored, tmp_path):
    c = client(scored, tmp_path)
    html, key = first_study(c)
    body = {"level": "study", "key": key, "call": "present", "reader": "AB"}
    ok = {"X-CSRF-Token": csrf(html)}
    for headers in ({}, {"X-CSRF-Token": "forged"}, {**ok, "Origin": "http://evil.example"},
                    {**ok, "Sec-Fetch-Site": "cross-site"}):
        r = c.post("/label", json=body, headers=headers)
        assert r.status_code == 403 and r.text.startswith("refused"), headers
    assert not (tmp_path / "r.csv").exists()
    r = c.post("/label", json=body, headers={**ok, "Origin": "http://127.0.0.1:8765"})
    assert r.status_code == 200 and r.json()["call"] == "present"
    assert [row["reader_call"] for row in read_csv(tmp_path / "r.csv")] == ["present"]


def test_a_loopback_server_answers_loopback_names_only(scored, tmp_path):
    c = client(scored, tmp_path)
    assert c.get("/").status_code == 200
    assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert c.get("/", headers={"Host": "attacker.example:8765"}).status_code == 403  # DNS rebinding


def test_token_once_in_the_address_then_a_cookie(scored, tmp_path):
    c = client(scored, tmp_path, host="0.0.0.0", token=TOKEN, base="http://10.0.0.5:8765")
    assert c.get("/").status_code == 401
    assert c.get("/?token=wrong").status_code == 403
    r = c.get("/?level=image&token=" + TOKEN)
    assert r.status_code == 303 and r.headers["location"] == "/?level=image"  # the token leaves the address
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert c.get("/").status_code == 200  # the cookie now
    fresh = client(scored, tmp_path, host="0.0.0.0", token=TOKEN, base="http://10.0.0.5:8765")
    assert fresh.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_read_only_records_nothing(scored, tmp_path):
    c = client(scored, tmp_path, read_only=True)
    html, key = first_study(c)
    assert 'class="call' not in html
    r = c.post("/label", json={"level": "study", "key": key, "call": "present", "reader": "AB"},
               headers={"X-CSRF-Token": csrf(html)})
    assert r.status_code == 403 and not (tmp_path / "r.csv").exists()


def test_blinded_hides_the_model_until_the_label_is_committed(scored, tmp_path):
    c = client(scored, tmp_path, blinded=True)
    home = c.get("/").text
    assert "probability" not in home and "positive" not in home
    assert c.get("/?sort=probability").status_code == 400
    html, key = first_study(c)
    image = re.search(r'data-image="([^"]+)"', html).group(1)
    assert 'id="blinded-note"' in html and "model-output" not in html and "/cam/" not in html
    assert c.get(f"/cam/{image}.png").status_code == 403  # enforced by the server, not only the page
    c.post("/label", json={"level": "study", "key": key, "call": "absent", "reader": "AB"},
           headers={"X-CSRF-Token": csrf(html)})
    after = c.get(f"/view/study/{key}").text
    assert "model-output" in after and f"/cam/{image}.png" in after
    cam = c.get(f"/cam/{image}.png")
    assert cam.status_code == 200 and cam.headers["content-type"] == "image/png"


def test_no_identifier_in_any_url_or_log(scored, tmp_path, caplog):
    rows = read_csv(scored.scores)
    secrets = {PATIENT_ID, PATIENT_NAME, quote(PATIENT_NAME), str(scored.inputs), *scored.study_uids,
               *(r["sop_uid"] for r in rows if r["sop_uid"]), *(r["path"] for r in rows),
               *(r["path"].rsplit("/", 1)[-1] for r in rows)}
    c = client(scored, tmp_path)
    caplog.set_level(logging.DEBUG)
    seen, todo = set(), ["/", "/?level=image", "/?level=study&sort=probability&desc=1"]
    while todo:  # every page, image and link the pages reach
        url = todo.pop()
        if url in seen or not url.startswith("/"):
            continue
        seen.add(url)
        r = c.get(url)
        assert r.status_code in (200, 404), url
        if r.headers["content-type"].startswith("text/html"):
            todo += links(r.text)
    html, key = first_study(c)
    c.post("/label", json={"level": "study", "key": key, "call": "present", "reader": "AB"},
           headers={"X-CSRF-Token": csrf(html)})
    assert len(seen) > 20 and any(u.startswith("/cam/") for u in seen)
    for url in seen:
        assert not any(s in url for s in secrets), url
    logged = caplog.text
    assert "GET /view/study/" in logged  # requests are logged ...
    assert not any(s in logged for s in secrets)  # ... without identifiers
    assert "?" not in "".join(m.getMessage() for m in caplog.records if m.name == "fibrosis.review.security")
