"""ClosedMesh desktop app (PySide6 tray). A client of the runtime: it never reaches into its internals."""
