"""`manage.py check --deploy` is clean under the production settings that compose.yaml and the README give."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_compose import environment, load

ROOT = Path(__file__).resolve().parent.parent
#: What the README's "Production" section has the operator export before `docker compose up`.
OPERATOR_EXPORTS = {
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
    "FLOWER_BASIC_AUTH": "admin:" + secrets.token_urlsafe(16),
    "QUEUEING_API_TOKEN": secrets.token_urlsafe(24),
}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")

pytestmark = pytest.mark.slow


def interpolate(value: str, shell: dict[str, str]) -> str:
    """``value`` as docker compose resolves it: ``${X}``, ``${X:-default}``, ``${X:?error}``."""

    def resolve(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if shell.get(name):
            return shell[name]
        if op == "?":
            raise AssertionError(f"compose.yaml requires {name}: {arg}")
        return arg if op == "-" else ""

    return INTERPOLATION.sub(resolve, value)


def web_environment(**shell: str) -> dict[str, str]:
    """The web service's environment in compose.yaml, resolved with the operator's exports (and ``shell``)."""
    exported = {**OPERATOR_EXPORTS, **shell}
    return {key: interpolate(value, exported) for key, value in environment(load()["services"]["web"]).items()}


def check_deploy(app_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # A clean environment, as in the container: nothing of the test run's own settings leaks in.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "QUEUEING_", "REDIS_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={**base, **app_env, "QUEUEING_VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_production_run_passes_the_deploy_checks_without_a_warning(tmp_path: Path) -> None:
    env = web_environment()
    assert env["DJANGO_HTTPS"] == "true"

    result = check_deploy(env, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_served_over_plain_http_the_deploy_checks_warn_about_https(tmp_path: Path) -> None:
    # The same run with the HTTPS switch off (a trial on http://localhost:8000): the checks see it
    result = check_deploy(web_environment(DJANGO_HTTPS="false", DJANGO_SECURE_HSTS_SECONDS="0"), tmp_path)

    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr, result.stderr


def test_the_interpolation_resolves_as_compose_does() -> None:
    shell = {"SET": "value", "EMPTY": ""}

    assert interpolate("${SET:-other}/${UNSET:-fallback}/${EMPTY:-fallback}/${UNSET}", shell) == (
        "value/fallback/fallback/"
    )
    with pytest.raises(AssertionError, match=r"compose\.yaml requires UNSET: say it"):
        interpolate("${UNSET:?say it}", shell)
