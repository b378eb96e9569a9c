"""The pure parts of the bundle build: which llama.cpp files the hook collects, what is trimmed from Qt,
the icon containers, the entry point's program names, and the embedded model taken from the bundle."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import pytest

from installers.icons import ICNS_TYPES, ICO_SIZES, icns_bytes, ico_bytes, png_size, read_icns, read_ico
from installers.pyinstaller.bundle_filter import drop_unused, is_unused
from installers.pyinstaller.closedmesh_entry import program_name
from installers.pyinstaller.llama_libs import is_llama_library, llama_libraries
from runtime.models import embedded

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "assets" / "generated"


@pytest.mark.parametrize("name, wanted", [
    ("libllama.so", True), ("libggml-cpu.so.0", True), ("libggml-cpu.so.0.25.3", False), ("libggml-base.so.0", True), ("libmtmd.so", True),
    ("libggml-metal.dylib", True), ("ggml-base.dll", True), ("llama.dll", True), ("libggml-cuda.so", True),
    ("llama.lib", False), ("libggml.a", False), ("ggml-config.cmake", False), ("llama.pc", False),
    ("libgomp.so.1", False), ("libpython3.11.so", False),
])
def test_which_files_are_llama_libraries(name, wanted):
    assert is_llama_library(name) is wanted


def test_the_installed_llama_cpp_python_has_what_the_hook_needs():
    import importlib.util

    lib = Path(importlib.util.find_spec("llama_cpp").origin).parent / "lib"
    names = {p.name for p in llama_libraries(lib)}
    for needed in ("libllama.so", "libggml.so", "libmtmd.so", "libllama.so.0", "libggml.so.0", "libggml-base.so.0",
                   "libggml-cpu.so.0"):
        assert needed in names, f"{needed} missing from {lib}: {sorted(names)}"
    assert llama_libraries(lib / "missing") == []


def test_qt_trimming_keeps_what_the_tray_app_loads():
    kept = ["PySide6/Qt/lib/libQt6Core.so.6", "PySide6/Qt/lib/libQt6Gui.so.6", "PySide6/Qt/lib/libQt6Widgets.so.6",
            "PySide6/Qt/lib/libQt6XcbQpa.so.6", "PySide6/Qt/lib/libQt6DBus.so.6", "PySide6/Qt/lib/libQt6Svg.so.6",
            "PySide6/Qt/lib/libQt6Network.so.6", "PySide6/Qt/plugins/platforms/libqxcb.so",
            "PySide6/Qt/plugins/platforms/libqoffscreen.so", "PySide6/Qt/plugins/imageformats/libqsvg.so",
            "PySide6/QtWidgets.abi3.so", "llama_cpp/lib/libllama.so", "bin/nats-server"]
    dropped = ["PySide6/Qt/translations/qtbase_de.qm", "PySide6/Qt/lib/libQt6Quick.so.6", "PySide6/Qt/lib/libQt6Qml.so.6",
               "PySide6/Qt/lib/libQt6Pdf.so.6", "PySide6/Qt/plugins/platforminputcontexts/libqtvirtualkeyboardplugin.so",
               "PySide6/QtQml.abi3.so", "PySide6\\Qt\\translations\\qt_fr.qm"]
    for name in kept:
        assert not is_unused(name), name
    for name in dropped:
        assert is_unused(name), name
    binaries = [(n, "/src/" + n, "BINARY") for n in kept + dropped]
    b, d = drop_unused(binaries, [("PySide6/Qt/translations/x.qm", "/x", "DATA"), ("runtime/static/chat.js", "/y", "DATA")])
    assert [e[0] for e in b] == kept and [e[0] for e in d] == ["runtime/static/chat.js"]


def test_program_names():
    assert program_name("/opt/closedmesh/closedmesh-app") == "closedmesh-app"
    assert program_name(r"C:\Users\a\AppData\Local\Programs\ClosedMesh\ClosedMesh-App.exe") == "closedmesh-app"
    assert program_name("/opt/closedmesh/closedmesh") == "closedmesh"


def test_icon_files_hold_every_size_each_os_needs():
    ico = read_ico((GENERATED / "closedmesh.ico").read_bytes())
    assert sorted(ico) == list(ICO_SIZES)
    assert all(png_size(png) == (s, s) for s, png in ico.items())
    icns = read_icns((GENERATED / "closedmesh.icns").read_bytes())
    assert [k for k, _ in ICNS_TYPES] == list(icns)
    assert all(png_size(icns[k]) == (s, s) for k, s in ICNS_TYPES)
    for size in (16, 32, 48, 64, 128, 256, 512):  # the .deb's hicolor sizes
        assert png_size((GENERATED / f"closedmesh-{size}.png").read_bytes()) == (size, size)


def test_icon_writers_round_trip_and_refuse_wrong_sizes():
    pngs = {s: (GENERATED / f"closedmesh-{s}.png").read_bytes() for s in (16, 24, 32, 48, 64, 128, 256, 512, 1024)}
    assert read_ico(ico_bytes(pngs)) == {s: pngs[s] for s in ICO_SIZES}
    assert read_icns(icns_bytes(pngs))[b"ic10"] == pngs[1024]
    with pytest.raises(ValueError):
        ico_bytes({**pngs, 32: pngs[16]})
    with pytest.raises(ValueError):
        png_size(b"GIF89a" + bytes(30))
    assert struct.unpack("<HHH", ico_bytes(pngs)[:6]) == (0, 1, len(ICO_SIZES))


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    monkeypatch.setattr(sys, "_MEIPASS", str(root), raising=False)

    def no_pip(*a, **k):
        raise AssertionError("the bundle's model must be used, not a download")

    monkeypatch.setattr(embedded.subprocess, "run", no_pip)
    return root


def test_a_bundle_uses_its_own_model_offline(bundle, model_path, tmp_path):
    shutil.copyfile(model_path, bundle / "models" / embedded.FILENAME)
    got = embedded.ensure_default_model(tmp_path / "home" / "models")
    assert got == tmp_path / "home" / "models" / embedded.FILENAME
    assert embedded.sha256_file(got) == embedded.SHA256
    assert embedded.ensure_default_model(tmp_path / "home" / "models") == got  # verified: no second copy


def test_a_damaged_bundle_model_is_refused_and_not_kept(bundle, tmp_path):
    (bundle / "models" / embedded.FILENAME).write_bytes(b"GGUF" + bytes(1000))
    models = tmp_path / "home" / "models"
    with pytest.raises(embedded.ModelFetchError, match="damaged.*reinstall ClosedMesh"):
        embedded.ensure_default_model(models)
    assert list(models.iterdir()) == []


def test_system_xcb_libraries_and_top_level_llama_links_are_dropped():
    binaries = [("libxcb-cursor.so.0", "/usr/lib/libxcb-cursor.so.0", "BINARY"),
                ("libllama.so.0", "/v/llama_cpp/lib/libllama.so.0", "BINARY"),
                ("libggml-base.so.0", "/v/llama_cpp/lib/libggml-base.so.0", "BINARY"),
                ("llama_cpp/lib/libggml-base.so.0", "/v/llama_cpp/lib/libggml-base.so.0", "BINARY"),
                ("PySide6/Qt/plugins/platforms/libqwayland.so", "/q/libqwayland.so", "BINARY"),
                ("PySide6/Qt/plugins/platforms/libqxcb.so", "/q/libqxcb.so", "BINARY"),
                ("PySide6/Qt/plugins/platformthemes/libqgtk3.so", "/q/libqgtk3.so", "BINARY"),
                ("libQt6WaylandClient.so.6", "/q/lib/libQt6WaylandClient.so.6", "BINARY"),
                ("PySide6/Qt/plugins/platformthemes/libqxdgdesktopportal.so", "/q/portal.so", "BINARY")]
    kept, _ = drop_unused(binaries, [], ["libxcb-cursor.so.0"])
    assert [e[0] for e in kept] == ["llama_cpp/lib/libggml-base.so.0", "PySide6/Qt/plugins/platforms/libqxcb.so",
                                    "PySide6/Qt/plugins/platformthemes/libqxdgdesktopportal.so"]


def test_top_level_libraries_no_kept_file_needs_are_pruned():
    from installers.pyinstaller.bundle_filter import is_top_level_library, prune_unreferenced

    graph = {"/s/QtGui.abi3.so": ["libQt6Gui.so.6"], "/s/libQt6Gui.so.6": ["libpng16.so.16", "libc.so.6"],
             "/s/libpng16.so.16": ["libz.so.1"], "/s/libgtk-3.so.0": ["libcairo.so.2"],
             "/s/_ssl.cpython-311-x86_64-linux-gnu.so": ["libssl.so.3"], "/s/libssl.so.3": ["libcrypto.so.3"]}
    entries = [(name, f"/s/{name.rsplit('/', 1)[-1]}", "BINARY") for name in (
        "PySide6/QtGui.abi3.so", "libQt6Gui.so.6", "libpng16.so.16", "libz.so.1", "libgtk-3.so.0", "libcairo.so.2",
        "python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", "libssl.so.3", "libcrypto.so.3",
        "libpython3.11.so.1.0", "_cffi_backend.cpython-311-x86_64-linux-gnu.so")]
    kept = [e[0] for e in prune_unreferenced(entries, lambda src: graph.get(src, []))]
    assert "libgtk-3.so.0" not in kept and "libcairo.so.2" not in kept  # only a dropped plugin needed them
    for name in ("libQt6Gui.so.6", "libpng16.so.16", "libz.so.1", "libssl.so.3", "libcrypto.so.3",
                 "libpython3.11.so.1.0", "_cffi_backend.cpython-311-x86_64-linux-gnu.so"):
        assert name in kept, name
    assert is_top_level_library("libpyside6.abi3.so.6.12") and not is_top_level_library("PySide6/libx.so")


def test_child_processes_get_the_users_library_path_back():
    from installers.pyinstaller.closedmesh_entry import restore_library_path

    env = {"_PYI_ARCHIVE_FILE": "/opt/closedmesh/closedmesh", "LD_LIBRARY_PATH": "/opt/closedmesh/_internal",
           "LD_LIBRARY_PATH_ORIG": "/home/u/lib"}
    restore_library_path(env)
    assert env["LD_LIBRARY_PATH"] == "/home/u/lib" and "LD_LIBRARY_PATH_ORIG" not in env
    env = {"_PYI_ARCHIVE_FILE": "/opt/closedmesh/closedmesh", "LD_LIBRARY_PATH": "/opt/closedmesh/_internal"}
    restore_library_path(env)
    assert "LD_LIBRARY_PATH" not in env
    env = {"LD_LIBRARY_PATH": "/source/install/lib"}  # not frozen: left alone
    restore_library_path(env)
    assert env == {"LD_LIBRARY_PATH": "/source/install/lib"}
