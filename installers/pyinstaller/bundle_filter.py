"""What build.spec leaves out of the bundle that PyInstaller's analysis would put in (pure, tested).

- Qt parts the tray app never loads: translations of Qt's own dialogs (the app's text is English), the
  QML/Quick/PDF/multimedia modules, and every platform plugin but xcb (X11, and XWayland on Wayland
  desktops), offscreen and minimal. The GTK theme plugin goes too: it alone drags in GTK, cairo and pango.
- The system libraries Qt's xcb plugin needs (app/launch.py XCB_LIBRARIES): they come from the system,
  matching its X server and libxcb (the .deb depends on them; the run command checks for them).
- llama.cpp's libraries at the bundle's top level: PyInstaller puts links to llama_cpp/lib there, and the
  bootloader puts the top level on LD_LIBRARY_PATH, which the dynamic linker searches before a library's
  own RUNPATH: a CPU variant's libllama would then load the default build's ggml. Each build must load
  the ggml next to it.
- Then every top-level shared library that no kept file needs any more (prune_unreferenced).

Entries are PyInstaller TOC tuples: (name in the bundle, source path, type)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable

Entry = tuple[str, str, str]

_UNUSED = [re.compile(p) for p in (
    r"^PySide6/Qt/translations/",
    r"^(PySide6/Qt/lib/)?libQt6(Qml|Quick|Pdf|VirtualKeyboard|Multimedia|ShaderTools|Designer|Test|Sql|Bluetooth|Nfc|"
    r"Positioning|Sensors|SerialPort|WebSockets|WebChannel|Charts|DataVisualization|3D|Location|RemoteObjects|"
    r"Scxml|StateMachine|TextToSpeech|SpatialAudio|HttpServer|Wayland|WlShell|EglFS|EglFs)\w*\.so",
    r"^PySide6/Qt/plugins/(platforminputcontexts|qmltooling|sqldrivers|multimedia|position|sensors|texttospeech|"
    r"renderers|scenegraph|designer|networkinformation|tls|egldeviceintegrations|wayland-[\w-]+|generic|"
    r"printsupport)/",
    r"^PySide6/Qt/plugins/platforms/libq(eglfs|linuxfb|minimalegl|vkkhrdisplay|vnc|wayland[\w-]*)\.so$",
    r"^PySide6/Qt/plugins/platformthemes/libqgtk3\.so$",
    r"^PySide6/(Qt(Qml|Quick|Pdf|Multimedia|Sql|Test|Designer|Bluetooth|Charts|3D)\w*)\.(abi3\.so|pyd|pyi)$",
    r"^PySide6/(lupdate|lrelease|designer|assistant|linguist|qmlformat|qmllint|qmlls|rcc|uic|balsam|svgtoqml)",
    r"^PySide6/typesystems/",
    r"^PySide6/include/",
    r"^lib(llama|ggml|mtmd)[\w.-]*\.(so|dylib)[\d.]*$",  # top level only (no folder)
)]


def is_unused(name: str) -> bool:
    name = name.replace("\\", "/")
    return any(p.search(name) for p in _UNUSED)


def drop_unused(binaries: list[Entry], datas: list[Entry],
                system_libraries: Iterable[str] = ()) -> tuple[list[Entry], list[Entry]]:
    """The analysis' binaries and datas without the unused parts and without the top-level copies of
    ``system_libraries`` (sonames the system provides)."""
    system = set(system_libraries)
    return ([e for e in binaries if not is_unused(e[0]) and e[0] not in system],
            [e for e in datas if not is_unused(e[0])])


_TOP_LEVEL_LIBRARY = re.compile(r"^lib[^/\\]+\.so(\.[\d.]+)?$|^[^/\\]+\.so\.\d[\d.]*$")


def is_top_level_library(name: str) -> bool:
    """A shared library at the top of the bundle, found through LD_LIBRARY_PATH (not a Python module)."""
    return bool(_TOP_LEVEL_LIBRARY.match(name)) and ".cpython-" not in name and not name.startswith("libpython")


def prune_unreferenced(binaries: list[Entry], needed: Callable[[str], list[str]]) -> list[Entry]:
    """Drop the top-level shared libraries that no kept binary needs, directly or through another one
    (``needed`` gives a file's ELF NEEDED sonames). Everything else is a root: Python extension modules,
    libpython, and libraries in package folders (loaded by path, e.g. llama.cpp by ctypes)."""
    top = {e[0]: e for e in binaries if is_top_level_library(e[0])}
    keep: set[str] = set()
    todo = [e[1] for e in binaries if e[0] not in top]
    while todo:
        for soname in needed(todo.pop()):
            if soname in top and soname not in keep:
                keep.add(soname)
                todo.append(top[soname][1])
    return [e for e in binaries if e[0] not in top or e[0] in keep]


_needed_cache: dict[str, list[str]] = {}


def elf_needed(path: str) -> list[str]:
    """The NEEDED sonames of an ELF file (readelf); none for anything else."""
    if path not in _needed_cache:
        out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
        _needed_cache[path] = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)
    return _needed_cache[path]
