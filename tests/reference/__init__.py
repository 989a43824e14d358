"""Independent references for the tests, written from descriptions, never from the package.

- ``released``: the authors' released scoring (Steps 2-3 and the metrics), loop by loop.
- ``released_steps``: the released Step 2 on whole arrays, for checks that need its intermediate values.
- ``paper``: the paper protocol, from the paper's text.
- ``hyperparameters``: the released loops with the paper's hyper-parameters as arguments.
"""
