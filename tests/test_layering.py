"""Layering runs one way (docs: the style guide; the package docstring of loracam.models.families): the engine
(models, LoRAs, prompts, generate, control) at the bottom, finishing and judging above it, then the studio, then the
workers and the web UI, then the CLI. A module may import its own layer and those below, never one above; the toy
world's models are found through loracam.models.builtin's tables, not imported by the stages that use them.
Read from the source (every import, also those inside functions), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import loracam

ROOT = Path(loracam.__file__).parent
ENGINE = ("models", "lora", "prompts", "generate", "control")
# package -> the packages (and top-level modules) above it, which it must not import
FORBIDDEN = {
    **{pkg: ("finish", "judge", "studio", "tune", "grid", "web", "workers", "toy", "cli") for pkg in ENGINE},
    "finish": ("studio", "web", "workers", "toy", "cli"),
    "studio": ("web", "workers", "cli"),
    "web": ("cli",),
    "workers": ("cli",),
}


def imported(path: Path) -> set[str]:
    """The loracam modules a file imports, as dotted names below loracam ("finish.detail", "cli_util")."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {n.removeprefix("loracam.") for n in names if n.startswith("loracam.")}
    return out


def above(name: str, forbidden: tuple[str, ...]) -> bool:
    head = name.split(".")[0]
    return any(head == f or (f == "cli" and head.startswith("cli")) for f in forbidden)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_a_layer_above_it(package):
    wrong = [f"{path.relative_to(ROOT)} imports loracam.{name}"
             for path in sorted((ROOT / package).rglob("*.py"))
             for name in sorted(imported(path)) if above(name, FORBIDDEN[package])]
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_lazy_imports(tmp_path):
    """The check itself: an import inside a function body is found."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from loracam.finish.detail import DetailPass\n    import loracam.cli\n")
    assert imported(f) == {"finish.detail", "cli"}
    assert above("cli_util", FORBIDDEN["web"]) and not above("generate.api", FORBIDDEN["finish"])
