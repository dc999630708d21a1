"""Capture mechanisms behind one interface: each source yields batches of changes in commit order."""
