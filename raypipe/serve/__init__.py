"""Ray Serve endpoints built from registry versions."""
