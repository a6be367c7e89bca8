"""The submission layer: run checks, batched inference of every requested run, and the pipeline from test
videos to the challenge file (``make_submission``)."""
