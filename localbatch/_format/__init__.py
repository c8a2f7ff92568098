"""The value format: how row values are stored, shared by the store, engines and workers.

- ``columns``: a list of values as a typed column (``Column``), by kind;
- ``frames``: DataFrame values as one long table; ``buffers``: the mask and string
  layouts both share;
- ``part``: the ``.lbp`` file, columns read back without unpickling;
- ``chunk``: the result of scoring a chunk of rows (``ChunkResult``).
"""
