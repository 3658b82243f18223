"""Headless front end: argument parsing, rendering, exit codes. Imports the core, never the reverse."""
