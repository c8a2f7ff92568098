"""Engines: where an execution's rows run, and the operations on executions."""
