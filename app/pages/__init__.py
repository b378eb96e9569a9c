"""The main window's tabs. Each page renders the store's NodeState, acts on the node through NodeActions
and asks the window for the rest with its own signals; none knows the controller."""
