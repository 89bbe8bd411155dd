"""The study engine: config schemas, search space, ask/tell driver, executors."""
