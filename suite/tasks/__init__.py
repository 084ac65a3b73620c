"""The suite's tasks: one module per task, found by `suite.registry` scanning this package."""
