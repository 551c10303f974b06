"""No module of ours imports or touches a private name of pynetdicom, pydicom or highdicom.

An AST scan of ``node/``, ``pipeline/`` and ``training/`` (like the import-boundary test in
``tests/pipeline/test_detector.py``). A private name is one with a leading underscore (not a
dunder). Flagged:

* importing a private module or name of those libraries (``from pynetdicom._handlers import
  x``, ``from pydicom import _x``, ``import pynetdicom._globals``);
* reading or writing an attribute ``obj._name``, or ``getattr``/``setattr``/``hasattr`` with
  ``"_name"``, where the libraries define ``_name`` and our code does not (it can only be
  theirs: an attribute of their objects, or one our subclass inherits).

One exception, with its reason: ``pynetdicom._config``, pynetdicom's documented
configuration module ("Configuration Options (pynetdicom._config)" in its API reference),
and there only the switches that page documents.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("node", "pipeline", "training")
LIBRARIES = ("pynetdicom", "pydicom", "highdicom")
CONFIG_MODULE = "pynetdicom._config"
DOCUMENTED_CONFIG = frozenset(
    {
        "CODECS",
        "ENFORCE_UID_CONFORMANCE",
        "LOG_HANDLER_LEVEL",
        "LOG_REQUEST_IDENTIFIERS",
        "LOG_RESPONSE_IDENTIFIERS",
        "PASS_CONTEXTVARS",
        "STORE_RECV_CHUNKED_DATASET",
        "STORE_SEND_CHUNKED_DATASET",
        "USE_SHORT_DIMSE_AET",
        "UNRESTRICTED_STORAGE_SERVICE",
        "VALIDATORS",
        "WINDOWS_TIMER_RESOLUTION",
    }
)
"""The switches listed on https://pydicom.github.io/pynetdicom/stable/reference/config.html"""


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, variables, attributes it assigns."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if is_private(n)}


def python_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*.py")):
        if "tests" not in path.relative_to(folder).parts and path.stat().st_size < 2**20:
            yield path


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def library_private_names() -> set[str]:
    names: set[str] = set()
    for lib in LIBRARIES:
        spec = importlib.util.find_spec(lib)
        assert spec is not None and spec.origin is not None, lib
        for path in python_files(Path(spec.origin).parent):
            names |= defined_private_names(parse(path))
    return names


def _library_module(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


def violations(tree: ast.AST, theirs: set[str], ours: set[str]) -> list[str]:
    """What in ``tree`` imports or touches a private name of the libraries (line: text)."""
    found: list[str] = []
    only_theirs = theirs - ours
    config_aliases: set[str] = set()

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _library_module(alias.name):
                    continue
                if alias.name == CONFIG_MODULE:
                    config_aliases.add(alias.asname or alias.name)
                elif any(is_private(part) for part in alias.name.split(".")):
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and _library_module(node.module):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full == CONFIG_MODULE:
                    config_aliases.add(alias.asname or alias.name)
                elif node.module == CONFIG_MODULE:
                    if alias.name not in DOCUMENTED_CONFIG:
                        flag(node, f"from {node.module} import {alias.name}")
                elif any(is_private(part) for part in full.split(".")):
                    flag(node, f"from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id in config_aliases:
                if node.attr not in DOCUMENTED_CONFIG:
                    flag(node, f"{base.id}.{node.attr} (not a documented switch)")
            elif is_private(node.attr) and node.attr in only_theirs:
                flag(node, f".{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
            and node.args[1].value in only_theirs
        ):
            flag(node, f"{node.func.id}(..., {node.args[1].value!r})")
    return found


@pytest.fixture(scope="module")
def theirs() -> set[str]:
    return library_private_names()


def test_no_module_touches_a_private_name_of_pynetdicom_pydicom_or_highdicom(
    theirs: set[str],
) -> None:
    files = [p for top in OURS for p in python_files(ROOT / top)]
    trees = {p: parse(p) for p in files}
    ours: set[str] = set()
    for tree in trees.values():
        ours |= defined_private_names(tree)
    offenders = {
        str(path.relative_to(ROOT)): found
        for path, tree in trees.items()
        if (found := violations(tree, theirs, ours))
    }
    assert offenders == {}


def test_the_scan_finds_what_the_old_transport_did(theirs: set[str]) -> None:
    """The scan flags the kinds of access the node used to make (and allows the switches)."""
    code = """
from pynetdicom import _config, evt
from pynetdicom._handlers import standard_pdu_recv_handler
import pynetdicom._globals
from pynetdicom.dul import DULServiceProvider

class StreamingDUL(DULServiceProvider):
    def read(self):
        context = self.assoc._accepted_cx[1]
        self._recv_pdu.put(self._decode_pdu(b""))
        ae._servers.append(server)
        getattr(self, "_kill_thread")

_config.STORE_RECV_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"
_config.SOMETHING_UNDOCUMENTED = 1
"""
    found = violations(ast.parse(code), theirs, ours=set())
    flagged = " ".join(found)
    for what in (
        "pynetdicom._handlers",
        "pynetdicom._globals",
        "._accepted_cx",
        "._recv_pdu",
        "._decode_pdu",
        "._servers",
        "'_kill_thread'",
        "SOMETHING_UNDOCUMENTED",
    ):
        assert what in flagged, (what, found)
    assert "STORE_RECV_CHUNKED_DATASET" not in flagged
    assert "LOG_HANDLER_LEVEL" not in flagged
