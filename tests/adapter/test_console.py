"""The console's static page, as the adapter serves it and as the package ships it."""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from adapter.app import create_app
from adapter.config import Config, load_config
from adapter.console import console_routes
from pidf import Activity, AttributeType, Place, Privacy, Sphere

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "adapter" / "console" / "static"


class Probe:
    async def ping(self) -> float:
        return 0.001


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "conf/adapter.toml", cwd=REPO)


@pytest.fixture
def client(config: Config) -> Iterator[TestClient]:
    app = create_app(config, sip_probe=Probe(), routes=console_routes())
    with TestClient(app, follow_redirects=False) as client:
        yield client


def test_console_redirects_to_its_page_which_needs_no_credentials(client: TestClient) -> None:
    response = client.get("/console")
    assert response.status_code == 308
    assert response.headers["location"] == "console/"  # relative: holds under a prefix
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="console.js">' in page.text


def test_the_cometd_client_is_served_from_the_package_not_a_cdn(client: TestClient) -> None:
    script = client.get("/console/console.js")
    assert script.status_code == 200
    assert 'from "./vendor/cometd/cometd.js"' in script.text
    assert "http://" not in script.text and "https://" not in script.text
    vendored = client.get("/console/vendor/cometd/cometd.js")
    assert vendored.status_code == 200
    assert "javascript" in vendored.headers["content-type"]
    assert "Apache License" in client.get("/console/vendor/cometd/LICENSE").text
    assert client.get("/console/nothing.js").status_code == 404


def test_the_pickers_are_the_spec_enums(client: TestClient) -> None:
    model = client.get("/console/model.json").json()
    assert model["Activity"] == [a.value for a in Activity]
    assert model["Place"] == [p.value for p in Place]
    assert model["Privacy"] == [p.value for p in Privacy]
    assert model["Sphere"] == [s.value for s in Sphere]
    assert model["attributes"] == [t.value for t in AttributeType]
    assert "Busy" in model["Activity"] and "SphereWork" in model["Sphere"]


def test_every_console_file_is_package_data() -> None:
    """`pip install .` carries what is under static/: pyproject's globs cover every file."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["adapter.console"]
    files = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert "static/vendor/cometd/cometd.js" in files and "static/index.html" in files
    # setuptools globs: "*" does not cross a "/".
    missing = [
        f for f in files
        if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert missing == []
