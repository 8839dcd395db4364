"""The comparison layer: runs in, DataFrames out.

Between `lorascope.analysis` (pure arrays in, arrays out) and the CLI and figure recipes:
each function here takes loaded runs (or run folders), picks the modules and matrices, calls
the analysis, and returns tidy DataFrames that the CLI prints and writes.
"""
