"""One module per ``method.type``: each builds a ready TRL trainer from a RunContext."""
