"""What the frozen app writes into its start-at-login entry: its own executable, and in an AppImage the
AppImage file (the bundle inside runs from a temporary mount point that is gone after a reboot)."""

from __future__ import annotations

import sys

from app.controller import app_command


def test_frozen_app_starts_itself_minimized(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/opt/closedmesh/closedmesh-app")
    monkeypatch.delenv("APPIMAGE", raising=False)
    assert app_command() == ["/opt/closedmesh/closedmesh-app", "--minimized"]


def test_appimage_writes_the_appimage_path(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/tmp/.mount_ClosedAbc123/usr/lib/closedmesh/closedmesh-app")
    monkeypatch.setenv("APPIMAGE", "/home/u/Applications/ClosedMesh-Linux-x86_64.AppImage")
    assert app_command() == ["/home/u/Applications/ClosedMesh-Linux-x86_64.AppImage", "--minimized"]
