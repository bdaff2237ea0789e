"""The built-in rules: one file per algorithm, each the single place its maths is written."""
