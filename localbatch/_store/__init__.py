"""The store folder: everything localbatch keeps on disk, readable from any process.

- ``executions``: one folder per execution, its header and parts, the owner lock;
  ``states``: execution states and the header's keys (standard library only);
- ``commit``: the single writer and the commit protocol; ``results``: reading rows;
  ``spool``: the inputs, written before anything runs;
- ``registry``: published services on disk; ``revision``: a service spec becomes a
  manifest and blobs (the one module here that pickles);
- ``fsutil``: atomic writes and safe names; ``faults``: test hooks at commit steps.
"""
