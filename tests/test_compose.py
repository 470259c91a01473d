"""compose.yaml and the Dockerfile, checked against the code without Docker.

Each check returns the problems it finds, so that ``test_the_checks_catch_*`` can show that a broken file
does fail them: a typo in a command, an option, an environment variable or a service name.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from django.core.management import get_commands, load_command_class
from flower.command import is_flower_envvar
from flower.options import options as flower_options
from gunicorn.config import Config as GunicornConfig

from queueing import conf

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
VENV_BIN = Path(sys.executable).parent

EXPECTED_SERVICES = {"redis", "postgres", "migrate", "web", "worker", "beat", "flower", "gateway"}
#: What every service built from the project's image must be given.
REQUIRED_APP_ENV = {
    "DATABASE_URL",
    "REDIS_URL",
    "DJANGO_SECRET_KEY",
    "DJANGO_ALLOWED_HOSTS",
    "QUEUEING_API_TOKEN",
    "WHATSAPP_GATEWAY_URL",
    "DJANGO_HTTPS",
}
INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<rest>[^}]*)\}")


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def app_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the project's own image."""
    return {name: s for name, s in doc["services"].items() if "build" in s}


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def names_read_by_settings() -> set[str]:
    """Environment variables that project/settings.py reads (``env.str("NAME", …)`` and the like)."""
    tree = ast.parse((ROOT / "project" / "settings.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9_]+", node.args[0].value)
        ):
            names.add(node.args[0].value)
    return names


def known_env_names() -> set[str]:
    return names_read_by_settings() | {declared.env_var for declared in conf.SETTINGS}


# --- the checks -----------------------------------------------------------------------------------------


def service_problems(doc: dict[str, Any]) -> list[str]:
    services = doc.get("services") or {}
    problems = [f"service {name!r} is missing" for name in sorted(EXPECTED_SERVICES - set(services))]
    for name, service in services.items():
        depends = service.get("depends_on") or []
        for needed in depends:
            if needed not in services:
                problems.append(f"{name}: depends_on names {needed!r}, which is not a service")
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            dockerfile = ROOT / context / "Dockerfile"
            if not dockerfile.is_file():
                problems.append(f"{name}: builds from {dockerfile}, which does not exist")
    return problems


def command_problems(name: str, words: list[str]) -> list[str]:
    """Problems with one app service's command: the program, its subcommand and its options."""
    if not words:
        return [f"{name}: no command"]
    program, rest = words[0], words[1:]
    if not (VENV_BIN / program).is_file():
        return [f"{name}: {program!r} is not installed in {VENV_BIN}"]
    if program == "python":
        return manage_py_problems(name, rest)
    if program == "celery":
        return celery_problems(name, rest)
    if program == "gunicorn":
        return gunicorn_problems(name, rest)
    return []


def manage_py_problems(name: str, words: list[str]) -> list[str]:
    if len(words) < 2 or words[0] != "manage.py":
        return [f"{name}: python runs {words[:1]}, expected 'manage.py <command>'"]
    command, args = words[1], words[2:]
    commands = get_commands()
    if command not in commands:
        return [f"{name}: {command!r} is not a Django management command"]
    parser = load_command_class(commands[command], command).create_parser("manage.py", command)
    try:
        parser.parse_args(args)
    except Exception as exc:  # noqa: BLE001  (CommandError, SystemExit: any refusal is a problem)
        return [f"{name}: manage.py {command} refuses {args}: {exc}"]
    return []


def celery_problems(name: str, words: list[str]) -> list[str]:
    if len(words) < 3 or words[0] not in ("-A", "--app"):
        return [f"{name}: expected 'celery -A <app> <subcommand> …', got {words}"]
    app_name, sub, args = words[1], words[2], words[3:]
    try:
        app = find_app(app_name)
    except Exception as exc:  # noqa: BLE001  (an import of any kind failing is the problem)
        return [f"{name}: celery app {app_name!r} does not import: {exc!r}"]
    if sub not in celery_cli.commands:
        return [f"{name}: {sub!r} is not a celery subcommand; known: {', '.join(sorted(celery_cli.commands))}"]
    ctx = CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    try:
        parsed = celery_cli.commands[sub].make_context(sub, list(args), obj=ctx)
    except Exception as exc:  # noqa: BLE001  (click's usage errors)
        return [f"{name}: celery {sub} refuses {args}: {exc}"]
    problems = []
    for arg in parsed.params.get("tornado_argv") or ():  # flower passes its own options on to tornado
        option = arg.removeprefix("--").split("=", 1)[0]
        if option.replace("_", "-") not in flower_options._options:
            problems.append(f"{name}: {arg!r} is not a Flower option")
    return problems


def gunicorn_problems(name: str, words: list[str]) -> list[str]:
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            parsed = GunicornConfig().parser().parse_args(words)
        except SystemExit:
            return [f"{name}: gunicorn refuses {words}"]
    if len(parsed.args) != 1:
        return [f"{name}: gunicorn needs one WSGI target, got {parsed.args}"]
    module, _, attribute = parsed.args[0].partition(":")
    try:
        target = getattr(importlib.import_module(module), attribute or "application")
    except (ImportError, AttributeError) as exc:
        return [f"{name}: gunicorn target {parsed.args[0]!r} does not import: {exc!r}"]
    return [] if callable(target) else [f"{name}: gunicorn target {parsed.args[0]!r} is not callable"]


def env_problems(doc: dict[str, Any]) -> list[str]:
    known = known_env_names()
    problems = []
    for name, service in app_services(doc).items():
        env = environment(service)
        for key, value in env.items():
            if key not in known and not is_flower_envvar(key):
                problems.append(f"{name}: {key} is read by neither the settings nor Flower")
            if (match := INTERPOLATION.match(value)) and match["name"] != key:
                problems.append(f"{name}: {key} is taken from ${{{match['name']}}}, a different name")
        for missing in sorted(REQUIRED_APP_ENV - set(env)):
            problems.append(f"{name}: {missing} is not set")
    return problems


def all_problems(doc: dict[str, Any]) -> list[str]:
    problems = service_problems(doc) + env_problems(doc)
    for name, service in app_services(doc).items():
        problems += command_problems(name, argv(service))
    return problems


# --- the file as it is ----------------------------------------------------------------------------------


def test_the_compose_file_defines_every_service_and_all_checks_pass() -> None:
    assert all_problems(load()) == []


def test_every_env_var_the_settings_read_is_spelled_as_they_read_it() -> None:
    # The names come from the code, so a renamed setting makes the compose file fail, not drift.
    assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "WHATSAPP_GATEWAY_URL"} <= names_read_by_settings()
    assert env_problems(load()) == []


def test_the_secret_key_and_flower_credentials_are_required_not_defaulted() -> None:
    services = load()["services"]

    for name, service in app_services(load()).items():
        assert ":?" in environment(service)["DJANGO_SECRET_KEY"], name
    assert environment(services["flower"])["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_redis_keeps_its_data_and_never_evicts_queued_tasks() -> None:
    redis = load()["services"]["redis"]
    words = argv(redis)

    assert redis["image"] == "redis:7"
    assert words[0] == "redis-server"
    assert " ".join(words[1:]).replace("=", " ").split() == [
        "--appendonly",
        "yes",
        "--maxmemory-policy",
        "noeviction",
    ]


def test_postgres_has_a_healthcheck_that_the_migration_waits_for() -> None:
    services = load()["services"]

    assert services["postgres"]["image"] == "postgres:16"
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_exactly_one_beat_runs_and_no_worker_embeds_one() -> None:
    commands = {name: argv(s) for name, s in app_services(load()).items()}

    beats = [name for name, words in commands.items() if words[:1] == ["celery"] and "beat" in words]
    embedded = [name for name, words in commands.items() if "worker" in words and ({"-B", "--beat"} & set(words))]

    assert beats == ["beat"]
    assert embedded == []


def test_each_service_runs_the_command_it_is_named_for() -> None:
    services = load()["services"]

    assert argv(services["web"])[:2] == ["gunicorn", "project.wsgi"]
    assert argv(services["worker"])[:4] == ["celery", "-A", "project", "worker"]
    assert argv(services["flower"])[:4] == ["celery", "-A", "project", "flower"]
    assert argv(services["migrate"])[:3] == ["python", "manage.py", "migrate"]
    assert argv(services["gateway"])[:3] == ["python", "manage.py", "fake_whatsapp_gateway"]


def test_the_dockerfile_installs_the_project_from_files_that_exist() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"pip install \.(\s|$)", dockerfile)
    for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE):
        *sources, _destination = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"


# --- the checks fail on a broken file -------------------------------------------------------------------


def replace_in_command(doc: dict[str, Any], service: str, old: str, new: str) -> None:
    words = argv(doc["services"][service])
    assert old in words, f"{old!r} not in {service}'s command {words}"
    doc["services"][service]["command"] = [new if word == old else word for word in words]


def test_the_checks_catch_a_typo_in_a_celery_subcommand() -> None:
    doc = copy.deepcopy(load())
    replace_in_command(doc, "worker", "worker", "wroker")

    assert any("'wroker' is not a celery subcommand" in p for p in all_problems(doc))


@pytest.mark.parametrize(
    ("service", "old", "new", "expected"),
    [
        ("worker", "-l", "--lvl", "celery worker refuses"),
        ("beat", "info", "loud", "celery beat refuses"),
        ("worker", "project", "projetc", "does not import"),
        ("flower", "--port=5555", "--prot=5555", "not a Flower option"),
        ("gateway", "fake_whatsapp_gateway", "fake_whatsap_gateway", "not a Django management command"),
        ("gateway", "--port", "--prot", "manage.py fake_whatsapp_gateway refuses"),
        ("migrate", "--noinput", "--no-input-please", "manage.py migrate refuses"),
        ("web", "project.wsgi", "project.wsgii", "does not import"),
        ("web", "--bind", "--bnd", "gunicorn refuses"),
        ("web", "gunicorn", "gunicron", "is not installed"),
    ],
)
def test_the_checks_catch_a_typo_in_a_command(service: str, old: str, new: str, expected: str) -> None:
    doc = copy.deepcopy(load())
    replace_in_command(doc, service, old, new)

    problems = all_problems(doc)

    assert any(expected in p and p.startswith(f"{service}:") for p in problems), problems


def test_the_checks_catch_a_misspelled_environment_variable() -> None:
    doc = copy.deepcopy(load())
    env = doc["services"]["worker"]["environment"] = dict(doc["services"]["worker"]["environment"])
    env["QUEUEING_API_TOKN"] = env.pop("QUEUEING_API_TOKEN")

    problems = env_problems(doc)

    assert "worker: QUEUEING_API_TOKN is read by neither the settings nor Flower" in problems
    assert "worker: QUEUEING_API_TOKEN is not set" in problems


def test_the_checks_catch_a_value_taken_from_a_differently_named_variable() -> None:
    doc = copy.deepcopy(load())
    env = doc["services"]["web"]["environment"] = dict(doc["services"]["web"]["environment"])
    env["DJANGO_SECRET_KEY"] = "${DJANGO_SECRET_KY:?required}"

    assert any("DJANGO_SECRET_KY" in p for p in env_problems(doc))


def test_the_checks_catch_a_missing_service_and_a_dangling_depends_on() -> None:
    doc = copy.deepcopy(load())
    del doc["services"]["beat"]
    doc["services"]["web"]["depends_on"] = {"migrations": {"condition": "service_completed_successfully"}}

    problems = service_problems(doc)

    assert "service 'beat' is missing" in problems
    assert "web: depends_on names 'migrations', which is not a service" in problems


def test_the_checks_catch_a_build_without_a_dockerfile() -> None:
    doc = copy.deepcopy(load())
    doc["services"]["web"]["build"] = "./nowhere"

    assert any("web: builds from" in p for p in service_problems(doc))


# --- the RabbitMQ variant: compose.rabbitmq.yaml over compose.yaml ---------------------------------------------

RABBITMQ_OVERRIDE = ROOT / "compose.rabbitmq.yaml"
#: Lists that Compose appends when it merges an override file; every other list (command, healthcheck) is replaced.
APPENDED_LISTS = {"ports", "expose", "volumes", "dns"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """``docker compose -f base -f override``: mappings merged key by key, the lists above appended."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, value in override.items():
            merged[k] = merge(base[k], value, k) if k in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list) and key in APPENDED_LISTS:
        return base + [item for item in override if item not in base]
    return override


def load_rabbitmq_variant() -> dict[str, Any]:
    return merge(load(), yaml.safe_load(RABBITMQ_OVERRIDE.read_text()))


def test_the_rabbitmq_variant_passes_every_check_and_sends_every_service_to_rabbitmq() -> None:
    doc = load_rabbitmq_variant()
    services = doc["services"]

    assert all_problems(doc) == []
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.")
    assert "rabbitmq-data" in doc["volumes"]
    for name, service in app_services(doc).items():
        env = environment(service)
        assert env["CELERY_BROKER_URL"].startswith("amqp://"), name
        assert "@rabbitmq:5672/" in env["CELERY_BROKER_URL"], name
        # Redis stays, for the status counters and shared copies
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
    for name in ("web", "worker", "beat", "flower"):
        assert services[name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        # what compose.yaml gave them is kept, not replaced
        assert "redis" in services[name]["depends_on"], name
    assert argv(services["worker"])[:4] == ["celery", "-A", "project", "worker"]


def test_the_rabbitmq_variants_healthcheck_is_a_command_rabbitmq_has() -> None:
    words = load_rabbitmq_variant()["services"]["rabbitmq"]["healthcheck"]["test"]
    assert words[:2] == ["CMD", "rabbitmq-diagnostics"]
    if shutil.which("rabbitmq-diagnostics") is None:
        pytest.skip("rabbitmq-diagnostics is not installed here")
    subcommand = next(word for word in words[2:] if not word.startswith("-"))

    help_text = subprocess.run(["rabbitmq-diagnostics", "help", subcommand], capture_output=True, timeout=60)

    assert help_text.returncode == 0, help_text.stderr


def test_the_checks_catch_a_misspelled_variable_in_the_rabbitmq_variant() -> None:
    override = yaml.safe_load(RABBITMQ_OVERRIDE.read_text())
    override["services"]["worker"]["environment"] = {"CELERY_BROKR_URL": "amqp://rabbitmq"}

    problems = env_problems(merge(load(), override))

    assert "worker: CELERY_BROKR_URL is read by neither the settings nor Flower" in problems
