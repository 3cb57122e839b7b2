"""Helpers shared by every test package: real processes, free ports, polling (never sleeping) for readiness."""
