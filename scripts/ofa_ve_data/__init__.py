"""The shared test data: real photographs and sentences every test, benchmark and check sends.

Tests and measurement tools both import it; serving code never does.
"""
