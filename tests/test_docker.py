"""docker/: no Docker engine runs here, so these tests read the Dockerfile and the compose file and
check that every command they would run exists in the project, with options its program accepts."""

from __future__ import annotations

import importlib
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
from django.conf import settings
from django.core.management import get_commands
from flower.options import options as flower_options
from gunicorn.config import Config as GunicornConfig

from .conftest import ROOT

DOCKER = ROOT / "docker"
APP_SERVICES = {"web", "worker", "beat", "listener", "streamer", "flower"}
REQUIRED_SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yml").read_text())
    return loaded


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _built_here(service: dict[str, Any]) -> bool:
    return "build" in service


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile line, continuation lines joined."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _check_manage(args: list[str]) -> None:
    assert args[0] == "manage.py", args
    assert args[1] in get_commands(), f"manage.py has no command {args[1]!r}"


def _check_celery(args: list[str]) -> None:
    assert args[:2] == ["-A", "arbsite"], f"celery must load the arbsite app: {args}"
    subcommand, options = args[2], args[3:]
    assert subcommand in celery_cli.commands, f"celery has no command {subcommand!r}"
    if subcommand == "flower":
        for option in options:
            name = option.lstrip("-").split("=", 1)[0].replace("-", "_")
            assert name in flower_options._options, f"flower has no option {option!r}"
        return
    parent = celery_cli.make_context("celery", list(args[:2]), resilient_parsing=True)
    parent.obj = CLIContext(app=find_app(args[1]), no_color=True, workdir=None, quiet=True)
    celery_cli.commands[subcommand].make_context(subcommand, list(options), parent=parent)


def _check_gunicorn(args: list[str]) -> None:
    assert shutil.which("gunicorn", path=str(Path(sys.executable).parent)), "gunicorn is not installed"
    parsed = GunicornConfig().parser().parse_args(args)
    module, _, attribute = parsed.args[0].partition(":")
    assert hasattr(importlib.import_module(module), attribute), f"{parsed.args[0]} does not exist"


def check_command(argv: list[str]) -> None:
    """Fail unless `argv` is a command this project provides, with options its program accepts."""
    program, args = argv[0], argv[1:]
    if program == "python":
        _check_manage(args)
    elif program == "celery":
        _check_celery(args)
    elif program == "gunicorn":
        _check_gunicorn(args)
    else:
        pytest.fail(f"unexpected program {program!r} in {argv}")


def test_compose_runs_the_whole_stack() -> None:
    services = _services()
    assert {"postgres", "redis"} | APP_SERVICES <= set(services)
    for name in APP_SERVICES:
        assert _built_here(services[name]), f"{name} must run the project's image"


@pytest.mark.parametrize("name", sorted(APP_SERVICES | {"migrate"}))
def test_every_compose_command_exists_in_the_project(name: str) -> None:
    check_command(list(_services()[name]["command"]))


def test_the_workers_consume_every_queue_tasks_are_routed_to() -> None:
    consumed: set[str] = set()
    for service in _services().values():
        command = list(service.get("command") or [])
        if command[:4] == ["celery", "-A", "arbsite", "worker"]:
            consumed |= set(command[command.index("-Q") + 1].split(","))
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    assert routed | {settings.CELERY_TASK_DEFAULT_QUEUE} <= consumed


def test_services_start_after_what_they_depend_on() -> None:
    services = _services()
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        if name in APP_SERVICES:
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_build_context_and_dockerfile_exist() -> None:
    for service in _services().values():
        if _built_here(service):
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()


def test_dockerfile_installs_the_requirements_and_copies_files_that_exist() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    assert any("pip install" in run and "-r requirements.txt" in run for run in runs)
    for instruction, arguments in instructions:
        if instruction == "COPY":
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY source {source} does not exist"


def test_dockerfile_commands_exist_in_the_project() -> None:
    for instruction, arguments in _dockerfile_instructions():
        if instruction == "RUN" and "manage.py" in arguments:
            words = shlex.split(arguments)
            check_command(words[words.index("python") :])
        if instruction == "CMD":
            check_command(yaml.safe_load(arguments))


def test_secrets_come_from_an_uncommitted_env_file() -> None:
    text = (DOCKER / "compose.yml").read_text()
    for secret in REQUIRED_SECRETS:
        assert f"${{{secret}:?" in text, f"{secret} must be required, not defaulted"
    for service in _services().values():
        if _built_here(service):
            assert service["env_file"] == ".env"
    tracked = subprocess.run(
        ["git", "ls-files", "docker/.env", ".env"], cwd=ROOT, capture_output=True, text=True
    )
    assert tracked.stdout == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0, "docker/.env must be ignored by git"
