"""The reference side of the test suite: ModelScope's own code, run offline.

Nothing here is imported by the engine or the server; tests compare our engine
against what this package produces.
"""
