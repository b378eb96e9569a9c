"""What build.spec leaves out of the bundle that PyInstaller's hooks would put in (pure, tested):
Qt's translations of its own dialogs (the app's text is English) and the Qt modules and plugins the tray
app never loads but that plugins drag in (QML/Quick through the virtual keyboard, PDF, …).

Entries are PyInstaller TOC tuples: (name in the bundle, source path, type)."""

from __future__ import annotations

import re

Entry = tuple[str, str, str]

_UNUSED = [re.compile(p) for p in (
    r"^PySide6/Qt/translations/",
    r"^PySide6/Qt/lib/libQt6(Qml|Quick|Pdf|VirtualKeyboard|Multimedia|ShaderTools|Designer|Test|Sql|Bluetooth|Nfc|"
    r"Positioning|Sensors|SerialPort|WebSockets|WebChannel|Charts|DataVisualization|3D|Location|RemoteObjects|"
    r"Scxml|StateMachine|TextToSpeech|SpatialAudio|HttpServer)\w*\.so",
    r"^PySide6/Qt/plugins/(platforminputcontexts|qmltooling|sqldrivers|multimedia|position|sensors|texttospeech|"
    r"renderers|scenegraph|designer|networkinformation|tls/libqopensslbackend)",
    r"^PySide6/(Qt(Qml|Quick|Pdf|Multimedia|Sql|Test|Designer|Bluetooth|Charts|3D)\w*)\.(abi3\.so|pyd|pyi)$",
    r"^PySide6/(lupdate|lrelease|designer|assistant|linguist|qmlformat|qmllint|qmlls|rcc|uic|balsam|svgtoqml)",
    r"^PySide6/typesystems/",
    r"^PySide6/include/",
)]


def is_unused(name: str) -> bool:
    name = name.replace("\\", "/")
    return any(p.search(name) for p in _UNUSED)


def drop_unused(binaries: list[Entry], datas: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """The analysis' binaries and datas without the unused Qt parts."""
    return [e for e in binaries if not is_unused(e[0])], [e for e in datas if not is_unused(e[0])]
