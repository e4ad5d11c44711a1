"""The reference: ModelScope's own code, run offline (parity tests and benchmarks).

Nothing here is imported by the engine or the server; tests compare our engine
against what this package produces.
"""
