"""The store folder: executions, the commit protocol, results, the spool, the registry."""
