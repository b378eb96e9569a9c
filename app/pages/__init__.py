"""The main window's tabs. Each page renders the controller's NodeState and acts through the controller."""
