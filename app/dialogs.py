"""The "port in use" dialog: says who holds the port (in the node's own words) and offers another one."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from . import icons


class PortDialog(QDialog):
    def __init__(self, message: str, suggested: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("ClosedMesh — port in use")
        self.setWindowIcon(icons.app_icon())
        lay = QVBoxLayout(self)
        # the runtime's message ends with advice for the command line: keep only what happened
        what = message.split(". Stop it")[0].rstrip(".")
        what = what[:1].upper() + what[1:]
        text = QLabel(
            f"<b>ClosedMesh cannot start on its port.</b><br><br>{what}.<br><br>"
            "Stop that program, or start ClosedMesh on another port. Apps that use ClosedMesh then need "
            "the new address."
        )
        text.setWordWrap(True)
        text.setMinimumWidth(440)
        lay.addWidget(text)
        form = QFormLayout()
        self.port = QSpinBox()
        self.port.setRange(1024, 65535)
        self.port.setValue(suggested if suggested else 9338)
        form.addRow("Port:", self.port)
        lay.addLayout(form)
        self.remember = QCheckBox("Use this port from now on")
        self.remember.setChecked(True)
        lay.addWidget(self.remember)
        buttons = QDialogButtonBox()
        self.start = buttons.addButton("Start on this port", QDialogButtonBox.ButtonRole.AcceptRole)
        self.quit = buttons.addButton("Quit", QDialogButtonBox.ButtonRole.RejectRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)
