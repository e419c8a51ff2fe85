"""Role boundaries for pages and the API, accounts, sign-up and the createuser command."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from tutor.accounts import create_user
from tutor.roles import Role, user_roles

pytestmark = pytest.mark.django_db

PAGES = {"student": "/chat/", "labeler": "/label/", "admin": "/studio/"}
API = {"student": "/api/me/", "labeler": "/api/label/queue/", "admin": "/api/studio/overview/"}
ALLOWED = {
    "student": {"student"},
    "labeler": {"labeler"},
    "admin": {"student", "labeler", "admin"},  # admins supervise every area
}


@pytest.fixture
def users():
    return {role: create_user(username=f"{role}1", password="pw-Secret-123", role=role) for role in ALLOWED}


@pytest.mark.parametrize("area", PAGES)
def test_anonymous_pages_redirect_to_login(client, area):
    resp = client.get(PAGES[area])
    assert resp.status_code == 302 and resp["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("url", ["/api/label/queue/", "/api/studio/overview/", "/api/me/"])
def test_anonymous_api_is_refused(client, url):
    resp = client.get(url)
    assert resp.status_code in (401, 403)
    assert "detail" in resp.json()


@pytest.mark.parametrize("role", ALLOWED)
@pytest.mark.parametrize("area", PAGES)
def test_page_boundaries(client, users, role, area):
    client.force_login(users[role])
    resp = client.get(PAGES[area])
    expected = 200 if area in ALLOWED[role] else 403
    assert resp.status_code == expected, (role, area)


@pytest.mark.parametrize("role", ALLOWED)
@pytest.mark.parametrize("area", ["labeler", "admin"])
def test_api_boundaries_with_token(client, users, role, area):
    token = Token.objects.create(user=users[role])
    resp = client.get(API[area], HTTP_AUTHORIZATION=f"Token {token.key}")
    expected = 200 if area in ALLOWED[role] else 403
    assert resp.status_code == expected
    if expected == 403:
        assert f"{area} role" in resp.json()["detail"]


def test_me_reports_roles(client, users):
    client.force_login(users["labeler"])
    assert client.get("/api/me/").json()["roles"] == ["labeler"]


def test_home_sends_each_role_to_its_area(client, users):
    for role, target in [("student", "/chat/"), ("labeler", "/label/"), ("admin", "/studio/")]:
        client.force_login(users[role])
        assert client.get("/")["Location"] == target


def test_token_endpoint(client, users):
    resp = client.post("/api/auth/token/", {"username": "labeler1", "password": "pw-Secret-123"})
    assert resp.status_code == 200 and len(resp.json()["token"]) == 40
    assert client.post("/api/auth/token/", {"username": "labeler1", "password": "wrong"}).status_code == 400


def test_student_signup_creates_a_student(client):
    resp = client.post("/accounts/signup/", {"username": "newbie", "email": "n@example.com",
                                             "password1": "a-Good-pass-99", "password2": "a-Good-pass-99"})
    assert resp.status_code == 302
    assert user_roles(User.objects.get(username="newbie")) == {Role.STUDENT}


def test_signup_rejects_mismatched_passwords_and_writes_nothing(client):
    resp = client.post("/accounts/signup/", {"username": "newbie", "password1": "a-Good-pass-99",
                                             "password2": "different-99"})
    assert resp.status_code == 200 and not User.objects.filter(username="newbie").exists()


def test_signup_can_be_turned_off(client, settings):
    settings.TUTOR_ALLOW_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == 404


def test_login_logout_and_password_change(client, users):
    resp = client.post("/accounts/login/", {"username": "student1", "password": "pw-Secret-123"})
    assert resp.status_code == 302
    resp = client.post("/accounts/password/", {"old_password": "pw-Secret-123", "new_password1": "Another-pass-42",
                                               "new_password2": "Another-pass-42"})
    assert resp.status_code == 302
    assert client.post("/accounts/logout/").status_code == 302
    assert client.login(username="student1", password="Another-pass-42")


def test_createuser_command(capsys):
    call_command("createuser", "lab7", "--role", "labeler", "--password", "Lab-pass-777")
    user = User.objects.get(username="lab7")
    assert user_roles(user) == {Role.LABELER} and not user.is_staff
    call_command("createuser", "boss", "--role", "admin", "--password", "Boss-pass-777")
    assert User.objects.get(username="boss").is_staff
    with pytest.raises(CommandError, match="already exists"):
        call_command("createuser", "lab7", "--role", "labeler", "--password", "Lab-pass-777")
    with pytest.raises(CommandError, match="too short|too common|entirely numeric"):
        call_command("createuser", "weak", "--role", "student", "--password", "123")
    assert not User.objects.filter(username="weak").exists()


def test_seed_demo_is_idempotent(capsys):
    call_command("seed_demo")
    call_command("seed_demo")
    assert User.objects.filter(username__in=["student", "labeler", "admin"]).count() == 3
    assert "student-demo" in capsys.readouterr().out
