"""The patched-libunicorn plumbing: the patch series, the build key, which library
the engine picks, and the self-test's check of the patches a patched build carries."""

from __future__ import annotations

import pytest

from pyaxvisor.engine.tcg import build_unicorn, common, unicorn_select
from pyaxvisor.engine.tcg.common import SelfTestFailed, UnicornBuild


def test_the_series_names_patches_that_exist_with_a_header():
    patches = build_unicorn.series()
    assert [p.name for p in patches][:2] == ["0001-notdirty-code-pages.patch",
                                             "0002-inline-exit-check.patch"]
    for patch in patches:
        text = patch.read_text()
        head = text.split("\n---\n", 1)[0]
        assert "Subject: [PATCH]" in head and "What:" in head and "Why:" in head, patch.name
        assert "\ndiff --git a/" in text, patch.name
    assert unicorn_select.expected_patches()[0] == "notdirty-code-pages"
    assert len(unicorn_select.expected_patches()) == len(patches)


def test_the_build_key_covers_the_patches(monkeypatch, tmp_path):
    key = build_unicorn.build_key()
    assert key == build_unicorn.build_key()
    (tmp_path / "series").write_text("0001-x.patch\n")
    (tmp_path / "0001-x.patch").write_text("something else\n")
    monkeypatch.setattr(build_unicorn, "PATCH_DIR", tmp_path)
    assert build_unicorn.build_key() != key


def test_an_explicit_library_or_the_stock_switch_wins(monkeypatch):
    monkeypatch.setenv("LIBUNICORN_PATH", "/somewhere")
    unicorn_select.select()
    assert unicorn_select.os.environ["LIBUNICORN_PATH"] == "/somewhere"
    monkeypatch.delenv("LIBUNICORN_PATH")
    monkeypatch.setenv("PYAXVISOR_STOCK_UNICORN", "1")
    unicorn_select.select()
    assert "LIBUNICORN_PATH" not in unicorn_select.os.environ


def test_a_patched_build_missing_a_patch_is_refused(monkeypatch):
    monkeypatch.setattr(common, "_checked", False)
    monkeypatch.setattr(common, "_build", UnicornBuild("/x/libunicorn.so.2",
                                                       ("notdirty-code-pages",), True))
    with pytest.raises(SelfTestFailed, match="lacks the patches inline-exit-check"):
        common.check_build()
    complete = UnicornBuild("/x/libunicorn.so.2", unicorn_select.expected_patches(), True)
    monkeypatch.setattr(common, "_build", complete)
    assert common.check_build() is complete
    assert "patched libunicorn" in complete.describe()


def test_the_running_library_is_described():
    build = common.unicorn_build()
    assert build.path.endswith("libunicorn.so.2")
    if build.patched:
        assert set(unicorn_select.expected_patches()) <= set(build.patches)
    assert "libunicorn 2.1.4" in build.describe()


def test_the_engine_runs_on_the_patched_build_with_every_patch():
    # `pip install .` builds it (setup.py); the stock wheel's library is only a fallback
    build = common.unicorn_build()
    assert build.patched, f"the engine runs on the stock library {build.path}"
    assert build.patches == unicorn_select.expected_patches()


def _tar(path, members):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = len(target.encode())
                tar.addfile(info, io.BytesIO(target.encode()))


@pytest.mark.parametrize("members", [
    [("../evil", "file", "x")],
    [("/abs", "file", "x")],
    [("src/link", "sym", "../../outside")],
])
def test_the_sdist_is_unpacked_only_below_its_directory_without_the_data_filter(
        monkeypatch, tmp_path, members):
    # Debian 12's Python 3.11.2 has no tarfile data filter: members are checked by hand
    import tarfile
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "out"
    dest.mkdir()
    with tarfile.open(tmp_path / "bad.tar.gz") as tar, \
            pytest.raises(RuntimeError, match="unsafe member"):
        build_unicorn._extract(tar, dest)
    assert list(dest.iterdir()) == []
    _tar(tmp_path / "good.tar.gz", [("src/a.c", "file", "int a;"), ("src/l", "sym", "a.c")])
    with tarfile.open(tmp_path / "good.tar.gz") as tar:
        build_unicorn._extract(tar, dest)
    assert (dest / "src" / "l").read_text() == "int a;"
