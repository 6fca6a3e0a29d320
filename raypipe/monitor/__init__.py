"""Monitoring: a window of rows checked against the version that answered it (drift, performance, report)."""
