"""packaging/pyfuse3/build.py: the edits apply to exactly the text they expect, or fail loudly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from wsfuse import doctor

BUILD = Path(__file__).resolve().parents[1] / "packaging" / "pyfuse3" / "build.py"


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pyfuse3_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_source(tmp_path: Path, build: ModuleType, *, extra: str = "") -> Path:
    """An sdist tree whose files hold each edit's original text once (plus `extra`)."""
    package = tmp_path / "src" / "pyfuse3"
    package.mkdir(parents=True)
    for name, old, _ in build.EDITS:
        path = package / name
        path.write_text((path.read_text() if path.exists() else "# head\n") + old + extra)
    return tmp_path


def test_edits_replace_each_original_once(tmp_path: Path) -> None:
    build = load_build()
    source = fake_source(tmp_path, build)
    build.apply_edits(source)
    for name, _old, new in build.EDITS:
        text = (source / "src" / "pyfuse3" / name).read_text()
        assert text == "# head\n" + new
    handlers = (source / "src" / "pyfuse3" / "handlers.pxi").read_text()
    assert f"if pybuf.len >= {build.RELEASE_GIL_FROM}:\n            with nogil:\n" in handlers
    init = (source / "src" / "pyfuse3" / "__init__.pyx").read_text()
    assert f"WSFUSE_PATCH = {build.PATCH_LEVEL}" in init


def test_unexpected_source_fails_without_patching(tmp_path: Path) -> None:
    build = load_build()
    source = fake_source(tmp_path, build)
    handlers = source / "src" / "pyfuse3" / "handlers.pxi"
    handlers.write_text("# a pyfuse3 whose read handler looks different\n")
    with pytest.raises(SystemExit, match=r"handlers\.pxi has the text to patch 0 times"):
        build.apply_edits(source)


def test_installed_pyfuse3_carries_the_current_edits() -> None:
    """scripts/setup.sh (the README's commands) builds it; a stock pyfuse3 works but is slower."""
    import pyfuse3

    build = load_build()
    assert doctor.PYFUSE3_PATCH_LEVEL == build.PATCH_LEVEL
    assert getattr(pyfuse3, "WSFUSE_PATCH", 0) == build.PATCH_LEVEL
