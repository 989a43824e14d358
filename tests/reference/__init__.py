"""References for the tests: transcriptions written from descriptions, not from the package.

- ``released``: the authors' released scoring (Steps 2-3 and the metrics), loop by loop.
- ``released_steps``: the released Step 2 composed from the package's own pieces (the one module here
  that is not independent), for the hand-computed tests.
- ``paper``: the paper protocol, from the paper's text.
- ``hyperparameters``: the released loops with the paper's hyper-parameters as arguments.
"""
