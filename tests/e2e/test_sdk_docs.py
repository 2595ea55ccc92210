"""The SDK examples of docs/sdk.md and of the README's SDK section run, in order, against a real ``tessera serve``.

The examples use ``http://127.0.0.1:8200`` (and ``:8201`` as a second node); here the first is a proxy in front of
the test server and the second a port where nothing listens. A line ``# ... every node goes down ...`` in an
example is where the proxy starts refusing connections, so the last-known-good example meets a real outage.
``TESSERA_TOKEN`` is set, as the page says.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from tests.netfakes import SwitchableProxy
from tests.servers import REPO, ServerProcess, free_port

pytestmark = pytest.mark.slow
TOKEN = "tsr_sdk-docs-root-token-abcdefghijklm"
OUTAGE = "# ... every node goes down ..."


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def readme_sdk_section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## SDK and CLI")
    return readme[start:readme.index("\n## ", start + 1)]


@pytest.fixture
def node(tmp_path, monkeypatch):
    server = ServerProcess(tmp_path / "data", root_token=TOKEN).start()
    proxy = SwitchableProxy(server.port)
    monkeypatch.setenv("TESSERA_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    yield proxy
    proxy.close()
    server.stop()


def run_examples(blocks: list[str], proxy: SwitchableProxy, source: str) -> str:
    dead = f"http://127.0.0.1:{free_port()}"
    namespace: dict = {"__name__": "__docs__"}
    printed = io.StringIO()
    for number, block in enumerate(blocks, 1):
        code = block.replace("http://127.0.0.1:8201", dead).replace("http://127.0.0.1:8200", proxy.url)
        parts = code.split(OUTAGE)
        with contextlib.redirect_stdout(printed):
            for index, part in enumerate(parts):
                if index:
                    proxy.mode = "refuse"
                exec(compile(part, f"{source} example {number}", "exec"), namespace)  # noqa: S102 - the docs' own code
    return printed.getvalue()


def test_docs_sdk_examples_run(node):
    blocks = python_blocks((REPO / "docs" / "sdk.md").read_text())
    assert len(blocks) >= 6
    assert any(OUTAGE in block for block in blocks) and any("AsyncClient" in block for block in blocks)
    printed = run_examples(blocks, node, "docs/sdk.md")
    assert "db.internal 1 False" in printed and "not_found 404" in printed
    assert "Entry(key='database.password', value=<secret>" in printed  # the repr hides it (export shows it)
    assert "someone wrote it first; now at 1" in printed and "no_route" in printed
    assert "True websocket" in printed
    assert "serving the last-known-good database.host at version" in printed
    assert node.mode == "refuse"


def test_readme_sdk_examples_run(node):
    blocks = python_blocks(readme_sdk_section())
    assert blocks
    printed = run_examples(blocks, node, "README.md")
    assert "features.new_checkout True" in printed
