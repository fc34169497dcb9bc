"""Hand-written data shipped with the package (starter phrases, blocklists)."""
