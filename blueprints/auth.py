"""Logging in: pages for people, and Basic auth, tokens and JSESSION for scripts.

Pages need a logged-in user. Under /api and /data a script authenticates
with HTTP Basic (password or personal token), a bearer token, or the
JSESSIONID that /data/JSESSION hands out; such calls never get a login page,
and calls that change state are not authorized by the browser's login cookie
alone (that cookie is what a cross-site request would carry).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_login import LoginManager, current_user, login_user, logout_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func, select
from werkzeug.security import check_password_hash, generate_password_hash

from blueprints import audit
from models import ApiToken, User, db, utcnow

bp = Blueprint("auth", __name__)
login_manager = LoginManager()

API_PREFIXES = ("/api/", "/data/", "/REST/")
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
PUBLIC_ENDPOINTS = {"auth.login", "static"}
MAX_FAILED_LOGINS = 5
LOCK_MINUTES = 10
JSESSION_MAX_AGE = 12 * 3600
_dummy_hash: str | None = None


def _dummy() -> str:
    """A hash to check against when the user is unknown, so that both cases
    take as long."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = generate_password_hash("not a password", _hash_method())
    return _dummy_hash


def _hash_method() -> str:
    return current_app.config["PASSWORD_HASH_METHOD"]


def is_api_request() -> bool:
    return request.path.startswith(API_PREFIXES)


def init_app(app) -> None:
    login_manager.init_app(app)
    app.before_request(require_login)


@login_manager.user_loader
def _load_from_cookie(user_id: str):
    if is_api_request() and request.method not in SAFE_METHODS:
        return None
    user = db.session.get(User, int(user_id))
    return user if user and user.enabled else None


@login_manager.request_loader
def _load_from_headers(req):
    """Authenticate a script: Basic (password or token), bearer token, JSESSIONID."""
    if not is_api_request():
        return None
    auth = req.authorization
    if auth and auth.type == "basic" and auth.username:
        return check_password(auth.username, auth.password or "") or \
            _user_for_token(auth.password, auth.username)
    if auth and auth.type == "bearer" and auth.token:
        return _user_for_token(auth.token)
    jsession = req.cookies.get("JSESSIONID")
    if jsession:
        return _user_for_jsession(jsession)
    return None


@login_manager.unauthorized_handler
def _unauthorized():
    if is_api_request():
        response = make_response({"error": "Authentication required."}, 401)
        if request.path.startswith(("/data/", "/REST/")):
            response.headers["WWW-Authenticate"] = 'Basic realm="Scanyard"'
        return response
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def require_login():
    """Before each request: everything but the login page needs a user."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


def check_password(username: str, password: str) -> User | None:
    """Return the user when the password is right and the account usable.

    Failed attempts count; after MAX_FAILED_LOGINS the account is locked for
    LOCK_MINUTES, whatever password comes next.
    """
    user = db.session.scalar(select(User).where(func.lower(User.username) == username.lower()))
    if user is None:
        check_password_hash(_dummy(), password)
        return None
    now = utcnow()
    if user.locked_until and user.locked_until > now:
        return None
    if not user.enabled or not check_password_hash(user.password_hash or _dummy(), password):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + dt.timedelta(minutes=LOCK_MINUTES)
            user.failed_logins = 0
        db.session.commit()
        return None
    if user.failed_logins:
        user.failed_logins = 0
        db.session.commit()
    return user


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(user: User, name: str) -> str:
    """Create a personal API token; return its text (shown once, stored hashed)."""
    token = "sy_" + secrets.token_urlsafe(32)
    db.session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_token(token)))
    return token


def _user_for_token(token: str | None, username: str | None = None) -> User | None:
    if not token or not token.startswith("sy_"):
        return None
    row = db.session.scalar(select(ApiToken).filter_by(token_hash=hash_token(token),
                                                        revoked=False))
    if row is None:
        return None
    user = db.session.get(User, row.user_id)
    if user is None or not user.enabled:
        return None
    if username is not None and not hmac.compare_digest(user.username.lower(),
                                                        username.lower()):
        return None
    row.last_used = utcnow()
    db.session.commit()
    return user


def _jsession_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="jsession")


def jsession_for(user: User) -> str:
    return _jsession_serializer().dumps({"u": user.id, "n": secrets.token_hex(8)})


def _user_for_jsession(value: str) -> User | None:
    try:
        data = _jsession_serializer().loads(value, max_age=JSESSION_MAX_AGE)
    except BadSignature:
        return None
    user = db.session.get(User, data.get("u"))
    return user if user and user.enabled else None


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/") and not urlsplit(target).netloc \
            and not target.startswith("//"):
        return target
    return url_for("archive.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form, or log in."""
    no_users = db.session.scalar(select(func.count()).select_from(User)) == 0
    if request.method == "GET":
        return render_template("auth/login.html", no_users=no_users)
    username = request.form.get("username", "").strip()
    user = check_password(username, request.form.get("password", ""))
    if user is None:
        audit.record("login_failed", target=username[:64])
        db.session.commit()
        flash("Wrong user name or password, or the account is locked or disabled.", "error")
        return render_template("auth/login.html", no_users=no_users), 401
    login_user(user)
    audit.record("login", target=user.username)
    db.session.commit()
    return redirect(_safe_next(request.args.get("next")), code=303)


@bp.post("/logout")
def logout():
    """Log out."""
    audit.record("logout", target=current_user.username)
    db.session.commit()
    logout_user()
    return redirect(url_for("auth.login"), code=303)


@bp.get("/profile")
def profile():
    """Show the user's profile and personal API tokens."""
    tokens = db.session.scalars(select(ApiToken).filter_by(user_id=current_user.id)
                                .order_by(ApiToken.created.desc()))
    return render_template("auth/profile.html", tokens=list(tokens), new_token=None)


@bp.post("/profile/tokens")
def create_token():
    """Create a personal API token and show it once."""
    name = (request.form.get("name") or "").strip()[:64] or "token"
    token = new_token(current_user, name)
    audit.record("token_created", target=name)
    db.session.commit()
    tokens = db.session.scalars(select(ApiToken).filter_by(user_id=current_user.id)
                                .order_by(ApiToken.created.desc()))
    return render_template("auth/profile.html", tokens=list(tokens), new_token=token)


@bp.post("/profile/tokens/<int:token_id>/revoke")
def revoke_token(token_id):
    """Revoke one of the user's tokens."""
    row = db.session.get(ApiToken, token_id)
    if row is None or row.user_id != current_user.id:
        return render_template("error.html", error=_not_found()), 404
    row.revoked = True
    audit.record("token_revoked", target=row.name)
    db.session.commit()
    flash(f"Token {row.name} revoked.", "info")
    return redirect(url_for(".profile"), code=303)


def _not_found():
    from werkzeug.exceptions import NotFound

    return NotFound("No such token.")


@bp.get("/data/JSESSION")
def jsession():
    """Return a session id for a script that authenticated (XNAT's JSESSION)."""
    value = jsession_for(current_user)
    response = make_response(value, 200, {"Content-Type": "text/plain"})
    response.set_cookie("JSESSIONID", value, httponly=True, samesite="Strict",
                        secure=request.is_secure, path="/", max_age=JSESSION_MAX_AGE)
    return response


@bp.delete("/data/JSESSION")
def end_jsession():
    """Forget the script's session id."""
    response = make_response("", 200)
    response.delete_cookie("JSESSIONID", path="/")
    return response


def set_password(user: User, password: str) -> None:
    user.password_hash = generate_password_hash(password, _hash_method())
